"""``cascade``: ask a cheap tier first, score its answer, and escalate only when the score is low.

``threshold`` (FrugalGPT) runs the tiers in order and stops at the first whose
answer scores at least its ``accept``; the last tier's answer stands.
``cost_aware`` (cascade routing) runs, at each step, the tier not yet run with the
largest gain max(0, quality - best score so far) - ``cost_weight`` x cost, while
that gain is positive (the first step runs one whatever its gain: an answer is
needed); the answer with the highest score goes on, ties to the later tier.
``always_escalate`` runs and scores every tier; the last one's answer goes on.

Every choice is a ``moa.Decision`` in the layer's trace, with its score.  A tier
whose call (or recipe) fails is passed over; when the last tier fails, or every
tier a cost-aware cascade ran did, the stage fails with ``moa.CascadeError``.
"""

from __future__ import annotations

import math

from moa._errors import CascadeError
from moa._prompt import build_messages
from moa.recipe import (
    AgreeCheck,
    CascadeLayer,
    ChecksScore,
    JsonSchemaCheck,
    JudgeScore,
    LLMCheck,
    PythonCheck,
    RegexCheck,
    Tier,
)
from moa.result import AgentOutput, Candidate, Decision, Verdict

from . import checks, verdicts
from .answering import Answering
from .base import Estimate, EstimateContext, Outcome, Stage, StageContext, bind, quoted
from .rank import pointwise_messages

#: What a tier's call asks for when its answer is scored by its own confidence (llama.cpp's server gives no
#: logprobs without ``top_logprobs``).
CONFIDENCE: dict[str, object] = {"logprobs": True, "top_logprobs": 1, "drop_params": True}


class Cascade(Stage):
    async def run(self, ctx: StageContext, inputs: list[Candidate]) -> Outcome:
        layer = ctx.layer
        assert isinstance(layer, CascadeLayer)
        run = _Run(ctx, layer)
        if layer.strategy == "cost_aware":
            return await run.cost_aware()
        return await run.in_order(stop=layer.strategy == "threshold")

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        """Every tier answers at its longest, and every answer is scored by every judge of the score."""
        layer = ctx.layer
        assert isinstance(layer, CascadeLayer)
        longest = 0
        agents = iter(ctx.specs)
        for tier in layer.tiers:
            if tier.agent is not None:
                spec = next(agents)
                extra = CONFIDENCE if layer.score.type == "confidence" else None
                messages = build_messages(ctx.conversation, system=tier.agent.system)
                longest = max(longest, ctx.price(spec, messages, (), extra))
            else:
                longest = max(longest, ctx.price_recipe(tier._loaded))
        judges = list(agents)
        for spec, prompt in zip(judges, _judge_prompts(layer, ctx.question), strict=True):
            ctx.price(spec, prompt, [(0, longest)], verdicts.params(True), times=len(layer.tiers))
        return ctx.result([(0, longest)])

    def summary(self, outcome: Outcome, layer: int) -> str | None:
        if not outcome.decisions:
            return None
        steps = []
        for decision in outcome.decisions:
            score = "" if decision.score is None else f" {decision.score:.2f}"
            if decision.action in ("escalate", "accept", "failed"):
                steps.append(f"{decision.option}{score} {decision.action}")
        return "cascade: " + " -> ".join(steps)


class _Run:
    """One run of a cascade: the tiers asked so far, their scored answers, and the decisions."""

    def __init__(self, ctx: StageContext, layer: CascadeLayer) -> None:
        self.ctx = ctx
        self.layer = layer
        self.names = layer.names
        self.answers: dict[int, Candidate] = {}  # tier index -> its scored answer
        self.considered: list[Candidate] = []
        self.decisions: list[Decision] = []
        self.spent: dict[int, tuple[float | None, int]] = {}  # tier index -> (USD, tokens) its answer took
        self.failures: list[str] = []
        specs = iter(ctx.specs)
        self.answering = Answering(ctx, {i: next(specs) for i, tier in enumerate(layer.tiers) if tier.agent})
        self.judges = list(specs)
        self.here = ctx.index + 1

    def decide(self, index: int, action: str, reason: str, **fields: float | None) -> Decision:
        """Record a choice about tier ``index``; what the tier's answer cost goes with it once it ran."""
        cost, tokens = self.spent.get(index, (None, None))
        decision = Decision(option=self.names[index], index=index, action=action, reason=reason, cost_usd=cost,
                            tokens=tokens, **fields)  # fmt: skip
        self.decisions.append(decision)
        return decision

    def fail(self, problem: str) -> CascadeError:
        return CascadeError(self.here, problem + "".join(f"\n  {why}" for why in self.failures), self.decisions)

    async def in_order(self, stop: bool = True) -> Outcome:
        """Tier after tier; with ``stop``, at the first answer that clears its tier's bar."""
        last = len(self.layer.tiers) - 1
        for index, tier in enumerate(self.layer.tiers):
            answer = await self.ask(index, tier)
            if answer is None:
                if index == last:
                    raise self.fail(f"the last tier, {self.names[index]}, gave no answer")
                continue
            if index == last:
                self.decide(index, "accept", "the last tier's answer stands", score=answer.score)
                return self.outcome(answer)
            if not stop:
                self.decide(index, "escalate", "always escalate", score=answer.score)
                continue
            bar = tier.accept
            assert bar is not None
            if bar == "never":
                self.decide(index, "escalate", "this tier never stops the cascade", score=answer.score)
                continue
            if answer.score is not None and answer.score >= bar:
                reason = f"score {answer.score:.6g} >= {bar:.6g}"
                self.decide(index, "accept", reason, score=answer.score, threshold=bar)
                return self.outcome(answer)
            reason = "no score" if answer.score is None else f"score {answer.score:.6g} < {bar:.6g}"
            self.decide(index, "escalate", reason, score=answer.score, threshold=bar)
        raise AssertionError("unreachable: the last tier accepts or fails")

    async def cost_aware(self) -> Outcome:
        weight = self.layer.cost_weight or 0.0
        tried: set[int] = set()
        while len(tried) < len(self.layer.tiers):
            best = max((a.score or 0.0 for a in self.answers.values()), default=0.0)
            gains = {
                i: max(0.0, (t.quality or 0.0) - best) - weight * (t.cost or 0.0)
                for i, t in enumerate(self.layer.tiers)
                if i not in tried
            }
            index = max(gains, key=lambda i: (gains[i], -i))  # ties: the cheaper (earlier) tier
            if self.answers and gains[index] <= 0:
                break
            why = (
                f"gain {gains[index]:+.3g} = max(0, quality {self.layer.tiers[index].quality:g} - best {best:.3g}) - "
                f"{weight:g} x cost {self.layer.tiers[index].cost:g}"
            )
            if not self.answers and gains[index] <= 0:
                why += "; no answer yet, so the best of the tiers left runs"
            decision = self.decide(index, "run", why, gain=gains[index])
            tried.add(index)
            await self.ask(index, self.layer.tiers[index])
            decision.cost_usd, decision.tokens = self.spent.get(index, (None, None))
        if not self.answers:
            raise self.fail(f"none of the {len(tried)} tiers it ran gave an answer")
        index = max(self.answers, key=lambda i: (self.answers[i].score or 0.0, i))  # ties: the later tier
        chosen = self.answers[index]
        self.decide(index, "accept", "the highest score of the tiers run", score=chosen.score)
        return self.outcome(chosen)

    def outcome(self, answer: Candidate) -> Outcome:
        return Outcome([answer], list(self.considered), list(self.decisions))

    async def ask(self, index: int, tier: Tier) -> Candidate | None:
        """The tier's scored answer (None, with a `failed` decision, when it gave none)."""
        extra = CONFIDENCE if self.layer.score.type == "confidence" else None
        answer = await self.answering.ask(index, tier, self.names[index], extra)
        self.spent[index] = (answer.cost_usd, answer.tokens)
        if answer.candidate is None:
            self.failures.append(f"{self.names[index]}: {answer.failure}")
            self.decide(index, "failed", answer.failure or "")
            return None
        candidate = answer.candidate
        if self.layer.score.type == "confidence" and answer.output is not None:
            candidate.score = _confidence(answer.output)
        scored = await self.score(candidate)
        self.answers[index] = scored
        self.considered.append(scored)
        return scored

    async def score(self, answer: Candidate) -> Candidate:
        """The answer with its score (0 to 1; None when none could be had) and any verdicts."""
        score = self.layer.score
        if isinstance(score, JudgeScore):
            (output,) = await self._judge([pointwise_messages(score.instruction, self.ctx.question, answer.text)],
                                          answer, score.logprobs)  # fmt: skip
            p_yes = verdicts.probability(output, "yes", "no")
            found = checks.verdict("judge", bool(p_yes is not None and p_yes >= 0.5),
                                   _judged(output, p_yes), self.here)  # fmt: skip
            return answer.model_copy(update={"score": p_yes, "verdicts": [*answer.verdicts, found]})
        if isinstance(score, ChecksScore):
            return await self._checks(score, answer)
        return answer  # confidence: read from the call itself

    async def _checks(self, score: ChecksScore, answer: Candidate) -> Candidate:
        judged = [c for c in score.checks if isinstance(c, LLMCheck)]
        prompts = [checks.llm_messages(c, self.ctx.question, answer.text) for c in judged]
        outputs = iter(await self._judge(prompts, answer, True)) if prompts else iter(())
        found: list[Verdict] = []
        agreement = answer.agreement
        for check in score.checks:
            if isinstance(check, LLMCheck):
                found.append(checks.llm(check, next(outputs), self.here))
            elif isinstance(check, RegexCheck):
                found.append(checks.regex(check, answer.text, self.here))
            elif isinstance(check, JsonSchemaCheck):
                found.append(checks.json_schema(check, answer.text, self.here))
            elif isinstance(check, PythonCheck):
                found.append(await checks.python(check, answer.text, self.ctx.question, self.here))
            elif isinstance(check, AgreeCheck):  # the answers of the tiers run before it
                agreed, agreement = checks.agree(check, answer, self.considered, self.ctx.question, self.here)
                found.append(agreed)
        passed = sum(v.passed for v in found) / len(found)
        update = {"score": passed, "verdicts": [*answer.verdicts, *found], "agreement": agreement}
        return answer.model_copy(update=update)

    async def _judge(self, prompts: list[list[dict[str, str]]], answer: Candidate, logprobs: bool) -> list[AgentOutput]:
        settings = verdicts.params(logprobs)
        steps = len(self.ctx.recorded)
        calls = [(spec, bind(self.ctx.call, spec, messages, step=steps + n + 1, params=settings,
                             embedded=quoted([answer])))
                 for n, (spec, messages) in enumerate(zip(self.judges, prompts, strict=True))]  # fmt: skip
        return await self.ctx.fanout(calls, quorum=False)  # a failed verdict is no score, not a failed stage


def _confidence(output: AgentOutput) -> float | None:
    return None if output.mean_logprob is None else math.exp(output.mean_logprob)


def _judged(output: AgentOutput, p_yes: float | None) -> str:
    if not output.ok:
        why = f"{output.error.type}: {output.error.message}" if output.error else "no answer"
        return f"{checks.UNAVAILABLE} ({why})"
    if p_yes is None:
        return f"the judge gave no verdict (it said {output.text!r})"
    return f"P(yes) = {p_yes:.3g}"


def _judge_prompts(layer: CascadeLayer, question: str) -> list[list[dict[str, str]]]:
    """The prompt each judge of the score is sent, with an empty answer (for estimates)."""
    score = layer.score
    if isinstance(score, JudgeScore):
        return [pointwise_messages(score.instruction, question, "")]
    if isinstance(score, ChecksScore):
        return [checks.llm_messages(c, question, "") for c in score.checks if isinstance(c, LLMCheck)]
    return []
