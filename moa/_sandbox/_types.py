"""What a sandbox takes and gives back: ``Limits``, ``Execution``, the ``Sandbox`` protocol, its error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from moa._errors import MoAError
from moa._secrets import redact

LIMIT_NAMES = ("wall_time", "cpu_time", "memory", "processes", "output")
TRACE_CHARS = 2_000


class SandboxUnavailable(MoAError):
    """The sandbox backend asked for cannot run here (its library is not installed, its engine not running)."""


@dataclass(frozen=True)
class Limits:
    """What one run of a program may use; past any of them the whole process tree is ended."""

    wall_s: float = 10.0
    """Wall-clock seconds; then the whole process tree is killed (limit ``wall_time``)."""
    cpu_s: int = 5
    """CPU seconds of the program's main process (``RLIMIT_CPU``; limit ``cpu_time``)."""
    memory_mb: int = 256
    """Address space of each process, in MiB (``RLIMIT_AS``; limit ``memory``)."""
    processes: int = 16
    """Processes and threads the program may have at once, itself included (``RLIMIT_NPROC``)."""
    output_bytes: int = 65536
    """Bytes of stdout and of stderr kept, each; one more and the program is killed (limit ``output``)."""
    disk_mb: int = 64
    """Size of the working directory where it is a tmpfs, and of any one file it writes (``RLIMIT_FSIZE``)."""

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "processes", "output_bytes", "disk_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive number, not {value!r}")
        for name in ("cpu_s", "memory_mb", "processes", "output_bytes", "disk_mb"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"Limits.{name} must be a whole number, not {getattr(self, name)!r}")


@dataclass(frozen=True)
class Execution:
    """One run of one program: what it printed, how it ended, and what was in force while it ran."""

    code: str
    exit_status: int | None
    """Its exit status; minus the signal's number when a signal we did not send ended it; None when one of
    its limits did (we killed it, or the kernel did on our behalf) or it never started."""
    stdout: str
    """Decoded as UTF-8 with ``errors="replace"`` (bytes that are not UTF-8 never raise), cut to the limit."""
    stderr: str
    wall_s: float
    limit: str | None
    """Which limit ended it: ``wall_time``, ``cpu_time``, ``memory``, ``processes``, ``output``, or None."""
    reason: str | None
    """One line for a human when it did not succeed (or printed nothing); None when all went well."""
    isolation: tuple[str, ...]
    """What was in force, one statement each, including what could not be had on this machine."""

    @property
    def ok(self) -> bool:
        """It exited with status 0 and hit no limit (it may still have printed nothing: see ``reason``)."""
        return self.exit_status == 0 and self.limit is None

    def to_trace(self) -> dict[str, Any]:
        """A JSON-able record, outputs cut to about 2,000 characters each and scrubbed of secrets."""
        return {
            "code": redact(_clip(self.code)),
            "exit_status": self.exit_status,
            "stdout": redact(_clip(self.stdout)),
            "stderr": redact(_clip(self.stderr)),
            "wall_s": round(self.wall_s, 3),
            "limit": self.limit,
            "reason": redact(self.reason) if self.reason else None,
            "isolation": list(self.isolation),
        }


def _clip(text: str, chars: int = TRACE_CHARS) -> str:
    """The head and the tail of a long text (a traceback's end matters as much as a program's first lines)."""
    if len(text) <= chars:
        return text
    half = chars // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half:,} characters cut] ...\n{text[-half:]}"


class Sandbox(Protocol):
    """Runs a Python program the model wrote, contained; ``run`` never raises for what the program does."""

    name: str

    async def run(self, code: str, *, limits: Limits | None = None, stdin: str = "") -> Execution:
        """Run ``code`` with ``stdin`` as its standard input, within ``limits`` (``Limits()`` when None)."""
        ...
