"""How a run ended, in three words: its exit status, the limit that ended it, one line for a human."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from moa._sandbox._types import Limits

LINE_CHARS = 200
_MEMORY = re.compile(r"^MemoryError\b|Cannot allocate memory|out of memory|std::bad_alloc", re.IGNORECASE)
_EXCEPTION = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
# Several processes may write at once (a fork bomb's children): the evidence is looked for near the end.
TAIL_LINES = 10
_PROCESSES = re.compile(r"Resource temporarily unavailable|can't start new thread|fork: retry")


@dataclass(frozen=True)
class Ending:
    """What the supervisor saw: our kill (if any), the program's end as its launcher reported it."""

    killed_for: str | None = None  # "wall_time" or "output": we killed the tree
    code: int | None = None  # exit code, when it exited
    signal: int | None = None  # the signal that ended it, when one did
    cpu_s: float = 0.0
    error: str | None = None  # the sandbox itself could not start the program


def judge(ending: Ending, limits: Limits, stdout: str, stderr: str) -> tuple[int | None, str | None, str | None]:
    """``(exit_status, limit, reason)`` for an ending."""
    if ending.killed_for is not None:
        return _killed(ending.killed_for, limits, stderr)
    if ending.signal is not None:
        if ending.signal == signal.SIGXCPU or (ending.signal == signal.SIGKILL and ending.cpu_s >= limits.cpu_s):
            return None, "cpu_time", f"used up its CPU-time limit of {limits.cpu_s} s"
        return -ending.signal, None, f"killed by signal {_signal_name(ending.signal)}"
    if ending.code is None:
        return None, None, f"the sandbox could not run it: {ending.error or 'its launcher ended without a report'}"
    if ending.code != 0:
        tail = [line.strip() for line in stderr.splitlines() if line.strip()][-TAIL_LINES:]
        last = _cut(next((line for line in reversed(tail) if _EXCEPTION.match(line)), tail[-1] if tail else ""))
        if any(_MEMORY.search(line) for line in tail):
            return ending.code, "memory", f"ran out of memory (limit {limits.memory_mb} MB): {last}"
        if any(_PROCESSES.search(line) for line in tail):
            return ending.code, "processes", f"hit its limit of {limits.processes} processes: {last}"
        return ending.code, None, f"exited with status {ending.code}" + (f": {last}" if last else "")
    return 0, None, None if stdout else "printed nothing"


def _killed(killed_for: str, limits: Limits, stderr: str) -> tuple[int | None, str | None, str | None]:
    """Killed by us; a program that had run out of processes first (a fork bomb) is said to have."""
    if killed_for == "output":
        why = f"killed: more than {limits.output_bytes:,} bytes of output"
    else:
        why = f"ran past its wall-time limit of {limits.wall_s:g} s"
    cause = next((line for line in reversed(stderr.splitlines()) if _PROCESSES.search(line)), None)
    if cause is not None:
        return None, "processes", f"hit its limit of {limits.processes} processes ({_cut(cause)}), then {why}"
    return None, killed_for, why


def _cut(line: str) -> str:
    line = line.strip()
    return line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 3] + "..."


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
