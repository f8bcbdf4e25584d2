"""Limits without a concurrency cap.

Written against the mutants of ``moa/_limits.py`` that survived the rest of the suite
(``benchmarks/mutation_score.py``).
"""

from __future__ import annotations

import asyncio

import pytest
from virtual_clock import run_virtual

from moa import Limiter, ProviderLimit


def test_no_concurrency_cap_lets_every_call_in_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Limiter({"p": ProviderLimit(max_concurrency=None)}).gate("p/m")

    async def main() -> int:
        release = asyncio.Event()
        entered = 0

        async def one() -> None:
            nonlocal entered
            async with gate.slot():
                entered += 1
                await release.wait()

        tasks = [asyncio.create_task(one()) for _ in range(100)]
        await asyncio.sleep(1)  # virtual time: every task that can enter has entered
        in_flight = gate.in_flight
        release.set()
        await asyncio.gather(*tasks)
        assert entered == 100 and gate.in_flight == 0
        return in_flight

    assert run_virtual(main(), monkeypatch) == 100
