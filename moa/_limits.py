"""Per-provider limits: a concurrency cap, a request pacer and a token pacer per provider.

Limits are objects shared by every layer of a run, and by every run given the
same ``Limiter`` (the eval harness runs many items through one).  A call takes
a concurrency slot first and then its pacing (its tokens, then its request),
so at most ``max_concurrency`` callers ever wait on the pacers.  Each attempt
of a retried call acquires all of them again; backoff sleeps hold none.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from aiolimiter import AsyncLimiter
from asyncio_throttle import Throttler

from moa._local import local_name
from moa._provider import provider_of
from moa.recipe import ProviderLimit

DEFAULT_KEY = "default"
LOCAL = "local"
#: Each local model's limit unless the recipe sets ``limits.local``: its server answers one request at a time.
LOCAL_LIMIT = ProviderLimit(max_concurrency=1)


class ProviderGate:
    """The limits of one provider."""

    def __init__(self, limit: ProviderLimit) -> None:
        self.limit = limit
        self._slots = asyncio.Semaphore(limit.max_concurrency) if limit.max_concurrency else None
        self._pacer = _pacer(limit.rpm) if limit.rpm else None
        self._tokens = AsyncLimiter(max_rate=limit.tpm, time_period=60) if limit.tpm else None
        # aiolimiter wakes its smallest waiter first, so a big call could wait behind an endless
        # stream of small ones; one waiter at a time, in arrival order, keeps it first come, first served.
        self._token_turn = asyncio.Lock()
        self.in_flight = 0

    def tokens_charged(self, tokens: int) -> float:
        """What a call of ``tokens`` takes from the ``tpm`` allowance: ``tokens``, capped at ``tpm``.

        A call larger than the whole minute's allowance takes all of it (it waits
        until the allowance is full, then starts) instead of waiting forever.
        """
        if tokens < 0:
            raise ValueError(f"a call cannot take {tokens} tokens")
        return float(min(tokens, self.limit.tpm)) if self.limit.tpm else 0.0

    @asynccontextmanager
    async def slot(self, tokens: int = 0) -> AsyncIterator[None]:
        """Hold a place for one call of about ``tokens`` tokens (prompt + most output).

        Waits for a concurrency slot, then for ``tokens`` of the ``tpm`` allowance
        (capped at ``tpm``, see ``tokens_charged``; 0 takes none), then for the
        request pacer.  The token wait, which can be long, comes first, so that the
        request pacer records when the call really starts.  The estimate is charged
        as it is (never corrected by the usage the answer reports), once per attempt.
        """
        amount = self.tokens_charged(tokens)
        if self._slots is not None:
            await self._slots.acquire()
        try:
            if self._tokens is not None and amount > 0:
                async with self._token_turn:
                    await self._tokens.acquire(amount)
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
        self._local_keys: dict[str, str] = {}

    def _local_key(self, model: str) -> str:
        """A local model's gate is its server's: one per file, whatever path or name reaches it."""
        key = self._local_keys.get(model)
        if key is None:
            key = self._local_keys[model] = f"{LOCAL}:{local_name(model)}"
        return key

    def gate(self, model: str) -> ProviderGate:
        provider = provider_of(model)
        # Each local model is served by a llama.cpp server of its own, which answers one request at a time:
        # its own gate, by default one call at a time (``limits.local`` sets every local model's).
        key = self._local_key(model) if provider == LOCAL else provider
        gate = self._gates.get(key)
        if gate is None:
            if provider == LOCAL:
                limit = self.limits.get(LOCAL) or LOCAL_LIMIT
            else:
                limit = self.limits.get(provider) or self.limits.get(DEFAULT_KEY) or ProviderLimit()
            gate = self._gates[key] = ProviderGate(limit)
        return gate


def concurrencies(limits: Mapping[str, ProviderLimit]) -> dict[str, int]:
    """Each provider's ``max_concurrency`` where it has one, the default's too (local models' are not shared)."""
    every = {DEFAULT_KEY: ProviderLimit(), **limits}
    return {name: limit.max_concurrency for name, limit in every.items()
            if name != LOCAL and limit.max_concurrency is not None}  # fmt: skip


def divisible(limits: Mapping[str, ProviderLimit], workers: int) -> bool:
    """Whether every limit leaves each of ``workers`` at least one call at a time (then they can be divided)."""
    return all(most >= workers for most in concurrencies(limits).values())


def shares(limits: Mapping[str, Any], index: int, workers: int) -> dict[str, ProviderLimit]:
    """Worker ``index``'s share of each provider's limits: its part of the concurrency (the parts add up to the
    whole), and ``rpm`` and ``tpm`` divided by ``workers``; together the workers never pass the whole.  Local
    models are each worker's own (their servers are).  ``limits``: ``ProviderLimit`` objects or their fields."""
    given = {name: limit if isinstance(limit, ProviderLimit) else ProviderLimit(**limit)
             for name, limit in limits.items()}  # fmt: skip
    given.setdefault(DEFAULT_KEY, ProviderLimit())  # a provider the recipe does not name: the default's share
    divided = {}
    for name, limit in given.items():
        if name == LOCAL:
            divided[name] = limit
            continue
        most = limit.max_concurrency
        divided[name] = ProviderLimit(
            max_concurrency=None if most is None else most // workers + (1 if index < most % workers else 0),
            rpm=None if limit.rpm is None else limit.rpm / workers,
            tpm=None if limit.tpm is None else limit.tpm / workers,
        )
    return divided


def strictest(sets: Iterable[Mapping[str, ProviderLimit]]) -> tuple[dict[str, ProviderLimit], list[str]]:
    """One limit per provider from several recipes' (``moa serve``): each setting the strictest any recipe sets
    for it (a provider's limits are its account's, whichever recipe calls it; a recipe's ``default`` counts for
    each provider it does not name; a setting no recipe sets keeps its default).  Also returns the providers the
    recipes disagree on."""
    recipes = [dict(limits) for limits in sets]
    names = list(dict.fromkeys(name for limits in recipes for name in limits))
    chosen: dict[str, dict[str, Any]] = {}
    differ: list[str] = []
    for name in names:
        known = chosen.setdefault(name, {})
        for limits in recipes:
            limit = limits.get(name) or (limits.get(DEFAULT_KEY) if name != LOCAL else None)
            for key in sorted(limit.model_fields_set if limit is not None else ()):
                value = getattr(limit, key)
                if key in known and known[key] != value and name not in differ:
                    differ.append(name)
                if value is not None:
                    known[key] = value if known.get(key) is None else min(known[key], value)
                else:
                    known.setdefault(key, None)
    return {name: ProviderLimit(**settings) for name, settings in chosen.items()}, differ
