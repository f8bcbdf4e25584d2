"""The driver's side of a distributed run: a pool of Ray workers that make the runs an eval or a search asks for.

``moa eval ... --ray`` and ``moa search ... --ray`` set a ``RayRunner`` for every
``EvalContext`` (``moa.eval._runner.RUNNER``); each run is then sent to the least
busy worker and its ``MoAResult`` comes back here, where items are scored,
checkpointed and summarised exactly as in a local run (the same files, resumable
the same way).

- **Limits** hold for all workers together.  When every limit leaves each
  worker at least one call at a time, each worker holds its share (they add
  up to the whole: ``moa._limits.shares``); otherwise every call
  takes its slot from one ``Limits`` actor (a round trip a call).
- **Budget**: the driver holds the whole budget.  A run is sent with its worst
  case reserved here (the item's reservation when an eval holds one); the
  worker spends within it and reports what it spent, which settles it.
- **Faults**: a worker that dies takes its runs in flight with it: what they
  spent is unknown, so their whole reservations count as spent; the worker's
  limiter slots are given back, a new worker takes its place, and the runs are
  made again on the pool (``attempts`` times in all).  Calls those runs had
  finished come back from the call cache.  A driver that dies is resumed from
  its checkpoints by running the same command again.

Ray starts with the first run, not before: a dry run, a mistake found before
any call, or a rerun with every item done never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from moa._call import Budget, CallCache
from moa._call.budget import BudgetRefused
from moa._errors import BudgetExceeded, ConfigError, RunError
from moa.distributed._support import (
    CacheView,
    RayUnavailableError,
    check_reachable,
    forwarded_environment,
    import_ray,
    key_names,
)
from moa.recipe import Recipe
from moa.result import MoAResult

__all__ = ["CacheView", "RayRunner", "RayUnavailableError"]


class RayRunner:
    """A pool of ``workers`` Ray workers (default: one per CPU of the cluster) and the actors they share.

    ``address``: None starts a Ray of this machine's own (stopped by ``close``), whatever ``RAY_ADDRESS`` says;
    else the address of a running cluster to join (``ray start --head`` prints it; ``auto`` finds one on this
    machine).  ``central``: every call through the limiter actor, even when the limits could be divided.
    ``say`` is told, once Ray is up, how many workers run where.  Ray starts with the first run (``start``).
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None, attempts: int = 3,
                 central: bool = False, say: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.ray = import_ray()
        self.address = address
        self.owned = address is None
        self.requested = workers
        #: The pool's size: known before Ray starts unless it is a cluster's CPUs.
        self.size: int | None = workers or (len(os.sched_getaffinity(0)) if address is None else None)
        self.attempts, self.central, self.say = attempts, central, say or (lambda line: None)
        self.started = False
        self.cache_file: CallCache | None = None
        self.cache: Any = None
        self.limits: Any = None
        self.workers: list[tuple[str, Any]] = []
        self.busy: list[int] = []
        self._place = 0
        self.replaced = 0  # workers that died and were replaced
        self.retried = 0  # runs made again after their worker died
        self._recipes: dict[int, tuple[Recipe, str, list[Any]]] = {}
        self._registered: dict[str, Any] = {}

    def start(self) -> None:
        """Start (or join) Ray, the limiter and the cache's actor; idempotent."""
        if self.started:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from moa.distributed.actors import Limits

        ray = self.ray
        if self.address is not None:
            check_reachable(self.address)
        if not ray.is_initialized():
            try:
                ray.init(address="local" if self.address is None else self.address, include_dashboard=False,
                         log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)  # fmt: skip
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RayUnavailableError(f"--ray {self.address}: cannot reach a Ray cluster there: {exc}") from None
        else:
            self.owned = False  # the caller's Ray: not this runner's to stop
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.size = self.requested or max(1, cpus)
        self.busy = [0] * self.size
        self.worker_cpus = min(1.0, max(0.01, cpus / self.size))  # more workers than CPUs: they share them
        self.here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.limits = _remote(Limits).options(num_cpus=0, max_concurrency=100_000, scheduling_strategy=self.here)
        self.limits = self.limits.remote()
        self.started = True
        self._open_cache()
        self.say(self.describe())

    def use_cache(self, cache: CallCache) -> CacheView:
        """Share ``cache``'s file among the workers (an actor on this node owns it); what stands for it here."""
        if self.cache_file is None:
            if self.workers:
                raise ConfigError("--ray: the call cache must be given before the first run")
            self.cache_file = cache
            if self.started:  # (Ray was joined early, to learn the cluster's size)
                self._open_cache()
        elif cache.path.resolve() != self.cache_file.path.resolve():
            raise ConfigError(f"--ray: one call cache per command ({self.cache_file.path}), not also {cache.path}")
        return CacheView(self, str(cache.path))

    def _open_cache(self) -> None:
        """The actor that owns the cache file, on this node; a file that is not a cache is a CacheError first."""
        from moa.distributed.actors import Cache

        if self.cache_file is None or self.cache is not None:
            return
        self.cache_file.open()
        self.cache_file.close()
        path = str(self.cache_file.path.resolve())
        options = {"num_cpus": 0, "scheduling_strategy": self.here}
        self.cache = _remote(Cache).options(**options).remote(path, self.cache_file.refresh)

    def cache_counts(self) -> dict[str, Any]:
        """The shared cache's hits, misses and savings so far (all zero before the work starts)."""
        if self.cache is None:
            return {}
        counts: dict[str, Any] = self.ray.get(self.cache.summary.remote())
        return counts

    def _spawn(self) -> tuple[str, Any]:
        from moa.distributed.actors import Worker

        assert self.size is not None
        owner = f"worker-{uuid.uuid4().hex[:8]}"
        place = len(self.workers) if len(self.workers) < self.size else self._place  # (a replacement: the dead one's)
        options = {"num_cpus": self.worker_cpus, "max_concurrency": 10_000}
        actor = (
            _remote(Worker)
            .options(**options)
            .remote(owner, forwarded_environment(), self.limits, self.cache, (place, self.size))
        )
        return owner, actor

    def _recipe(self, recipe: Recipe) -> tuple[str, list[Any]]:
        known = self._recipes.get(id(recipe))
        if known is None or known[0] is not recipe:
            keys = {name: os.environ[name] for name in key_names(recipe.model_dump()) if name in os.environ}
            box = [self.ray.put(recipe), self.ray.put(keys)]  # boxed: a worker resolves them once
            known = self._recipes[id(recipe)] = (recipe, uuid.uuid4().hex, box)
        return known[1], known[2]

    async def _limits_key(self, recipe: Recipe) -> str:
        """How the workers hold ``recipe.limits``: each its share when every limit can be divided among them (no
        call leaves the worker for it), else through the ``Limits`` actor (a round trip a call)."""
        from moa._limits import divisible
        from moa.distributed.actors import SHARES

        assert self.size is not None
        limits = {name: limit.model_dump() for name, limit in recipe.limits.items()}
        key = json.dumps(limits, sort_keys=True)
        if divisible(recipe.limits, self.size) and not self.central:
            return SHARES + key
        if key not in self._registered:
            self._registered[key] = self.limits.register.remote(key, limits)
        await self._registered[key]
        return key

    async def run(
        self,
        prompt: Any,
        recipe: Recipe,
        *,
        reuse: Sequence[Any] = (),
        budget: Budget | None = None,
        settings: Any = None,
        worst_case_usd: float | None = None,
    ) -> MoAResult:
        """One run of ``recipe`` on a worker: its result, or the error it raised there."""
        from ray.exceptions import RayActorError, WorkerCrashedError

        from moa.distributed.actors import Rebuilt

        self.start()
        assert self.size is not None
        while len(self.workers) < self.size:
            self.workers.append(self._spawn())
        recipe_key, box = self._recipe(recipe)
        limits_key = await self._limits_key(recipe)
        for attempt in range(1, self.attempts + 1):
            held = _reserve(budget, worst_case_usd)
            index = min(range(self.size), key=self.busy.__getitem__)
            owner, actor = self.workers[index]
            self.busy[index] += 1
            pending = actor.run.remote(prompt, recipe_key, box, limits_key, list(reuse), held,
                                       budget.allow_unpriced if budget else False, settings)  # fmt: skip
            try:
                status, payload, spent = await pending
            except (RayActorError, WorkerCrashedError):
                if budget is not None and held is not None:
                    budget.settle(held, held)  # what the lost run spent is unknown: all it could have
                await self._replace(index, owner)
                if attempt < self.attempts:
                    self.retried += 1
                    continue
                raise RunError(f"the run was lost {self.attempts} times with its Ray worker (the worker process "
                               "died each time: out of memory? killed?)") from None  # fmt: skip
            except asyncio.CancelledError:  # (a deadline): the worker's run stops too; what it spent is unknown
                self.ray.cancel(pending)
                if budget is not None and held is not None:
                    budget.settle(held, held)
                raise
            finally:
                self.busy[index] -= 1
            if budget is not None and held is not None:
                budget.settle(held, spent)
            if status == "ok":
                return payload  # type: ignore[no-any-return]
            raise payload.exception() if isinstance(payload, Rebuilt) else payload
        raise AssertionError("unreachable")

    async def _replace(self, index: int, owner: str) -> None:
        """The worker at ``index`` died: give back its limiter slots and start another in its place (once)."""
        if self.workers[index][0] != owner:
            return  # another run on the same worker replaced it already
        self._place = index  # the new worker takes the dead one's share of the limits
        self.workers[index] = self._spawn()
        self.replaced += 1
        await self.limits.forget.remote(owner)

    async def limiter_stats(self) -> dict[str, int]:
        stats: dict[str, int] = await self.limits.stats.remote()
        return stats

    def describe(self) -> str:
        nodes = sum(1 for node in self.ray.nodes() if node.get("Alive"))
        where = "a Ray of this machine" if self.owned else f"the Ray cluster ({nodes} node(s))"
        return f"{self.size} Ray worker(s) on {where}"

    def close(self) -> None:
        """Close the shared cache, stop the workers and the shared actors (and the Ray this runner started)."""
        if not self.started or not self.ray.is_initialized():
            return
        self.started = False
        if self.cache is not None:
            with contextlib.suppress(Exception):  # (a cache actor that died: the file is as its last write left it)
                self.ray.get(self.cache.close.remote(), timeout=30)  # its last writes, and no -wal file left
        if self.owned:
            self.ray.shutdown()
            return
        for actor in [*(actor for _, actor in self.workers), self.limits, self.cache]:
            if actor is not None:
                self.ray.kill(actor)
        self.workers = []


def _remote(actor_class: Any) -> Any:
    """A Ray actor class as it is (``@ray.remote`` turns the class into one; mypy does not see Ray)."""
    return actor_class


def _reserve(budget: Budget | None, worst_case_usd: float | None) -> float | None:
    """Hold the run's worst case in ``budget`` (the worker spends within it); raise as the engine would."""
    if budget is None:
        return None
    try:
        return budget.reserve(worst_case_usd)
    except BudgetRefused as exc:
        raise BudgetExceeded(f"{exc}; raise the budget or lower max_tokens") from None
