"""Token-per-minute limits (``limits.<provider>.tpm``), checked on a virtual clock.

The pacers read the event loop's clock (aiolimiter: ``loop.time()``) or the
monotonic clock (asyncio-throttle: ``time.monotonic()``, patched here to the
loop's).  ``VirtualClockLoop`` never sleeps: when nothing is ready it jumps
its clock to the next timer, so every assertion below is about exact virtual
times and none depends on how loaded the machine is.
"""

from __future__ import annotations

import asyncio
import math
from typing import TypeVar

import pytest
from pydantic import ValidationError
from virtual_clock import run_virtual

import moa
from moa import Limiter, ProviderLimit
from moa._limits import ProviderGate

T = TypeVar("T")


def now() -> float:
    return asyncio.get_running_loop().time()


async def starts(gate: ProviderGate, *calls: tuple[str, int]) -> list[tuple[str, float]]:
    """Queue ``calls`` (name, tokens) in order and return when each got through the gate."""
    started: list[tuple[str, float]] = []

    async def one(name: str, tokens: int) -> None:
        async with gate.slot(tokens):
            started.append((name, now()))

    tasks = []
    for name, tokens in calls:
        tasks.append(asyncio.create_task(one(name, tokens)))
        await asyncio.sleep(0)  # queued in this order
    await asyncio.gather(*tasks)
    return started


def test_the_virtual_clock_jumps_instead_of_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> float:
        await asyncio.sleep(3600)
        return now()

    assert run_virtual(main(), monkeypatch) == 3600.0


def test_the_virtual_clock_refuses_to_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        await asyncio.Event().wait()

    with pytest.raises(RuntimeError, match="deadlock"):
        run_virtual(main(), monkeypatch)


def test_a_burst_up_to_tpm_then_tokens_drip_back_at_tpm_per_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Limiter({"p": ProviderLimit(tpm=60)}).gate("p/m")  # one token a second
    started = run_virtual(starts(gate, ("a", 30), ("b", 30), ("c", 30), ("d", 15)), monkeypatch)
    # a and b fill the minute's allowance at once; c waits for 30 tokens to drip back, d for 15 more.
    assert started == [("a", 0.0), ("b", 0.0), ("c", 30.0), ("d", 45.0)]


def test_a_call_larger_than_tpm_takes_the_whole_allowance_instead_of_waiting_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = Limiter({"p": ProviderLimit(tpm=60)}).gate("p/m")
    assert gate.tokens_charged(10_000) == 60 and gate.tokens_charged(59) == 59 and gate.tokens_charged(0) == 0
    started = run_virtual(starts(gate, ("small", 10), ("huge", 10_000), ("next", 1)), monkeypatch)
    # huge waits until the allowance is full again (10 s), then empties it; next waits a second more.
    assert started == [("small", 0.0), ("huge", 10.0), ("next", 11.0)]


def test_tokens_are_first_come_first_served(monkeypatch: pytest.MonkeyPatch) -> None:
    # aiolimiter alone would let the small call (which fits sooner) overtake the big one.
    gate = Limiter({"p": ProviderLimit(tpm=60)}).gate("p/m")
    started = run_virtual(starts(gate, ("all", 60), ("big", 50), ("small", 5)), monkeypatch)
    assert started == [("all", 0.0), ("big", 50.0), ("small", 55.0)]


def test_a_call_of_zero_tokens_or_without_tpm_is_not_token_paced(monkeypatch: pytest.MonkeyPatch) -> None:
    paced = Limiter({"p": ProviderLimit(tpm=60)}).gate("p/m")
    assert run_virtual(starts(paced, ("all", 60), ("unknown", 0)), monkeypatch) == [("all", 0.0), ("unknown", 0.0)]
    unpaced = Limiter({"p": ProviderLimit()}).gate("p/m")
    assert unpaced.tokens_charged(10**9) == 0
    assert run_virtual(starts(unpaced, ("a", 10**9), ("b", 10**9)), monkeypatch) == [("a", 0.0), ("b", 0.0)]


def test_negative_tokens_are_a_caller_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Limiter({"p": ProviderLimit(tpm=60)}).gate("p/m")

    async def main() -> None:
        async with gate.slot(-1):
            pass

    with pytest.raises(ValueError, match="-1 tokens"):
        run_virtual(main(), monkeypatch)
    assert gate.in_flight == 0


def test_a_cancelled_waiter_takes_no_tokens_and_frees_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Limiter({"p": ProviderLimit(max_concurrency=5, tpm=60)}).gate("p/m")

    async def main() -> list[tuple[str, float]]:
        started: list[tuple[str, float]] = []

        async def one(name: str, tokens: int) -> None:
            async with gate.slot(tokens):
                started.append((name, now()))

        await one("all", 60)
        doomed = asyncio.create_task(one("doomed", 30))
        await asyncio.sleep(5)
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        await one("after", 30)  # as if doomed had never asked: 30 tokens back after 30 s
        assert gate.in_flight == 0 and gate._slots is not None and gate._slots._value == 5
        return started

    assert run_virtual(main(), monkeypatch) == [("all", 0.0), ("after", 30.0)]


def test_tokens_wait_inside_a_concurrency_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    # At most max_concurrency callers ever wait on the pacers; the rest wait for a slot.
    gate = Limiter({"p": ProviderLimit(max_concurrency=2, tpm=60)}).gate("p/m")
    tokens = gate._tokens
    assert tokens is not None
    waiting, most_waiting = 0, 0
    real_acquire = tokens.acquire

    async def counted(amount: float = 1) -> None:
        nonlocal waiting, most_waiting
        waiting += 1
        most_waiting = max(most_waiting, waiting)
        try:
            await real_acquire(amount)
        finally:
            waiting -= 1

    monkeypatch.setattr(tokens, "acquire", counted)
    started = run_virtual(starts(gate, *((str(i), 60) for i in range(5))), monkeypatch)
    assert started == [(str(i), 60.0 * i) for i in range(5)]
    assert most_waiting == 1  # the turn lock lets one at a time reach aiolimiter


def test_tokens_are_waited_for_before_the_request_pacer(monkeypatch: pytest.MonkeyPatch) -> None:
    # rpm=60: one request a second; tpm=6000: 100 tokens a second, a 6000-token burst.
    gate = Limiter({"p": ProviderLimit(rpm=60, tpm=6000)}).gate("p/m")
    started = dict(run_virtual(starts(gate, ("a", 6000), ("b", 1000), ("c", 1)), monkeypatch))
    assert started["a"] == 0.0
    assert started["b"] == pytest.approx(10.0)  # 1000 tokens back after 10 s; a's request is long past
    # c's token is there 0.01 s after b's, but b's request was only just let go: a second apart, as rpm says.
    # (Were the request pacer passed first, it would have recorded b at ~1 s, and let c go at ~10.01 s.)
    # asyncio-throttle polls every 10 ms and needs more than a whole period, so c goes 1.00-1.02 s after b.
    assert 1.0 < started["c"] - started["b"] <= 1.02


def test_tpm_is_validated_and_loads_from_a_recipe() -> None:
    for bad in (0, -5, math.inf, math.nan, "lots"):
        with pytest.raises(ValidationError):
            ProviderLimit(tpm=bad)
    assert ProviderLimit().tpm is None and ProviderLimit(tpm=1.5).tpm == 1.5
    recipe = moa.load_recipe(
        {
            "name": "r",
            "layers": [{"kind": "propose", "agents": [{"model": "openai/m"}]}],
            "limits": {"openai": {"max_concurrency": 4, "rpm": 500, "tpm": 90_000}},
        }
    )
    assert recipe.limits["openai"] == ProviderLimit(max_concurrency=4, rpm=500, tpm=90_000)
    with pytest.raises(moa.RecipeError, match="tpm"):
        moa.load_recipe(
            {"name": "r", "layers": [{"kind": "propose", "agents": [{"model": "m"}]}], "limits": {"x": {"tpm": 0}}}
        )
