"""Per-provider limits: grouping by provider, concurrency, request pacing (token pacing: test_tpm.py)."""

from __future__ import annotations

import asyncio

import pytest
from test_tpm import run_virtual, starts

from moa import Limiter, ProviderLimit
from moa._provider import provider_of


def test_provider_grouping() -> None:
    assert provider_of("together_ai/Qwen/Qwen1.5-72B-Chat") == "together_ai"
    assert provider_of("openai/gpt-4o") == "openai"
    assert provider_of("gpt-4o-mini") == "openai"
    assert provider_of("claude-3-5-sonnet") == "anthropic"
    assert provider_of("mystery") == "mystery"


def test_gates_are_shared_per_provider_and_default_applies() -> None:
    limiter = Limiter({"openai": ProviderLimit(max_concurrency=2), "default": ProviderLimit(max_concurrency=5)})
    assert limiter.gate("openai/a") is limiter.gate("gpt-4o")
    assert limiter.gate("openai/a").limit.max_concurrency == 2
    assert limiter.gate("together_ai/x").limit.max_concurrency == 5


def test_rpm_paces_request_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = Limiter({"p": ProviderLimit(rpm=600)})  # 10 per second
    gate = limiter.gate("p/m")
    started = run_virtual(starts(gate, *((str(i), 0) for i in range(15))), monkeypatch)
    # The first 10 start at once, the other 5 once the 1 s period has passed (the pacer polls every 10 ms).
    assert [t for _, t in started[:10]] == [0.0] * 10
    assert all(1.0 < t <= 1.02 for _, t in started[10:])
    assert len({t for _, t in started[10:]}) == 1


def test_rpm_below_60_spreads_requests_over_the_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Limiter({"p": ProviderLimit(rpm=6)}).gate("p/m")  # one every 10 s, no burst
    started = [t for _, t in run_virtual(starts(gate, ("a", 0), ("b", 0), ("c", 0)), monkeypatch)]
    assert started[0] == 0.0 and 10.0 < started[1] <= 10.02 and 10.0 < started[2] - started[1] <= 10.02


def test_max_concurrency_caps_calls_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Limiter({"p": ProviderLimit(max_concurrency=2)}).gate("p/m")

    async def main() -> list[int]:
        release = asyncio.Event()
        seen: list[int] = []

        async def one() -> None:
            async with gate.slot():
                seen.append(gate.in_flight)
                await release.wait()

        tasks = [asyncio.create_task(one()) for _ in range(5)]
        await asyncio.sleep(3600)  # an hour of virtual time, no real time: the others stay queued
        assert gate.in_flight == 2 and len(seen) == 2
        release.set()
        await asyncio.gather(*tasks)
        assert gate.in_flight == 0
        return seen

    assert max(run_virtual(main(), monkeypatch)) == 2
