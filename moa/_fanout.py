"""The one fan-out helper.  Nothing else in moa calls ``asyncio.gather``.

Semantics of ``settle(factories, min_success=k)``:

- every factory is started at once, as a child task of a ``TaskGroup``;
- an ``Exception`` raised by a child is captured as that child's outcome
  (settle), it does not cancel the siblings;
- as soon as so many children have failed that ``k`` successes are no longer
  possible, the children still running are cancelled (their outcome is
  ``Abandoned``): money is not spent on a layer that has already failed;
- with ``k`` unset, all must succeed: the first failure abandons the rest;
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
    """Outcome of a child cancelled because its layer could no longer reach its quorum."""


async def settle(
    factories: Sequence[Callable[[], Awaitable[T]]], *, min_success: int | None = None
) -> list[T | Exception]:
    """Run all factories concurrently; return each one's result or exception, in order."""
    total = len(factories)
    need = total if min_success is None else min_success
    outcomes: list[T | Exception] = [Abandoned("not started")] * total
    tasks: list[asyncio.Task[None]] = []
    failures = 0
    quorum_lost = False

    async def child(index: int, factory: Callable[[], Awaitable[T]]) -> None:
        nonlocal failures, quorum_lost
        try:
            outcomes[index] = await factory()
        except asyncio.CancelledError:
            if not quorum_lost:
                raise
            outcomes[index] = Abandoned("cancelled: the layer could no longer reach its quorum")
        except Exception as exc:
            outcomes[index] = exc
            failures += 1
            if not quorum_lost and total - failures < need:
                quorum_lost = True
                current = asyncio.current_task()
                for task in tasks:
                    if task is not current:
                        task.cancel()

    async with asyncio.TaskGroup() as group:
        for index, factory in enumerate(factories):
            tasks.append(group.create_task(child(index, factory)))
    return outcomes
