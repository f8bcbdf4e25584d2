"""The sandbox's words, exactly: how a run's end is told (``_verdict``), what a run says was in force
(``_isolation``), and what ``Limits`` and ``Execution`` accept and record.

Written against the mutants of ``moa/_sandbox`` that survived the rest of the suite
(``benchmarks/mutation_score.py``).  Nothing here starts a program: these are the parent's own decisions.
"""

from __future__ import annotations

import signal

import pytest

from moa._sandbox._types import Limits
from moa._sandbox._verdict import Ending, judge

LIMITS = Limits(wall_s=2.5, cpu_s=3, memory_mb=128, processes=16, output_bytes=65536)
FORK = "BlockingIOError: [Errno 11] Resource temporarily unavailable"


def traceback(*last: str) -> str:
    return 'Traceback (most recent call last):\n  File "main.py", line 1, in <module>\n' + "\n".join(last) + "\n"


@pytest.mark.parametrize(
    ("ending", "stdout", "stderr", "expected"),
    [
        # What we killed, and why.
        (Ending(killed_for="wall_time"), "", "", (None, "wall_time", "ran past its wall-time limit of 2.5 s")),
        (Ending(killed_for="output"), "x", "", (None, "output", "killed: more than 65,536 bytes of output")),
        (
            Ending(killed_for="wall_time"),
            "",
            f"OSError: fork: retry: no child\n{FORK}\nstill waiting\n",
            (None, "processes", f"hit its limit of 16 processes ({FORK}), then ran past its wall-time limit of 2.5 s"),
        ),
        # A signal: the CPU limit's, our SIGKILL past the CPU time, or another.
        (Ending(signal=signal.SIGXCPU), "", "", (None, "cpu_time", "used up its CPU-time limit of 3 s")),
        (Ending(signal=signal.SIGKILL, cpu_s=3.0), "", "", (None, "cpu_time", "used up its CPU-time limit of 3 s")),
        (Ending(signal=signal.SIGKILL, cpu_s=2.9), "", "", (-9, None, "killed by signal SIGKILL")),
        (Ending(signal=200), "", "", (-200, None, "killed by signal 200")),
        # The sandbox could not run it.
        (
            Ending(error="no such interpreter"),
            "",
            "",
            (None, None, "the sandbox could not run it: no such interpreter"),
        ),
        (Ending(), "", "", (None, None, "the sandbox could not run it: its launcher ended without a report")),
        # It exited with a status: the last exception line of the tail, or its last line.
        (
            Ending(code=1),
            "",
            traceback("ValueError: bad", "  and more"),
            (1, None, "exited with status 1: ValueError: bad"),
        ),
        (
            Ending(code=2),
            "",
            "usage: main.py\nno exception here\n",
            (2, None, "exited with status 2: no exception here"),
        ),
        (Ending(code=3), "", "", (3, None, "exited with status 3")),
        (Ending(code=4), "", "KeyboardInterrupt\n", (4, None, "exited with status 4: KeyboardInterrupt")),
        (Ending(code=1), "", traceback("MemoryError"), (1, "memory", "ran out of memory (limit 128 MB): MemoryError")),
        (
            Ending(code=1),
            "",
            "OSError: [Errno 12] cannot ALLOCATE memory\n",
            (1, "memory", "ran out of memory (limit 128 MB): OSError: [Errno 12] cannot ALLOCATE memory"),
        ),
        (
            Ending(code=1),
            "",
            traceback("RuntimeError: can't start new thread"),
            (1, "processes", "hit its limit of 16 processes: RuntimeError: can't start new thread"),
        ),
        # Exited well: with output, or without.
        (Ending(code=0), "42\n", "", (0, None, None)),
        (Ending(code=0), "", "a warning\n", (0, None, "printed nothing")),
    ],
)
def test_how_a_run_ended_is_told_in_a_status_a_limit_and_a_line(
    ending: Ending, stdout: str, stderr: str, expected: tuple[int | None, str | None, str | None]
) -> None:
    assert judge(ending, LIMITS, stdout, stderr) == expected


def test_only_the_last_ten_lines_of_stderr_are_evidence() -> None:
    early = "MemoryError: long ago\n" + "".join(f"line {n}\n" for n in range(10))
    assert judge(Ending(code=1), LIMITS, "", early) == (1, None, "exited with status 1: line 9")
    within = "MemoryError: just now\n" + "".join(f"line {n}\n" for n in range(9))
    assert judge(Ending(code=1), LIMITS, "", within) == (
        1,
        "memory",
        "ran out of memory (limit 128 MB): MemoryError: just now",
    )
    blank_lines_do_not_count = "MemoryError: just now\n" + "\n \n" * 20 + "".join(f"line {n}\n" for n in range(9))
    assert judge(Ending(code=1), LIMITS, "", blank_lines_do_not_count)[1] == "memory"


def test_a_long_line_is_cut_to_200_characters() -> None:
    fits, longer = "E" * 200, "ValueError: " + "x" * 300
    assert judge(Ending(code=1), LIMITS, "", f"{fits}\n")[2] == f"exited with status 1: {fits}"
    assert judge(Ending(code=1), LIMITS, "", f"{longer}\n")[2] == f"exited with status 1: {longer[:197]}..."
    cause = f"{FORK} " + "y" * 300
    assert judge(Ending(killed_for="output"), LIMITS, "", cause)[2] == (
        f"hit its limit of 16 processes ({cause[:197]}...), then killed: more than 65,536 bytes of output"
    )
