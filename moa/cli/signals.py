"""Run a command's async work so that SIGTERM stops it as cleanly as Ctrl-C.

``asyncio.run`` turns Ctrl-C into ``KeyboardInterrupt`` after cancelling the
work; SIGTERM (``kill``, a container stopping, a CI timeout) would otherwise
end the process at once: finished calls unlogged, a run left "running".  Here
SIGTERM cancels the work the same way, and ``Terminated`` is raised once every
task has unwound, so the command can record what finished and exit 143.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(Exception):
    """SIGTERM arrived; the work was cancelled and has unwound."""


def run(work: Callable[[], Awaitable[T]]) -> T:
    """``asyncio.run(work())``, with SIGTERM cancelling it (then ``Terminated`` is raised)."""
    terminated = False

    async def main() -> T:
        nonlocal terminated
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_sigterm() -> None:
            nonlocal terminated
            terminated = True
            if task is not None:
                task.cancel()

        # Not the main thread, or no signals on this platform: SIGTERM keeps its default.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        try:
            return await work()
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if terminated:
            raise Terminated("terminated (SIGTERM)") from None
        raise
