"""Which isolation this machine allows (found once, by trying each mode in turn) and how to say what was in force.

The modes, best first (``_launcher`` carries them out): ``root-ns`` and ``user-ns`` (namespaces: no
network, own PID tree, private read-only mounts), ``root-plain`` (root without namespaces: a uid of the
run's own), ``plain`` (your own user).  A mode is used only after a probe program ran under it.
"""

from __future__ import annotations

import os
import site
import sys
import tempfile
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass

from moa._sandbox._launcher import NESTED_UID, NS_MODES, READ_ONLY
from moa._sandbox._types import Limits

# Never hidden, nor anything holding one of them: the program's interpreter and libraries live there.
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/dev", "/proc", "/sys", "/run", "/var")
ENV_NAMES = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "USER", "LOGNAME")


@dataclass(frozen=True)
class Choice:
    """The mode runs use, and why each better one was refused (``"root-ns: unshare: ..."``)."""

    mode: str
    refused: tuple[str, ...] = ()

    @property
    def own_uid(self) -> bool:
        """Whether each run gets a uid of its own (moa runs as root)."""
        return self.mode in ("root-ns", "root-plain")


_chosen: dict[Hashable, Choice] = {}


def candidates(namespaces: bool) -> tuple[str, ...]:
    modes = ("root-ns", "root-plain", "plain") if os.geteuid() == 0 else ("user-ns", "plain")
    return modes if namespaces else tuple(mode for mode in modes if mode not in NS_MODES)


async def choose(key: Hashable, namespaces: bool, probe: Callable[[str], Awaitable[str | None]]) -> Choice:
    """The best mode whose probe passes (``probe`` returns None, or what went wrong), found once per key.

    Two first runs at once may both probe: harmless, and no lock tied to one event loop is needed.
    """
    if key in _chosen:
        return _chosen[key]
    refused: list[str] = []
    modes = candidates(namespaces)
    for mode in modes:
        problem = await probe(mode)
        if problem is None:
            _chosen[key] = Choice(mode, tuple(refused))
            return _chosen[key]
        refused.append(f"{mode}: {problem}")
    return Choice(modes[-1], tuple(refused))  # nothing worked: not kept, so the next run tries again


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _outermost(paths: set[str]) -> list[str]:
    return sorted(p for p in paths if not any(q != p and _inside(p, q) for q in paths))


def hidden_paths(extra: Sequence[str] = ()) -> list[str]:
    """The folders a tmpfs hides: homes, temporary folders, and ``extra`` (each that exists)."""
    wanted = ["/root", "/home", os.path.expanduser("~"), tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"]
    wanted += ["/run/lock", "/run/user", *extra]
    real = {os.path.realpath(path) for path in wanted if os.path.isdir(path)}
    return _outermost({p for p in real if p != "/" and not any(_inside(s, p) for s in SYSTEM_DIRS)})


def kept_paths(hidden: Sequence[str], site_packages: bool) -> list[str]:
    """What the interpreter needs from inside the hidden folders: bound back, read-only."""
    needed = {os.path.dirname(os.path.realpath(sys.executable)), sys.base_prefix, sys.base_exec_prefix}
    if site_packages:
        needed |= {sys.prefix, sys.exec_prefix, os.path.dirname(sys.executable), *site.getsitepackages()}
    real = {os.path.realpath(path) for path in needed if os.path.isdir(path)}
    return _outermost({p for p in real if any(_inside(p, h) for h in hidden)})


def environment(workdir: str) -> dict[str, str]:
    """The program's whole environment: nothing of moa's is inherited."""
    paths = ("/usr/local/bin", "/usr/bin", "/bin")
    values = (":".join(paths), workdir, workdir, "C.UTF-8", "C.UTF-8", "sandbox", "sandbox")
    return dict(zip(ENV_NAMES, values, strict=True))


def describe(
    choice: Choice,
    *,
    uid: int | None,
    limits: Limits,
    site_packages: bool,
    hidden: Sequence[str],
    kept: Sequence[str],
    notes: Sequence[str] = (),
) -> tuple[str, ...]:
    """What was in force for one run, one statement each, what is missing said as plainly as what is not."""
    mode, namespaces = choice.mode, choice.mode in NS_MODES
    interpreter = "python -I -S -B: standard library only" if not site_packages else "python -I -B: site-packages too"
    lines = ["separate process", f"isolated interpreter ({interpreter})"]
    lines.append(f"empty environment: only {', '.join(ENV_NAMES)} set")
    if namespaces:
        lines.append(f"fresh working directory: a {limits.disk_mb} MB tmpfs of its own, gone afterwards")
    else:
        lines.append("fresh temporary working directory, deleted afterwards")
    lines.append(_user(choice, uid))
    if namespaces:
        lines.append("no network (network namespace: only a loopback that is down)")
        lines.append("own PID namespace: the whole process tree dies with the run")
        shown = f" (shown again, read-only: {', '.join(kept)})" if kept else ""
        lines.append(f"private mounts: {', '.join(hidden)} hidden{shown}")
        lines.append(next((note for note in notes if note.startswith(READ_ONLY)), READ_ONLY))
    else:
        tried = any(refused.split(":")[0] in NS_MODES for refused in choice.refused)
        why = "no namespaces on this machine" if tried else "namespaces turned off (namespaces=False)"
        lines.append(f"network not isolated: {why}")
        lines.append(f"files not isolated: {why}; {_files_without_namespaces(mode)}")
        lines.append(_tree_without_namespaces(mode))
    lines.append(_rlimits(mode, limits))
    lines += [f"could not use {refused}" for refused in choice.refused]
    return (*lines, *(note for note in notes if not note.startswith(READ_ONLY)))


def _user(choice: Choice, uid: int | None) -> str:
    if choice.mode == "user-ns":
        inside = f"uid {NESTED_UID} in a user namespace of its own (uid {os.getuid()} outside)"
        return f"unprivileged user: {inside}, no capabilities"
    if choice.own_uid:
        which = f"uid {uid}" if uid is not None else "a uid"
        return f"unprivileged user: {which} of its own for each run (no account has it)"
    if os.geteuid() == 0:
        return "runs as root: no other uid could run this interpreter"
    return f"runs as your user (uid {os.getuid()}): it can reach what you can, your other processes included"


def _files_without_namespaces(mode: str) -> str:
    if mode == "root-plain":
        return "it can read and write what any user may, /tmp included"
    if os.geteuid() == 0:
        return "it runs as root and can read and write anything"
    return "it can read and write what you can"


def _tree_without_namespaces(mode: str) -> str:
    text = "process tree: every process it started, new sessions included, killed by its launcher (a subreaper)"
    return f"{text}, then every process of its uid" if mode == "root-plain" else text


def _rlimits(mode: str, limits: Limits) -> str:
    text = (
        f"rlimits: CPU {limits.cpu_s} s, address space {limits.memory_mb} MB, files {limits.disk_mb} MB, no core dumps"
    )
    if mode == "plain" and os.geteuid() == 0:
        return f"{text}; process limit not enforced (RLIMIT_NPROC does not bind root)"
    if mode == "plain":
        return f"{text}, {limits.processes} processes more than your user already has"
    return f"{text}, {limits.processes} processes"
