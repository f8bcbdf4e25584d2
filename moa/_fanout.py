"""The one fan-out helper.  Nothing else in moa calls ``asyncio.gather``.

Semantics of ``settle(factories, min_success=k)``:

- every factory is started at once, as a child task of a ``TaskGroup``;
- an ``Exception`` raised by a child is captured as that child's outcome
  (settle), it does not cancel the siblings;
- as soon as so many children have failed that ``k`` successes are no longer
  possible, the children still running are cancelled (their outcome is
  ``Abandoned``): money is not spent on a layer that has already failed.
  Failures for which ``abandons(exc)`` is false (a call the budget refused to
  start) count against the quorum but cancel nothing: in-flight calls finish;
- with ``k`` unset, all must succeed: the first failure abandons the rest;
- a failure for which ``fatal(exc)`` is true (the caller's own callback raised)
  cancels every other child at once, whatever the quorum;
- with ``straggler_s`` set, once ``k`` children have succeeded the others get
  that many more seconds, then are cancelled (``Abandoned``, a straggler);
- if the caller is cancelled, every child is cancelled and awaited before the
  ``CancelledError`` propagates (no task outlives the call);
- outcomes come back in the order of the factories.

Deciding what a shortfall means (raising ``QuorumError``) is the caller's job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


class Abandoned(Exception):
    """Outcome of a child cancelled because its result was no longer needed."""


def _always(exc: Exception) -> bool:
    return True


def _never(exc: Exception) -> bool:
    return False


async def settle(
    factories: Sequence[Callable[[], Awaitable[T]]],
    *,
    min_success: int | None = None,
    straggler_s: float | None = None,
    abandons: Callable[[Exception], bool] = _always,
    fatal: Callable[[Exception], bool] = _never,
) -> list[T | Exception]:
    """Run all factories concurrently; return each one's result or exception, in order."""
    total = len(factories)
    need = total if min_success is None else min_success
    outcomes: list[T | Exception] = [Abandoned("not started")] * total
    tasks: list[asyncio.Task[None]] = []
    failures = successes = 0
    reason: str | None = None  # why we cancelled our own children, once we have
    timer: asyncio.TimerHandle | None = None

    def cancel_rest(why: str) -> None:
        nonlocal reason
        reason = reason or why
        current = asyncio.current_task()
        for task in tasks:
            if task is not current and not task.done():
                task.cancel()

    async def child(index: int, factory: Callable[[], Awaitable[T]]) -> None:
        nonlocal failures, successes, timer
        try:
            outcomes[index] = await factory()
        except asyncio.CancelledError:
            if reason is None:
                raise
            outcomes[index] = Abandoned(f"cancelled: {reason}")
            return
        except Exception as exc:
            outcomes[index] = exc
            failures += 1
            if fatal(exc):
                cancel_rest(f"{type(exc).__name__}: {exc}")
            elif total - failures < need and abandons(exc):
                cancel_rest("the layer could no longer reach its quorum")
            return
        successes += 1
        if straggler_s is not None and successes == need and need < total:
            loop = asyncio.get_running_loop()
            why = f"straggler cut-off: {need} calls had succeeded {straggler_s:g} s before"
            timer = loop.call_later(straggler_s, cancel_rest, why)

    try:
        async with asyncio.TaskGroup() as group:
            for index, factory in enumerate(factories):
                tasks.append(group.create_task(child(index, factory)))
    finally:
        if timer is not None:
            timer.cancel()
    return outcomes
