"""The container sandbox: each program in a fresh Docker (or Podman) container, through llm-sandbox.

Small on purpose: the container gives isolation (no network, its own filesystem, a memory and a
process limit); llm-sandbox runs the program and returns its output whole, so output past the limit
is cut afterwards rather than stopped.  Cancelling a run stops the waiting; the container itself
ends at its wall-time limit and is then removed.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from types import ModuleType
from typing import Any

from moa._sandbox._types import Execution, Limits, SandboxUnavailable
from moa._sandbox._verdict import Ending, judge

INSTALL_HINT = "pip install 'moa-pipeline[sandbox-container]'"
ENGINES = ("docker", "podman")
# Gives the program its stdin and runs it as __main__ of main.py (llm-sandbox takes no stdin).
WRAPPER = (
    "import io, sys\nsys.stdin = io.StringIO({stdin!r})\n"
    "exec(compile({code!r}, 'main.py', 'exec'), {{'__name__': '__main__'}})\n"
)


def _import(name: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise SandboxUnavailable(
            f"the container sandbox needs {what}, which is not installed: {INSTALL_HINT}"
        ) from error


class ContainerSandbox:
    """Runs programs in containers (``engine`` ``"docker"`` or ``"podman"``, ``image`` llm-sandbox's default).

    Raises ``SandboxUnavailable`` at once when llm-sandbox or the engine's client is not installed, or
    no engine answers.  ``session_options`` go to ``llm_sandbox.SandboxSession`` as they are.
    """

    name = "container"

    def __init__(self, *, engine: str = "docker", image: str | None = None, **session_options: Any) -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown container engine {engine!r}: choose one of {', '.join(map(repr, ENGINES))}")
        self.engine, self.image, self.session_options = engine, image, session_options
        self._library = _import("llm_sandbox", "llm-sandbox")
        client = _import(engine, f"the {engine} client library")
        try:
            if engine == "docker":
                client.from_env().ping()
            else:
                client.PodmanClient().ping()
        except Exception as error:
            raise SandboxUnavailable(
                f"no {engine} engine answers ({type(error).__name__}: {error}): start it, or use sandbox('local')"
            ) from error

    async def run(self, code: str, *, limits: Limits | None = None, stdin: str = "") -> Execution:
        limits = limits or Limits()
        started = time.monotonic()
        try:
            code_, out, err = await asyncio.to_thread(self._run, WRAPPER.format(stdin=stdin, code=code), limits)
            ending = Ending(code=code_) if code_ <= 128 else Ending(signal=code_ - 128)
        except Exception as error:
            if type(error).__name__ != "SandboxTimeoutError":
                raise
            ending, out, err = Ending(killed_for="wall_time"), "", ""
        over = any(len(text.encode()) > limits.output_bytes for text in (out, err))
        out, err = (_cut(text, limits.output_bytes) for text in (out, err))
        exit_status, limit, reason = judge(ending, limits, out, err)
        if over and limit is None:
            limit, reason = "output", f"printed more than {limits.output_bytes:,} bytes of output (cut)"
        return Execution(
            code, exit_status, out, err, time.monotonic() - started, limit, reason, self._isolation(limits)
        )

    def _run(self, program: str, limits: Limits) -> tuple[int, str, str]:
        runtime = {
            "mem_limit": f"{limits.memory_mb}m",
            "pids_limit": limits.processes,
            "network_disabled": True,
            "ulimits": [{"Name": "cpu", "Soft": limits.cpu_s, "Hard": limits.cpu_s + 1}],
        }
        options = {"lang": "python", "image": self.image, "skip_environment_setup": True, **self.session_options}
        options.setdefault("runtime_configs", runtime)
        session = self._library.SandboxSession(backend=self.engine, execution_timeout=limits.wall_s, **options)
        with session:
            result = session.run(program, timeout=limits.wall_s)
        return int(result.exit_code), str(result.stdout), str(result.stderr)

    def _isolation(self, limits: Limits) -> tuple[str, ...]:
        return (
            f"{self.engine} container through llm-sandbox, image {self.image or 'its default'}, removed afterwards",
            "no network (network_disabled)",
            f"container limits: memory {limits.memory_mb} MB, {limits.processes} processes, CPU {limits.cpu_s} s",
            f"wall time: llm-sandbox's timeout of {limits.wall_s:g} s",
            f"output cut to {limits.output_bytes:,} bytes after the run, not while it runs",
        )


def _cut(text: str, limit: int) -> str:
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode(errors="replace")
