"""``rank``: a judge orders the candidates; the best ``top_k`` go on (LLM-Blender's ranker, with an LLM judge).

Pairwise, every ordered pair is asked (both orders: a judge that always picks
the first shown cancels itself out); a candidate's score is the sum over its
matches of P(it wins) - P(it loses).  A knockout plays one bracket, both
orders per match, and keeps the champion on a tie.  Pointwise, the score is
P(yes) that the candidate is right.  An unreadable or failed verdict counts
as 0.5: no information.  Ties keep the candidates' order.
"""

from __future__ import annotations

from moa._prompt import Message
from moa.recipe import RankLayer
from moa.result import AgentOutput, Candidate

from . import verdicts
from .base import Estimate, EstimateContext, Outcome, Stage, StageContext, bind, quoted

POINTWISE = "You judge whether a response answers a question correctly. Reply with one word: yes or no."
PAIRWISE = "You compare two responses to a question. Reply with one letter: A if Response A is better, B otherwise."


def pointwise_messages(instruction: str | None, question: str, response: str) -> list[Message]:
    return [
        {"role": "system", "content": instruction or POINTWISE},
        {
            "role": "user",
            "content": f"Question:\n{question}\n\nResponse:\n{response}\n\nIs the response correct? Answer yes or no.",
        },
    ]


def pairwise_messages(instruction: str | None, question: str, a: str, b: str) -> list[Message]:
    return [
        {"role": "system", "content": instruction or PAIRWISE},
        {
            "role": "user",
            "content": f"Question:\n{question}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\n"
            "Which response answers the question better? Answer A or B.",
        },
    ]


class Rank(Stage):
    async def run(self, ctx: StageContext, inputs: list[Candidate]) -> Outcome:
        layer = ctx.layer
        assert isinstance(layer, RankLayer)
        if len(inputs) <= 1:
            kept = [c.model_copy(update={"score": 0.0}) for c in inputs]
            return Outcome(kept, kept)
        if layer.mode == "pointwise":
            scores = await self._pointwise(ctx, layer, inputs)
        elif layer.pairs == "knockout":
            scores = await self._knockout(ctx, layer, inputs)
        else:
            scores = await self._pairwise(ctx, layer, inputs)
        scored = [c.model_copy(update={"score": s}) for c, s in zip(inputs, scores, strict=True)]
        ordered = sorted(scored, key=lambda c: -(c.score or 0.0))  # stable: ties keep their order
        return Outcome(ordered[: layer.top_k], scored)

    async def _judge(
        self, ctx: StageContext, layer: RankLayer, prompts: list[tuple[list[Message], list[Candidate]]]
    ) -> list[AgentOutput]:
        spec, settings = ctx.specs[0], verdicts.params(layer.logprobs)
        steps = len(ctx.recorded)
        calls = [
            (spec, bind(ctx.call, spec, messages, step=steps + i + 1, params=settings, embedded=quoted(shown)))
            for i, (messages, shown) in enumerate(prompts)
        ]
        return await ctx.fanout(calls, quorum=False)  # a failed verdict is no information, not a failed stage

    async def _pointwise(self, ctx: StageContext, layer: RankLayer, inputs: list[Candidate]) -> list[float]:
        prompts = [(pointwise_messages(layer.instruction, ctx.question, c.text), [c]) for c in inputs]
        outputs = await self._judge(ctx, layer, prompts)
        return [_or_half(verdicts.probability(o, "yes", "no")) for o in outputs]

    async def _pairwise(self, ctx: StageContext, layer: RankLayer, inputs: list[Candidate]) -> list[float]:
        pairs = [(i, j) for i in range(len(inputs)) for j in range(len(inputs)) if i != j]
        prompts = [
            (pairwise_messages(layer.instruction, ctx.question, inputs[i].text, inputs[j].text), [inputs[i], inputs[j]])
            for i, j in pairs
        ]
        scores = [0.0] * len(inputs)
        for (i, j), output in zip(pairs, await self._judge(ctx, layer, prompts), strict=True):
            p = _or_half(verdicts.probability(output, "a", "b"))  # P(i, shown as A, beats j)
            scores[i] += p - (1 - p)
            scores[j] += (1 - p) - p
        return scores

    async def _knockout(self, ctx: StageContext, layer: RankLayer, inputs: list[Candidate]) -> list[float]:
        scores = [0.0] * len(inputs)
        champion = 0
        for challenger in range(1, len(inputs)):
            a, b = inputs[champion], inputs[challenger]
            first, second = await self._judge(
                ctx,
                layer,
                [
                    (pairwise_messages(layer.instruction, ctx.question, a.text, b.text), [a, b]),
                    (pairwise_messages(layer.instruction, ctx.question, b.text, a.text), [b, a]),
                ],
            )
            p1 = _or_half(verdicts.probability(first, "a", "b"))  # champion shown first
            p2 = _or_half(verdicts.probability(second, "a", "b"))  # challenger shown first
            held, taken = p1 + (1 - p2), (1 - p1) + p2
            scores[champion] += held - taken
            scores[challenger] += taken - held
            if taken > held:
                champion = challenger
        scores[champion] = max(scores) + 1.0  # the bracket's winner ranks first, whatever the tally
        return scores

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        layer = ctx.layer
        assert isinstance(layer, RankLayer)
        settings = verdicts.params(layer.logprobs)
        if layer.mode == "pointwise":
            prompt, quoted_inputs = pointwise_messages(layer.instruction, ctx.question, ""), 1
        else:
            prompt, quoted_inputs = pairwise_messages(layer.instruction, ctx.question, "", ""), 2
        longest = max((tokens for _, tokens in inputs), default=0)
        calls = layer.calls(len(inputs))
        if calls:
            ctx.price(ctx.specs[0], prompt, [(0, longest)] * quoted_inputs, settings, times=calls)
        return ctx.result(sorted(inputs, key=lambda item: -item[1])[: layer.top_k])

    def summary(self, outcome: Outcome, layer: int) -> str | None:
        if not outcome.considered:
            return None
        order = sorted(range(len(outcome.considered)), key=lambda i: -(outcome.considered[i].score or 0.0))
        shown = ", ".join(f"#{i + 1} ({outcome.considered[i].score or 0.0:+.2f})" for i in order)
        return f"rank: {shown}; the best {len(outcome.candidates)} go on"


def _or_half(value: float | None) -> float:
    return 0.5 if value is None else value
