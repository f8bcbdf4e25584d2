"""The local sandbox: each program in a launcher-made process tree, supervised from the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from moa._sandbox import _launcher
from moa._sandbox._isolation import Choice, choose, describe, environment, hidden_paths, kept_paths
from moa._sandbox._types import Execution, Limits
from moa._sandbox._verdict import Ending, judge

LAUNCHER = str(Path(_launcher.__file__).resolve())
PROBE = "print('ok')"
KILL_WAIT_S = 30.0  # a SIGKILLed tree is gone well within this, however loaded the machine
PIPE_GRACE_S = 2.0  # after the launcher exits, for output still in the pipes
FIRST = asyncio.FIRST_COMPLETED
UID_BASE, UID_SPAN = 1_800_000_000, 100_000_000  # uids no account uses: one per run, when moa is root
_uids_in_use: set[int] = set()


class LocalSandbox:
    """Runs programs in a separate process with rlimits, and namespaces where the machine allows.

    ``namespaces=False`` never tries them; ``site_packages=True`` lets programs import what this
    interpreter has installed; ``tmp_root`` is where working directories are made (the system's
    temporary folder by default); ``hide`` names more folders to hide (your project, say).
    """

    name = "local"

    def __init__(
        self,
        *,
        namespaces: bool = True,
        site_packages: bool = False,
        tmp_root: str | os.PathLike[str] | None = None,
        hide: Sequence[str] = (),
    ) -> None:
        self.namespaces, self.site_packages = namespaces, site_packages
        self.tmp_root = os.fspath(tmp_root) if tmp_root is not None else None
        self.hidden = hidden_paths(hide)
        self.kept = kept_paths(self.hidden, site_packages)
        self._key = (namespaces, site_packages, self.tmp_root, tuple(self.hidden))

    async def run(self, code: str, *, limits: Limits | None = None, stdin: str = "") -> Execution:
        choice = await choose(self._key, self.namespaces, self._probe)
        return await self._execute(code, limits or Limits(), stdin, choice)

    async def isolation(self) -> tuple[str, ...]:
        """What a run with default limits would have in force here (probes the machine the first time)."""
        choice = await choose(self._key, self.namespaces, self._probe)
        return describe(
            choice, uid=None, limits=Limits(), site_packages=self.site_packages, hidden=self.hidden, kept=self.kept
        )

    async def _probe(self, mode: str) -> str | None:
        done = await self._execute(PROBE, Limits(wall_s=60.0), "", Choice(mode))
        if done.exit_status == 0 and done.stdout.strip() == "ok":
            return None
        return done.reason or done.stderr.strip()[-300:] or "the probe printed nothing"

    def _argv(self) -> list[str]:
        python = sys.executable if self.site_packages else os.path.realpath(sys.executable)
        flags = ["-I", "-B", "-u", "-X", "utf8"] if self.site_packages else ["-I", "-S", "-B", "-u", "-X", "utf8"]
        return [python, *flags, "-c", _launcher.BOOTSTRAP]

    async def _execute(self, code: str, limits: Limits, stdin: str, choice: Choice) -> Execution:
        namespaces = choice.mode in _launcher.NS_MODES
        hidden, kept = (self.hidden, self.kept) if namespaces else ([], [])
        workdir = tempfile.mkdtemp(prefix="moa-sandbox-", dir=self.tmp_root)
        uid = _take_uid() if choice.own_uid else None
        numbers = {"cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "processes": limits.processes}
        config: dict[str, Any] = {
            "mode": choice.mode,
            "uid": uid,
            "workdir": workdir,
            "argv": self._argv(),
            "env": environment(workdir),
            "hide": hidden,
            "keep": kept,
            "limits": {**numbers, "disk_mb": limits.disk_mb},
        }
        try:
            _write_program(workdir, code)
            ending, out, err, wall_s, reports = await _supervise(config, limits, stdin)
        finally:
            if choice.mode == "root-plain" and uid is not None:
                _kill_uid(uid)  # without a PID namespace, a process that left the group is found by its uid
            _remove(workdir)
            if uid is not None:
                _uids_in_use.discard(uid)
        stdout = out.decode("utf-8", errors="replace")
        stderr = err.decode("utf-8", errors="replace")
        exit_status, limit, reason = judge(ending, limits, stdout, stderr)
        notes = [str(note) for report in reports for note in report.get("notes", ())]
        isolation = describe(
            choice, uid=uid, limits=limits, site_packages=self.site_packages, hidden=hidden, kept=kept, notes=notes
        )
        return Execution(code, exit_status, stdout, stderr, wall_s, limit, reason, isolation)


class _Capture(asyncio.SubprocessProtocol):
    """Keeps up to ``cap`` bytes of stdout and of stderr; one byte more and it kills the tree."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cap: int, on_overflow: Callable[[], None]) -> None:
        self.cap, self.on_overflow = cap, on_overflow
        self.kept = {1: bytearray(), 2: bytearray()}
        self.overflowed = loop.create_future()
        self.exited = loop.create_future()
        self.closed = loop.create_future()
        self._open = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        kept = self.kept[fd]
        room = self.cap - len(kept)
        kept += data[: max(room, 0)]
        if len(data) > room and not self.overflowed.done():
            self.overflowed.set_result(None)
            self.on_overflow()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        if not self._open and not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


async def _supervise(
    config: dict[str, Any], limits: Limits, stdin: str
) -> tuple[Ending, bytes, bytes, float, list[dict[str, Any]]]:
    """Start the launcher, feed stdin, wait for the end or a limit, kill the tree; always leaves nothing running."""
    loop = asyncio.get_running_loop()
    pid: list[int] = []
    plain = config["mode"] not in _launcher.NS_MODES
    capture = _Capture(loop, limits.output_bytes, lambda: _stop(pid, plain))
    status_r, status_w = os.pipe()
    config = {**config, "status_fd": status_w, "parent": os.getpid()}
    try:
        started = time.monotonic()
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: capture,
                *[sys.executable, "-I", "-S", "-B", LAUNCHER, json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w,),
                start_new_session=True,
                env=config["env"],
                cwd=config["workdir"],
            )
        except OSError as error:
            return Ending(error=f"the launcher could not be started: {error}"), b"", b"", 0.0, []
        finally:
            os.close(status_w)
        pid.append(transport.get_pid())
        try:
            _feed(transport, stdin)
            await asyncio.wait({capture.exited, capture.overflowed}, timeout=limits.wall_s, return_when=FIRST)
            killed_for = "output" if capture.overflowed.done() else None
            if not capture.exited.done():
                killed_for = killed_for or "wall_time"
                _stop(pid, plain)
            await asyncio.wait({capture.exited}, timeout=KILL_WAIT_S)
            wall_s = time.monotonic() - started
            await asyncio.wait({capture.closed}, timeout=PIPE_GRACE_S)
        finally:  # on cancellation too: the tree is killed before anything else
            if not capture.exited.done():
                _stop(pid, plain)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({capture.exited}, timeout=KILL_WAIT_S)
            _kill_group(pid)  # whatever is left in its process group (nothing, unless the launcher was stuck)
            transport.close()
        reports = _read_reports(status_r)
    finally:
        os.close(status_r)
    return _ending(reports, killed_for), bytes(capture.kept[1]), bytes(capture.kept[2]), wall_s, reports


def _feed(transport: asyncio.SubprocessTransport, stdin: str) -> None:
    pipe = cast(asyncio.WriteTransport | None, transport.get_pipe_transport(0))
    if pipe is not None:
        if stdin:
            pipe.write(stdin.encode("utf-8", errors="replace"))
        pipe.write_eof()


def _read_reports(fd: int) -> list[dict[str, Any]]:
    """The launcher's JSON lines (it and its init are gone, so this never blocks for long)."""
    os.set_blocking(fd, False)
    data = bytearray()
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            data += chunk
    reports = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                reports.append(record)
    return reports


def _ending(reports: list[dict[str, Any]], killed_for: str | None) -> Ending:
    ended = next((r for r in reports if "status" in r), None)
    error = next((str(r["error"]) for r in reports if "error" in r), None)
    if ended is None or (error is not None and killed_for is None):
        return Ending(killed_for=killed_for, error=error)
    status, cpu_s = int(ended["status"]), float(ended.get("cpu_s", 0.0))
    if os.WIFSIGNALED(status):
        return Ending(killed_for=killed_for, signal=os.WTERMSIG(status), cpu_s=cpu_s)
    return Ending(killed_for=killed_for, code=os.waitstatus_to_exitcode(status), cpu_s=cpu_s)


def _stop(pid: list[int], plain: bool) -> None:
    """End the run's whole tree: the launcher does it (SIGTERM) without namespaces, SIGKILL to the group with."""
    if pid and plain:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid[0], signal.SIGTERM)
    else:
        _kill_group(pid)


def _kill_group(pid: list[int]) -> None:
    """SIGKILL the launcher's process group: the launcher, the program, and (with namespaces) every descendant."""
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid[0], signal.SIGKILL)


def _write_program(workdir: str, code: str) -> None:
    """main.py: a small file on a local disk, written in the loop (a thread would cost more than it)."""
    with open(os.path.join(workdir, "main.py"), "wb") as file:
        file.write(code.encode("utf-8", errors="replace"))


def _take_uid() -> int:
    while (uid := UID_BASE + random.randrange(UID_SPAN)) in _uids_in_use:
        pass
    _uids_in_use.add(uid)
    return uid


def _kill_uid(uid: int) -> None:
    """SIGKILL every process whose real uid is ``uid`` until none is left (or a few rounds passed)."""
    for _ in range(20):
        found = [pid for pid in _pids() if _real_uid(pid) == uid]
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _real_uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _remove(folder: str) -> None:
    """Delete a working directory, even one whose program took its own permissions away."""

    def unlock(function: Callable[[str], Any], path: str, _info: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            function(path)

    shutil.rmtree(folder, onerror=unlock)
