"""The fan-out helper's documented semantics."""

from __future__ import annotations

import asyncio

import pytest

from moa._fanout import Abandoned, settle


async def value_after(value: int, delay: float) -> int:
    await asyncio.sleep(delay)
    return value


async def fail_after(delay: float) -> int:
    await asyncio.sleep(delay)
    raise ValueError("boom")


async def test_outcomes_keep_factory_order() -> None:
    outcomes = await settle([lambda: value_after(1, 0.03), lambda: value_after(2, 0.0), lambda: value_after(3, 0.01)])
    assert outcomes == [1, 2, 3]


async def test_failures_are_settled_while_the_quorum_holds() -> None:
    outcomes = await settle(
        [lambda: value_after(1, 0.02), lambda: fail_after(0.0), lambda: value_after(3, 0.02)], min_success=2
    )
    assert outcomes[0] == 1 and outcomes[2] == 3
    assert isinstance(outcomes[1], ValueError)


async def test_lost_quorum_abandons_children_still_running() -> None:
    finished: list[int] = []
    never = asyncio.Event()  # only a cancellation can end the slow children

    async def slow(value: int) -> int:
        await never.wait()
        finished.append(value)
        return value

    outcomes = await settle([lambda: fail_after(0.0), lambda: slow(2), lambda: slow(3)], min_success=3)
    assert isinstance(outcomes[0], ValueError)
    assert all(isinstance(o, Abandoned) for o in outcomes[1:]) and finished == []


async def test_cancelling_the_caller_cancels_and_awaits_every_child() -> None:
    cancelled: list[int] = []
    started: list[int] = []
    both_started, never = asyncio.Event(), asyncio.Event()

    async def child(value: int) -> int:
        started.append(value)
        if len(started) == 2:
            both_started.set()
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(value)
            raise
        return value

    task = asyncio.create_task(settle([lambda: child(1), lambda: child(2)]))
    await both_started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(cancelled) == [1, 2]
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
