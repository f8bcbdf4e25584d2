"""The Ray actors of a distributed run: the workers, the limiter every worker draws from, and the call cache.

- ``Limits`` holds one ``moa.Limiter`` per set of provider limits (a recipe's
  ``limits``) that cannot be divided among the workers, so a provider's
  concurrency, requests and tokens per minute hold across every worker: a call
  takes a *ticket* here before it starts and gives it back when it ends.
  Limits that can be divided are not asked here: each worker holds its share.
  Tickets are kept by owner (a worker), so the slots of a worker that dies are
  given back when the driver says so (``forget``).
- ``Cache`` owns the call cache file (``moa.CallCache``) on the driver's node:
  every worker, on any node, reads and writes the same answers.
- ``Worker`` runs recipes with the async engine (as many runs at once as it is
  sent), its calls under the two actors above.

Only ``moa.distributed.runner`` creates them; importing this module imports Ray.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pickle
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import ray

from moa._call import Budget, CallCache
from moa._errors import RunError
from moa._limits import LOCAL, Limiter, shares
from moa._provider import Completion, provider_of
from moa._secrets import redact
from moa.recipe import ProviderLimit


@ray.remote
class Limits:
    """Provider limits shared by every worker (an async actor: its methods interleave on one event loop)."""

    def __init__(self) -> None:
        self.limiters: dict[str, Limiter] = {}
        self.tickets: dict[int, tuple[str, asyncio.Event, asyncio.Task[None]]] = {}
        self.numbers = itertools.count(1)
        self.in_flight = 0
        self.peak = 0
        self.granted = 0

    async def register(self, key: str, limits: Mapping[str, Mapping[str, Any]]) -> None:
        if key not in self.limiters:
            self.limiters[key] = Limiter({name: ProviderLimit(**limit) for name, limit in limits.items()})

    async def acquire(self, owner: str, key: str, model: str, tokens: int) -> int:
        """Wait until a call to ``model`` may start under the limits ``key``; its ticket."""
        ticket = next(self.numbers)
        held, done = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with self.limiters[key].gate(model).slot(tokens):
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                self.granted += 1
                held.set()
                try:
                    await done.wait()
                finally:
                    self.in_flight -= 1

        task = asyncio.ensure_future(hold())
        self.tickets[ticket] = (owner, done, task)
        waiting = asyncio.ensure_future(held.wait())
        await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if task.done() and not held.is_set():  # the gate failed (an unknown limits key): say so
            self.tickets.pop(ticket, None)
            task.result()
        return ticket

    async def release(self, ticket: int) -> None:
        found = self.tickets.pop(ticket, None)
        if found is not None:
            found[1].set()

    async def forget(self, owner: str) -> int:
        """Give back every ticket ``owner`` holds or waits for (a worker that died); how many."""
        lost = [ticket for ticket, (who, _, _) in self.tickets.items() if who == owner]
        for ticket in lost:
            await self.release(ticket)
        return len(lost)

    async def pid(self) -> int:
        return os.getpid()

    async def stats(self) -> dict[str, int]:
        """Calls in flight now, the most ever in flight at once, tickets granted and tickets outstanding."""
        return {"in_flight": self.in_flight, "peak": self.peak, "granted": self.granted, "tickets": len(self.tickets)}


@ray.remote
class Cache:
    """The run's call cache, opened once on the driver's node (a synchronous actor: one request at a time)."""

    def __init__(self, path: str, refresh: bool) -> None:
        self.cache = CallCache(path, refresh=refresh)
        self.cache.open()

    def get(self, key: str) -> Completion | None:
        return self.cache.get(key)

    def put(self, key: str, model: str, completion: Completion) -> None:
        self.cache.put(key, model, completion)

    def summary(self) -> dict[str, Any]:
        return self.cache.summary()

    def close(self) -> None:
        self.cache.close()


class RemoteLimiter:
    """A worker's view of ``Limits``: ``gate(model).slot(tokens)`` as the call pipeline uses a ``moa.Limiter``.

    Local models are the exception: each worker serves its own (a llama.cpp server per process), so their gates
    are the worker's (``here``), not shared with the other workers."""

    def __init__(self, actor: Any, owner: str, key: str, here: Limiter) -> None:
        self.actor, self.owner, self.key, self.here = actor, owner, key, here

    def gate(self, model: str) -> Any:
        return self.here.gate(model) if provider_of(model) == LOCAL else _RemoteGate(self, model)


class _RemoteGate:
    def __init__(self, limiter: RemoteLimiter, model: str) -> None:
        self.limiter, self.model = limiter, model

    @asynccontextmanager
    async def slot(self, tokens: int = 0) -> AsyncIterator[None]:
        actor = self.limiter.actor
        pending = actor.acquire.remote(self.limiter.owner, self.limiter.key, self.model, tokens)
        try:
            ticket = await pending
        except asyncio.CancelledError:  # the run was cancelled while waiting: give the slot back once granted
            _PENDING.add(task := asyncio.ensure_future(_release_when_granted(actor, pending)))
            task.add_done_callback(_PENDING.discard)
            raise
        try:
            yield
        finally:
            actor.release.remote(ticket)


_PENDING: set[asyncio.Future[None]] = set()  # releases waiting for their ticket (kept from the collector)


async def _release_when_granted(actor: Any, pending: Any) -> None:
    try:
        actor.release.remote(await pending)
    except Exception:  # the limiter is gone too: nothing is held
        return


class RemoteCache:
    """A worker's view of ``Cache``: what the call pipeline asks of a ``moa.CallCache``."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def open(self) -> None:  # opened (and checked) by the driver
        return None

    async def lookup(self, key: str) -> Completion | None:
        found: Completion | None = await self.actor.get.remote(key)
        return found

    async def store(self, key: str, model: str, completion: Completion) -> None:
        await self.actor.put.remote(key, model, completion)  # stored before the run returns: none is lost


@ray.remote
class Worker:
    """Runs recipes with the async engine; many runs at once (an async actor)."""

    def __init__(self, owner: str, environment: Mapping[str, str], limits: Any, cache: Any, share: tuple[int, int]
                 ) -> None:  # fmt: skip
        os.environ.update(environment)  # provider keys and endpoints, given by the driver (never logged)
        from moa._litellm import LiteLLMProvider

        self.owner = owner
        self.share = share  # (this worker's place, the number of workers): its share of divided limits
        self.shared_limiters: dict[str, Limiter] = {}
        self.provider = LiteLLMProvider()
        self.limits = limits
        self.cache = RemoteCache(cache) if cache is not None else None
        self.recipes: dict[str, Any] = {}

    async def pid(self) -> int:
        return os.getpid()

    async def run(
        self,
        prompt: Any,
        recipe_key: str,
        recipe_box: list[Any],
        limits_key: str,
        reuse: Sequence[Any],
        held_usd: float | None,
        allow_unpriced: bool,
        settings: Any,
    ) -> tuple[str, Any, float]:
        """("ok", the MoAResult, USD spent) or ("error", the exception, USD spent)."""
        from moa._engine import run

        recipe = self.recipes.get(recipe_key)
        if recipe is None:
            os.environ.update(await recipe_box[1])  # the keys its agents name (api_key_env)
            recipe = self.recipes[recipe_key] = await recipe_box[0]
        budget = Budget(held_usd, allow_unpriced) if held_usd is not None else None
        if limits_key.startswith(SHARES):  # this worker's share of every limit: no call leaves the process
            limiter: Any = self.shared_limiters.get(limits_key)
            if limiter is None:
                divided = shares(json.loads(limits_key[len(SHARES) :]), *self.share)
                limiter = self.shared_limiters[limits_key] = Limiter(divided)
        else:
            here = self.shared_limiters.get(limits_key)
            if here is None:
                given = {name: ProviderLimit(**limit) for name, limit in json.loads(limits_key).items()}
                here = self.shared_limiters[limits_key] = Limiter(given)
            limiter = RemoteLimiter(self.limits, self.owner, limits_key, here)
        try:
            cache: Any = self.cache  # (a worker's view of the shared cache: all the engine asks of one)
            result = await run(prompt, recipe, provider=self.provider, limiter=limiter,
                               reuse=reuse, budget=budget, settings=settings, cache=cache)  # fmt: skip
        except Exception as exc:
            return "error", portable(exc), budget.spent_usd if budget is not None else 0.0
        return "ok", result, budget.spent_usd if budget is not None else 0.0


#: A limits key that says: every worker takes its share (``shares``) instead of asking the ``Limits`` actor.
SHARES = "shares:"


def portable(exc: Exception) -> Exception | Rebuilt:
    """What of ``exc`` goes back to the driver: the exception itself when it pickles, else its type, arguments and
    attributes (a moa error keeps its type, its text and its ``partial`` run), else a ``RunError`` with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        pass
    else:
        return exc
    rebuilt = Rebuilt(type(exc), exc.args, dict(vars(exc)))
    try:
        pickle.loads(pickle.dumps(rebuilt)).exception()
    except Exception:
        return RunError(redact(f"{type(exc).__name__}: {exc}"))
    return rebuilt


@dataclass(frozen=True)
class Rebuilt:
    """An exception whose class cannot be made again from its arguments (most moa errors take several)."""

    kind: type[Exception]
    args: tuple[Any, ...]
    state: dict[str, Any]

    def exception(self) -> Exception:
        exc = self.kind.__new__(self.kind)
        exc.args = self.args
        vars(exc).update(self.state)
        return exc
