"""A virtual clock for tests: an event loop whose time moves only when every task waits on a timer.

The pacers read the event loop's clock (aiolimiter, ``asyncio.timeout``,
``asyncio.sleep``) or the monotonic clock (asyncio-throttle, patched here to
the loop's).  ``VirtualClockLoop`` never sleeps: when nothing is ready it jumps
its clock to the next timer, so assertions are about exact virtual times and
none depends on how loaded the machine is.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any, TypeVar

import asyncio_throttle.throttler
import pytest

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Polls for I/O without blocking; instead of waiting ``timeout`` it moves the loop's clock."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self._clock = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready: list[Any] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("deadlock: nothing is ready and no timer is set, the test would hang")
        self._clock.now += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` only moves when every task waits on a timer: then it jumps to it."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def run_virtual(main: Coroutine[Any, Any, T], monkeypatch: pytest.MonkeyPatch) -> T:
    """Run ``main`` to completion on a ``VirtualClockLoop`` (asyncio-throttle's clock included)."""
    loop = VirtualClockLoop()
    monkeypatch.setattr(asyncio_throttle.throttler, "time", SimpleNamespace(monotonic=loop.time))
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
