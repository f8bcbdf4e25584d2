"""``verify``: validators as closure conditions.  Keep what passes; repair, then escalate, when nothing does.

Every candidate goes through every check; the verdicts are in the trace.
When none passes, the first candidate goes back to its own model (or
``repair_with``), its answer followed by the failed checks' messages, up to
``repairs`` times; then each ``fallback`` agent answers afresh, in turn; the
first answer that passes goes on.  If none does, ``VerificationError`` stops
the run with its partial trace (or, with ``if_none_pass: last``, the last
answer checked goes on with its failed verdicts).
"""

from __future__ import annotations

from dataclasses import replace

from moa._call import CallSpec
from moa._errors import CallSite, VerificationError
from moa._prompt import Message, build_messages
from moa.recipe import JsonSchemaCheck, LLMCheck, PythonCheck, RegexCheck, VerifyLayer
from moa.result import AgentOutput, Candidate, Verdict

from . import checks, verdicts
from .base import Estimate, EstimateContext, Factory, Outcome, Stage, StageContext, bind, quoted

REPAIR = "Your answer did not pass these checks:\n{failures}\n\nGive a corrected answer to the original question."


class Verify(Stage):
    async def run(self, ctx: StageContext, inputs: list[Candidate]) -> Outcome:
        layer = ctx.layer
        assert isinstance(layer, VerifyLayer)
        considered, passed = await self._check(ctx, layer, inputs)
        passing = [c for c, ok in zip(considered, passed, strict=True) if ok]
        if passing:
            return Outcome(passing[:1] if layer.keep == "first" else passing, considered)
        failures = [_failures(c, len(layer.checks)) for c in considered]
        repairer = self._repairer(ctx, layer, considered[0]) if considered and layer.repairs else None
        target = considered[0] if considered else None
        for _ in range(layer.repairs if repairer is not None else 0):
            assert target is not None and repairer is not None
            answer = await self._answer(ctx, repairer, self._repair_messages(ctx, layer, target), [target])
            if not answer.ok:
                failures.append(f"- repair by {repairer.site.agent_name}: the call failed ({_error(answer)})")
                break
            checked, ok = await self._check(ctx, layer, [Candidate.of(answer)])
            considered += checked
            if ok[0]:
                return Outcome(checked, considered)
            target = checked[0]
            failures.append(_failures(target, len(layer.checks)))
        first_fallback = len(layer.judges()) + (1 if layer.repair_with else 0)
        for number, agent in enumerate(layer.fallback):
            spec = ctx.specs[first_fallback + number]
            answer = await self._answer(ctx, spec, build_messages(ctx.conversation, system=agent.system), [])
            if not answer.ok:
                failures.append(f"- fallback {spec.site.agent_name}: the call failed ({_error(answer)})")
                continue
            checked, ok = await self._check(ctx, layer, [Candidate.of(answer)])
            considered += checked
            if ok[0]:
                return Outcome(checked, considered)
            failures.append(_failures(checked[0], len(layer.checks)))
        if layer.if_none_pass == "last" and considered:
            return Outcome([considered[-1]], considered)
        raise VerificationError(ctx.index + 1, len(considered), failures)

    async def _answer(
        self, ctx: StageContext, spec: CallSpec, messages: list[Message], shown: list[Candidate]
    ) -> AgentOutput:
        """One repair or fallback call; a failed one is returned (the stage moves on), a refused one raises."""
        call = bind(ctx.call, spec, messages, step=_step(ctx), embedded=quoted(shown))
        (answer,) = await ctx.fanout([(spec, call)], quorum=False)
        return answer

    async def _check(
        self, ctx: StageContext, layer: VerifyLayer, inputs: list[Candidate]
    ) -> tuple[list[Candidate], list[bool]]:
        """Every candidate with this stage's verdicts added, and whether it passed them all (judges are asked
        together; a failed judge call is a failed check)."""
        judged: dict[tuple[int, int], Verdict] = {}
        judges = [(n, check) for n, check in enumerate(layer.checks) if isinstance(check, LLMCheck)]
        if judges:
            calls: list[tuple[CallSpec, Factory]] = []
            keys: list[tuple[int, int, LLMCheck]] = []
            for i, candidate in enumerate(inputs):
                for judge_number, (n, judge_check) in enumerate(judges):
                    spec = ctx.specs[judge_number]
                    messages = checks.llm_messages(judge_check, ctx.question, candidate.text)
                    calls.append((spec, bind(ctx.call, spec, messages, step=_step(ctx) + len(calls),
                                             params=verdicts.params(True), embedded=quoted([candidate]))))  # fmt: skip
                    keys.append((i, n, judge_check))
            outputs = await ctx.fanout(calls, quorum=False)
            for (i, n, judge_check), output in zip(keys, outputs, strict=True):
                judged[(i, n)] = checks.llm(judge_check, output)
        checked: list[Candidate] = []
        passed: list[bool] = []
        for i, candidate in enumerate(inputs):
            found: list[Verdict] = []
            for n, check in enumerate(layer.checks):
                if isinstance(check, RegexCheck):
                    found.append(checks.regex(check, candidate.text))
                elif isinstance(check, JsonSchemaCheck):
                    found.append(checks.json_schema(check, candidate.text))
                elif isinstance(check, PythonCheck):
                    found.append(await checks.python(check, candidate.text, ctx.question))
                else:
                    found.append(judged[(i, n)])
            checked.append(candidate.model_copy(update={"verdicts": [*candidate.verdicts, *found]}))
            passed.append(all(v.passed for v in found))
        return checked, passed

    def _repairer(self, ctx: StageContext, layer: VerifyLayer, target: Candidate) -> CallSpec | None:
        """Who repairs: ``repair_with``, else the model that wrote the answer (unknown for a reused layer's)."""
        if layer.repair_with is not None:
            return ctx.specs[len(layer.judges())]
        writer = ctx.spec_of(target)
        return None if writer is None else _as_repair(writer, ctx.index, len(ctx.specs))

    def _repair_messages(self, ctx: StageContext, layer: VerifyLayer, target: Candidate) -> list[Message]:
        """The conversation, the failed answer as the assistant's, and the failed checks as the next user turn."""
        return [
            *build_messages(ctx.conversation, system=layer.repair_with.system if layer.repair_with else None),
            {"role": "assistant", "content": target.text},
            {"role": "user", "content": REPAIR.format(failures=_failures(target, len(layer.checks)))},
        ]

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        layer = ctx.layer
        assert isinstance(layer, VerifyLayer)
        longest = max((tokens for _, tokens in inputs), default=0)
        repair_prompt: list[Message] = [
            *ctx.conversation,
            {"role": "assistant", "content": ""},
            {"role": "user", "content": REPAIR.format(failures="- x: " + "x" * 300 * len(layer.checks))},
        ]
        if layer.repairs and layer.repair_with is not None:
            spec = ctx.specs[len(layer.judges())]
            longest = max(longest, ctx.price(spec, repair_prompt, [(0, longest)], times=layer.repairs))
        elif layer.repairs:  # the writer repairs: any earlier call's model may be the one
            longest = max(longest, ctx.price_costliest(ctx.earlier, repair_prompt, [(0, longest)], layer.repairs))
        first_fallback = len(layer.judges()) + (1 if layer.repair_with else 0)
        for number, agent in enumerate(layer.fallback):
            spec = ctx.specs[first_fallback + number]
            longest = max(longest, ctx.price(spec, build_messages(ctx.conversation, system=agent.system), ()))
        answers = len(inputs) + layer.repairs + len(layer.fallback)
        for judge_number, check in enumerate(c for c in layer.checks if isinstance(c, LLMCheck)):
            prompt = checks.llm_messages(check, ctx.question, "")
            ctx.price(ctx.specs[judge_number], prompt, [(0, longest)], verdicts.params(True), times=answers)
        return ctx.result([(0, longest)] * layer.outputs(len(inputs)))

    def summary(self, outcome: Outcome, layer: int) -> str | None:
        if not outcome.considered:
            return None
        new = [c for c in outcome.considered if c.layer == layer]  # repairs and fallback answers
        passed = [c for c in outcome.candidates if all(v.passed for v in c.verdicts)]
        first = len([c for c in passed if c.layer != layer])
        line = f"verdicts: {first} of {len(outcome.considered) - len(new)} passed"
        if new:
            won = any(c.layer == layer for c in passed)
            line += f"; {len(new)} repaired or escalated answer(s), {'one passed' if won else 'none passed'}"
        if not passed:
            line += "; nothing passed, the last answer went on unverified"
        return line


def _failures(candidate: Candidate, checks_run: int) -> str:
    """The failed checks of the latest verification (its last ``checks_run`` verdicts)."""
    latest = candidate.verdicts[-checks_run:] if checks_run else []
    return "\n".join(f"- {v.check}: {v.message}" for v in latest if not v.passed) or "- (no check ran)"


def _as_repair(writer: CallSpec, index: int, agents: int) -> CallSpec:
    """The writer's call (model and settings), recorded in this layer as a row after its own agents."""
    site = writer.site
    name = f"{site.agent_name} (repair)"
    return replace(writer, site=CallSite(layer=index + 1, agent=agents, sample=0, agent_name=name, model=site.model))


def _error(output: AgentOutput) -> str:
    return f"{output.error.type}: {output.error.message}" if output.error else "no answer"


def _step(ctx: StageContext) -> int:
    return len(ctx.recorded) + 1
