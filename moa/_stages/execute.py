"""``execute``: program-of-thought.  Run each candidate's code in a sandbox; the program's output answers.

A candidate whose code cannot be found, raises, hits a limit or prints no
answer goes on (or is dropped) with no answer, never with a wrong value; each
run (code, exit status, output cut, time, limit hit, isolation) is kept on the
candidate, so it is in the trace.  Programs run together, at most one per CPU.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from moa._errors import ExecutionError
from moa.recipe import ExecuteLayer
from moa.result import Candidate

from .base import Estimate, EstimateContext, Outcome, Stage, StageContext
from .extract import last_number

# A fenced block: its info string (the language), then its body; the last block may be left open (a reply
# cut off, or a model that never closes it).
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.DOTALL | re.MULTILINE)
_PYTHON = {"python", "py", "python3", "py3"}


def code_of(layer: ExecuteLayer, text: str) -> str | None:
    """The program a candidate holds, as ``layer`` finds it; None when it holds none."""
    if layer.code_pattern is not None:
        matches = list(re.finditer(layer.code_pattern, text))
        if not matches:
            return None
        found = matches[-1]
        code = found.group(1) if found.groups() and found.group(1) is not None else found.group(0)
    elif layer.code == "whole":
        code = text
    else:
        blocks = _FENCE.findall(text)
        marked = [body for info, body in blocks if info.lower() in _PYTHON]
        unmarked = [body for info, body in blocks if not info]
        chosen = marked or unmarked
        code = chosen[-1] if chosen else ""
    return code if code.strip() else None


def answer_of(layer: ExecuteLayer, stdout: str) -> str | None:
    """The answer a program's standard output gives (``layer.answer``); None when it gives none."""
    if layer.answer == "last_number":
        return last_number(stdout)
    if layer.answer == "last_line":
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        return lines[-1] if lines else None
    return stdout.strip() or None


class Execute(Stage):
    async def run(self, ctx: StageContext, inputs: list[Candidate]) -> Outcome:
        layer = ctx.layer
        assert isinstance(layer, ExecuteLayer)
        from moa._sandbox import Limits, sandbox

        box = sandbox(layer.sandbox)
        limits = Limits(**layer.limits.model_dump())
        slots = asyncio.Semaphore(max(1, os.cpu_count() or 1))

        def runs(candidate: Candidate) -> bool:
            if layer.only is None:
                return True
            writer = ctx.writer_of(candidate)
            return (writer.spec.site.agent_name if writer else candidate.model) in layer.only

        async def one(candidate: Candidate) -> Candidate:
            if not runs(candidate):
                return candidate
            if candidate.finish_reason == "length":
                return _unanswered(candidate, "it was cut by max_tokens: its program may be incomplete")
            code = code_of(layer, candidate.text)
            if code is None:
                if layer.no_code == "pass":
                    return candidate
                return _unanswered(candidate, "no code found in it")
            async with slots:
                execution = await box.run(code, limits=limits)
            record = execution.to_trace()
            if not execution.ok:
                return _unanswered(candidate, execution.reason or "the program failed", record)
            answer = answer_of(layer, execution.stdout)
            if answer is None:
                why = "printed nothing" if not execution.stdout.strip() else "printed no number"
                return _unanswered(candidate, why if layer.answer == "last_number" else "printed nothing", record)
            record["answer"] = answer
            return candidate.model_copy(update={"text": answer, "answer": answer, "execution": record})

        considered = list(await asyncio.gather(*(one(c) for c in inputs)))
        answered = [c for c in considered if c.answer is not None or _passed_through(c)]
        if answered and layer.unanswered == "drop":
            return Outcome(answered, considered)
        if layer.unanswered == "keep" and considered:
            rest = [c for c in considered if all(c is not a for a in answered)]
            return Outcome([*answered, *rest], considered)
        error = ExecutionError(ctx.index + 1, len(considered), [_why(c) for c in considered])
        error.considered = considered
        raise error

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        layer = ctx.layer
        assert isinstance(layer, ExecuteLayer)
        # No call; an answer is at most what a program may print (a token is at least one byte), or an input
        # that goes on as it was written.
        longest = max([layer.limits.output_bytes, *(tokens for _, tokens in inputs)])
        return ctx.result([(0, longest)] * max(len(inputs), 1))

    def summary(self, outcome: Outcome, layer: int) -> str | None:
        ran = [c for c in outcome.considered if c.execution is not None]
        answered = sum(c.answer is not None and c.execution is not None for c in outcome.considered)
        line = f"programs: {answered} of {len(ran)} gave an answer"
        reasons: dict[str, int] = {}
        for candidate in outcome.considered:
            if candidate.answer is None and candidate.execution is not None:
                reason = str(candidate.execution.get("limit") or candidate.execution.get("no_answer") or "failed")
                reasons[reason] = reasons.get(reason, 0) + 1
        if reasons:
            line += " (" + ", ".join(f"{n} {why}" for why, n in reasons.items()) + ")"
        passed = sum(_passed_through(c) for c in outcome.considered)
        return line + (f"; {passed} without code went on as written" if passed else "")


def _unanswered(candidate: Candidate, why: str, record: dict[str, Any] | None = None) -> Candidate:
    execution = {**(record or {"code": None}), "no_answer": why}
    return candidate.model_copy(update={"answer": None, "execution": execution})


def _passed_through(candidate: Candidate) -> bool:
    return candidate.execution is None


def _why(candidate: Candidate) -> str:
    origin = f"the answer of layer {candidate.layer}, {candidate.model}" + (
        f" #{candidate.sample + 1}" if candidate.sample else ""
    )
    return f"{origin}: {(candidate.execution or {}).get('no_answer', 'no answer')}"
