"""Per-provider limits: grouping by provider, pacing."""

from __future__ import annotations

import asyncio

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


async def test_rpm_paces_request_starts() -> None:
    limiter = Limiter({"p": ProviderLimit(rpm=600)})  # 10 per second
    gate = limiter.gate("p/m")
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def one() -> None:
        async with gate.slot():
            starts.append(loop.time())

    begin = loop.time()
    await asyncio.gather(*(one() for _ in range(15)))
    # The first 10 start at once, the other 5 only after the 1 s period has passed.
    assert sum(1 for s in starts if s - begin < 0.5) == 10
    assert max(starts) - begin >= 0.95
