"""Running model-written Python: ``sandbox("local").run(code)`` gives an ``Execution``, never an exception.

The local backend (``_local``, with ``_launcher`` in its own process) runs each program so:

- a separate process: this interpreter, ``-I -S -B`` (isolated mode, standard library only; ``exit()``
  still works), started by a small launcher in a new session, so the whole tree can be killed;
- an empty environment: only PATH, HOME, TMPDIR, LANG, LC_ALL, USER, LOGNAME; no key, token or
  secret of moa's is there to read;
- a fresh working directory, deleted afterwards;
- rlimits: CPU seconds, address space, processes, file size, no core dumps; the wall clock and the
  output are watched from the event loop (past ``output_bytes`` of stdout or of stderr, it is killed);
- as root, a uid of the run's own (no account has it), so RLIMIT_NPROC binds and one run's fork
  bomb cannot starve another's;
- where Linux namespaces work (found once, by a probe): no network (a new network namespace, its
  loopback down), its own PID namespace (killing its init kills every process it started), a mount
  namespace in which the homes, /tmp, /var/tmp, /dev/shm are hidden under empty tmpfs, everything is
  read-only, and the working directory is a tmpfs of ``disk_mb``; not root, the same in a user
  namespace, the program in a nested one without capabilities.

Where namespaces (or the uid) cannot be had, the run still happens with what can, and
``Execution.isolation`` says exactly what was missing ("network not isolated: ...").  The container
backend (``_container``, the ``sandbox-container`` extra) hands the program to llm-sandbox.
"""

from __future__ import annotations

from typing import Any

from moa._sandbox._container import ContainerSandbox
from moa._sandbox._local import LocalSandbox
from moa._sandbox._types import Execution, Limits, Sandbox, SandboxUnavailable

__all__ = ["ContainerSandbox", "Execution", "Limits", "LocalSandbox", "Sandbox", "SandboxUnavailable", "sandbox"]

BACKENDS = ("local", "container")


def sandbox(backend: str = "local", **options: Any) -> Sandbox:
    """A sandbox: ``"local"`` (``LocalSandbox(**options)``) or ``"container"`` (``ContainerSandbox(**options)``).

    Raises ``ValueError`` for another name, and ``SandboxUnavailable`` when the container backend's
    library or engine is missing.
    """
    if backend == "local":
        return LocalSandbox(**options)
    if backend == "container":
        return ContainerSandbox(**options)
    raise ValueError(f"unknown sandbox backend {backend!r}: choose one of {', '.join(map(repr, BACKENDS))}")
