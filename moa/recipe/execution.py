"""``execute``: run the code each candidate holds in a sandbox; the program's output is the answer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .layers import Layer
from .params import Pattern, SandboxLimits


class ExecuteLayer(Layer):
    """``execute``: program-of-thought (PAL, Gao et al. 2022).  A model writes a program; running it is the answer.

    Reported: PAL with Codex reached 72.0 % on GSM8K against 65.6 % for
    chain-of-thought with the same model.  Each candidate's code block is run
    in a sandbox (a separate process with no inherited environment, limits on
    time, memory, processes and output, and no network where the machine
    allows it); the candidate goes on with the program's output as its text and
    answer.  No code, an exception, a limit hit or no output is "no answer",
    never a wrong value; every run is in the trace.
    """

    kind: Literal["execute"] = Field(..., description="`execute`: run each candidate's program; its output answers.")
    language: Literal["python"] = Field("python", description="The language of the code (Python).")
    code: Literal["fenced", "whole"] = Field(
        "fenced",
        description="Where the code is: `fenced` (the last fenced block marked python, else the last unmarked "
        "one) or `whole` (the whole text is the program).",
    )
    code_pattern: Pattern | None = Field(
        None, description="A regular expression whose first group (or match) is the code; overrides `code`."
    )
    answer: Literal["last_number", "last_line", "stdout"] = Field(
        "last_number",
        description="What of the program's standard output is the answer: its last number, its last non-empty "
        "line, or all of it (stripped).",
    )
    only: list[str] | None = Field(
        None,
        description="Run only the candidates these agents wrote (their `name`, else their model); the others go on "
        "as they were written (e.g. chain-of-thought answers beside the programs, for an `agree` check).",
    )
    no_code: Literal["no_answer", "pass"] = Field(
        "no_answer",
        description="A candidate without code: `no_answer` (recorded as no answer) or `pass` (it goes on as it "
        "was written, e.g. a chain-of-thought answer beside the programs, for an `agree` check).",
    )
    unanswered: Literal["drop", "keep"] = Field(
        "drop",
        description="Candidates without an answer: `drop` them (when none has one, the run stops with "
        "`moa.ExecutionError`), or `keep` them at the end, marked, for a later stage to escalate.",
    )
    sandbox: Literal["local", "container"] = Field(
        "local",
        description="`local`: a separate process on this machine; `container`: a container (the "
        "`sandbox-container` extra and a running Docker or Podman).",
    )
    limits: SandboxLimits = Field(default_factory=SandboxLimits, description="Each program's limits.")

    def describe(self, inputs: int) -> list[str]:
        where = "a container" if self.sandbox == "container" else "a sandboxed process"
        shown = {"last_number": "its last number", "last_line": "its last line", "stdout": "all it prints"}
        whose = (
            "of the previous outputs written by " + ", ".join(self.only)
            if self.only
            else f"of each of the {inputs} previous outputs"
        )
        lines = [
            f"runs the code {whose} in {where} (at most {self.limits.wall_s:g} s, {self.limits.memory_mb} MiB "
            f"each); the answer is {shown[self.answer]}"
        ]
        if self.only:
            lines.append("the other outputs go on as they were written")
        if self.no_code == "pass":
            lines.append("an output without code goes on as it was written")
        lines.append(
            "outputs without an answer are dropped (none answered: the run fails)"
            if self.unanswered == "drop"
            else "outputs without an answer go on last, marked"
        )
        return lines
