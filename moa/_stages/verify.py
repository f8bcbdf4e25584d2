"""``verify``: validators as closure conditions.  Keep what passes; repair, then escalate, when nothing does.

Every candidate goes through every check; the verdicts are in the trace.
When none passes, the first candidate goes back to the call that wrote it
(its model, settings and system prompt; or ``repair_with``), its answer
followed by the failed checks' messages, up to ``repairs`` times, each repair
checked again; then each ``fallback`` agent answers afresh, in turn; the first
answer that passes goes on.  If none does, ``VerificationError`` stops the run
with every verdict (or, with ``if_none_pass: last``, the last answer checked
goes on with its failed verdicts).  A judge that cannot be asked is no
evidence against an answer: nothing is repaired or escalated for it, and the
error says the checks could not run.
"""

from __future__ import annotations

from dataclasses import replace

from moa._call import CallSpec
from moa._errors import CallSite, VerificationError
from moa._prompt import Message, build_messages
from moa.recipe import AgreeCheck, JsonSchemaCheck, LLMCheck, PythonCheck, RegexCheck, VerifyLayer
from moa.result import AgentOutput, Candidate, Verdict

from . import checks, verdicts
from .base import Estimate, EstimateContext, Factory, Outcome, Stage, StageContext, Writer, bind, quoted

REPAIR = "Your answer did not pass these checks:\n{failures}\n\nGive a corrected answer to the original question."


class Verify(Stage):
    async def run(self, ctx: StageContext, inputs: list[Candidate]) -> Outcome:
        layer = ctx.layer
        assert isinstance(layer, VerifyLayer)
        considered = await self._check(ctx, layer, inputs, inputs)
        passing = [c for c in considered if _passed(c, ctx.index + 1)]
        if passing:
            return Outcome(passing[:1] if layer.keep == "first" else passing, considered)
        failures = [f"{_origin(c)}:\n{_failures(c, ctx.index + 1)}" for c in considered]

        def stop() -> VerificationError:
            error = VerificationError(ctx.index + 1, len(considered), failures)
            error.considered = list(considered)
            return error

        if considered and all(_only_unavailable(c, ctx.index + 1) for c in considered):
            raise stop()  # the judge is down: repairs and fallbacks could not be checked either
        if layer.repairs and considered:
            repairer = self._repairer(ctx, layer, considered[0])
            if repairer is None:
                failures.append(f"repairs skipped: the call that wrote {_origin(considered[0])} is not in this run")
            target = considered[0]
            for number in range(1, layer.repairs + 1 if repairer is not None else 1):
                assert repairer is not None
                messages = self._repair_messages(ctx, layer, target, repairer)
                answer = await self._answer(ctx, repairer.spec, messages, [target])
                if not answer.ok:
                    failures.append(f"repair {number} by {repairer.spec.site.agent_name}: the call failed "
                                    f"({_error(answer)})")  # fmt: skip
                    break
                (checked,) = await self._check(ctx, layer, [Candidate.of(answer)], considered)
                considered.append(checked)
                if _passed(checked, ctx.index + 1):
                    return Outcome([checked], considered)
                failures.append(f"repair {number} by {repairer.spec.site.agent_name}:\n"
                                f"{_failures(checked, ctx.index + 1)}")  # fmt: skip
                target = checked
        first_fallback = len(layer.judges()) + (1 if layer.repair_with else 0)
        for number, agent in enumerate(layer.fallback):
            spec = ctx.specs[first_fallback + number]
            answer = await self._answer(ctx, spec, build_messages(ctx.conversation, system=agent.system), [])
            if not answer.ok:
                failures.append(f"fallback {spec.site.agent_name}: the call failed ({_error(answer)})")
                continue
            (checked,) = await self._check(ctx, layer, [Candidate.of(answer)], considered)
            considered.append(checked)
            if _passed(checked, ctx.index + 1):
                return Outcome([checked], considered)
            failures.append(f"fallback {spec.site.agent_name}:\n{_failures(checked, ctx.index + 1)}")
        if layer.if_none_pass == "last" and considered:
            return Outcome([considered[-1]], considered)
        raise stop()

    async def _answer(
        self, ctx: StageContext, spec: CallSpec, messages: list[Message], shown: list[Candidate]
    ) -> AgentOutput:
        """One repair or fallback call (``shown``: the answer a repair quotes); a failed one is returned (the
        stage moves on), a refused one raises."""
        call = bind(ctx.call, spec, messages, step=_step(ctx), embedded=quoted(shown))
        (answer,) = await ctx.fanout([(spec, call)], quorum=False)
        return answer

    async def _check(
        self, ctx: StageContext, layer: VerifyLayer, inputs: list[Candidate], earlier: list[Candidate]
    ) -> list[Candidate]:
        """Every candidate with this stage's verdicts added (judges are asked together; a failed judge call
        is a failed check that says the judge could not be asked).  An `agree` check counts the candidates
        ``inputs`` and ``earlier`` (every answer this stage has seen) that give the same answer."""
        pool = [*earlier, *(c for c in inputs if all(c is not e for e in earlier))]
        here = ctx.index + 1
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
                judged[(i, n)] = checks.llm(judge_check, output, here)
        checked: list[Candidate] = []
        for i, candidate in enumerate(inputs):
            found: list[Verdict] = []
            agreement: int | None = candidate.agreement
            for n, check in enumerate(layer.checks):
                if isinstance(check, RegexCheck):
                    found.append(checks.regex(check, candidate.text, here))
                elif isinstance(check, JsonSchemaCheck):
                    found.append(checks.json_schema(check, candidate.text, here))
                elif isinstance(check, PythonCheck):
                    found.append(await checks.python(check, candidate.text, ctx.question, here))
                elif isinstance(check, AgreeCheck):
                    agreed, agreement = checks.agree(check, candidate, pool, ctx.question, here)
                    found.append(agreed)
                else:
                    found.append(judged[(i, n)])
            update = {"verdicts": [*candidate.verdicts, *found], "agreement": agreement}
            checked.append(candidate.model_copy(update=update))
        return checked

    def _repairer(self, ctx: StageContext, layer: VerifyLayer, target: Candidate) -> Writer | None:
        """Who repairs: ``repair_with``, else the call that wrote the answer, recorded as a row of this layer
        after its own agents (None when that call is not in this run: a reused layer's answer)."""
        if layer.repair_with is not None:
            return Writer(ctx.specs[len(layer.judges())], layer.repair_with.system)
        writer = ctx.writer_of(target)
        if writer is None:
            return None
        site = writer.spec.site
        name = f"{site.agent_name} (repair)"
        resited = CallSite(layer=ctx.index + 1, agent=len(ctx.specs), sample=0, agent_name=name, model=site.model)
        repairer = Writer(replace(writer.spec, site=resited), writer.system)
        ctx.remember(repairer.spec, repairer.system)  # a later verify can send this answer back here
        return repairer

    def _repair_messages(
        self, ctx: StageContext, layer: VerifyLayer, target: Candidate, repairer: Writer
    ) -> list[Message]:
        """The conversation (with the repairer's system prompt), the failed answer as the assistant's turn,
        and the failed checks as the next user turn (a judge that could not be asked is left out)."""
        return [
            *build_messages(ctx.conversation, system=repairer.system),
            {"role": "assistant", "content": target.text},
            {"role": "user", "content": REPAIR.format(failures=_failures(target, ctx.index + 1, for_model=True))},
        ]

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        """Every answer checked (inputs, repairs, fallbacks) by every judge; each repair quoting the longest
        answer so far with every failure message at its longest, by the costliest repairer."""
        layer = ctx.layer
        assert isinstance(layer, VerifyLayer)
        longest = max((tokens for _, tokens in inputs), default=0)
        failures = REPAIR.format(failures="\n".join("- python: " + "x" * checks.MESSAGE_CHARS for _ in layer.checks))
        if layer.repair_with is not None:
            repairers = [Writer(ctx.specs[len(layer.judges())], layer.repair_with.system)]
        else:  # the writer repairs: any earlier call may be the one
            repairers = list(ctx.earlier)
        for _ in range(layer.repairs if repairers else 0):
            system = max((w.system or "" for w in repairers), key=len) or None
            messages: list[Message] = [
                *build_messages(ctx.conversation, system=system),
                {"role": "assistant", "content": ""},
                {"role": "user", "content": failures},
            ]
            longest = max(longest, ctx.price_costliest([w.spec for w in repairers], messages, [(0, longest)]))
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
        first = [c for c in outcome.considered if c.layer != layer]
        line = f"verdicts: {sum(_passed(c, layer) for c in first)} of {len(first)} passed"
        if new:
            won = any(_passed(c, layer) for c in new)
            line += f"; {len(new)} repaired or escalated answer(s), {'one passed' if won else 'none passed'}"
        if outcome.candidates and not _passed(outcome.candidates[0], layer):
            line += "; nothing passed: the last answer went on with its failed verdicts"
        return line


def _mine(candidate: Candidate, layer: int) -> list[Verdict]:
    return [v for v in candidate.verdicts if v.layer == layer]


def _passed(candidate: Candidate, layer: int) -> bool:
    return all(v.passed for v in _mine(candidate, layer))


def _only_unavailable(candidate: Candidate, layer: int) -> bool:
    failed = [v for v in _mine(candidate, layer) if not v.passed]
    return bool(failed) and all(checks.judge_unavailable(v) for v in failed)


def _failures(candidate: Candidate, layer: int, for_model: bool = False) -> str:
    """This layer's failed checks of a candidate, one per line (for a model: without judge outages)."""
    failed = [v for v in _mine(candidate, layer) if not v.passed]
    if for_model:
        failed = [v for v in failed if not checks.judge_unavailable(v)]
    return "\n".join(f"- {v.check}: {v.message}" for v in failed) or "- (no check ran)"


def _origin(candidate: Candidate) -> str:
    return f"the answer of layer {candidate.layer}, {candidate.model}" + (
        f" #{candidate.sample + 1}" if candidate.sample else ""
    )


def _error(output: AgentOutput) -> str:
    return f"{output.error.type}: {output.error.message}" if output.error else "no answer"


def _step(ctx: StageContext) -> int:
    return len(ctx.recorded) + 1
