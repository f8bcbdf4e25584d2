"""Per-provider limits: one concurrency cap and one request pacer per provider.

Limits are objects shared by every layer of a run, and by every run given the
same ``Limiter`` (the eval harness runs many items through one).  A call takes
a concurrency slot first and then a pacing token, so at most
``max_concurrency`` callers ever wait on the pacer.  Each attempt of a retried
call acquires both again; backoff sleeps hold neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from asyncio_throttle import Throttler

from moa._provider import provider_of
from moa.recipe import ProviderLimit

DEFAULT_KEY = "default"


class ProviderGate:
    """The limits of one provider."""

    def __init__(self, limit: ProviderLimit) -> None:
        self.limit = limit
        self._slots = asyncio.Semaphore(limit.max_concurrency) if limit.max_concurrency else None
        self._pacer = _pacer(limit.rpm) if limit.rpm else None
        self.in_flight = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots is not None:
            await self._slots.acquire()
        try:
            if self._pacer is not None:
                await self._pacer.acquire()
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1
        finally:
            if self._slots is not None:
                self._slots.release()


def _pacer(rpm: float) -> Throttler:
    # Spread the allowance over the minute instead of allowing a burst of `rpm` at once.
    per_second = max(1, int(rpm // 60))
    return Throttler(rate_limit=per_second, period=per_second * 60.0 / rpm)


class Limiter:
    """The gates of every provider, created on first use from ``limits``."""

    def __init__(self, limits: Mapping[str, ProviderLimit] | None = None) -> None:
        self.limits = dict(limits or {})
        self._gates: dict[str, ProviderGate] = {}

    def gate(self, model: str) -> ProviderGate:
        provider = provider_of(model)
        gate = self._gates.get(provider)
        if gate is None:
            limit = self.limits.get(provider) or self.limits.get(DEFAULT_KEY) or ProviderLimit()
            gate = self._gates[provider] = ProviderGate(limit)
        return gate
