"""Run many items concurrently, durably and within a budget, with a progress bar.

Every item is one async job returning a JSON-able record.  Finished records
are appended to a ``Checkpoint`` as they complete, so a re-run (after a crash,
Ctrl-C, SIGTERM or ``kill -9``) skips them and never pays for them twice.

- **Budget**: an item first reserves its whole worst case (every call of every
  run it makes) as a child of the shared ``Budget``; when that does not fit,
  it waits for items in flight to settle their real costs, and when nothing is
  in flight and it still does not fit, no further item starts.  Items never
  race each other for the last dollars with half their calls made.
- **Failures**: an item whose work raises is counted and reported with its
  whole cause; a ``ConfigError`` (a missing key, a bad template) is the user's
  mistake, not the item's, and stops the whole run at once.
- **Disk**: when a record cannot be written (disk full, file too large), no
  further item starts; the items that finished but could not be saved are
  counted (they are asked again on the next run).

Items run under one global concurrency limit, and their calls share one
``Limiter`` for the recipe's per-provider limits.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moa._call import Budget
from moa._errors import ConfigError
from moa._fanout import settle
from moa._secrets import redact
from moa.eval._store import Checkpoint

Record = dict[str, Any]
#: The budget of the item the current task works on (a child of the run's budget).
ITEM_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("moa_item_budget", default=None)
#: Where every ``EvalContext`` made while it is set runs its recipe (``moa.distributed.RayRunner``; None: here).
RUNNER: contextvars.ContextVar[Any] = contextvars.ContextVar("moa_runner", default=None)


@dataclass
class RunStats:
    """What a pass over the items did."""

    total: int = 0
    skipped_done: int = 0
    finished: int = 0
    failed: int = 0
    not_started: int = 0
    unsaved: int = 0  # finished (and paid for) but their record could not be written
    tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0  # finished items whose cost is unknown
    errors: list[tuple[str, str]] = field(default_factory=list)  # (item key, whole cause)
    stopped: str | None = None  # why items stopped being started, when they did
    wall_s: float = 0.0

    @property
    def complete(self) -> bool:
        return self.skipped_done + self.finished == self.total


async def run_items(
    label: str,
    items: Sequence[tuple[str, Any]],
    work: Callable[[Any], Awaitable[Record]],
    checkpoint: Checkpoint,
    *,
    concurrency: int = 8,
    budget: Budget | None = None,
    worst_case: Callable[[Any], float | None] | None = None,
    show_progress: bool | None = None,
) -> tuple[dict[str, Record], RunStats]:
    """Run ``work`` on every (key, item) not yet in the checkpoint; return all records by key."""
    if concurrency < 1:
        raise ConfigError(f"concurrency must be 1 or more, got {concurrency}")
    done = checkpoint.load()
    pending = [(key, item) for key, item in items if key not in done]
    stats = RunStats(total=len(items), skipped_done=len(items) - len(pending))
    gate = asyncio.Semaphore(concurrency)
    settled = asyncio.Condition()  # notified whenever an item in flight ends: its budget may free room
    in_flight = 0
    progress = _Progress(label, len(items), stats, show_progress)
    progress.advance(stats.skipped_done)
    started = time.perf_counter()

    async def reserve(item: Any) -> Budget | None:
        """The item's child budget, once its worst case fits; None (and ``stats.stopped``) when it never will."""
        assert budget is not None
        worst = worst_case(item) if worst_case is not None else None
        async with settled:
            while not budget.fits(worst):
                if in_flight == 0:
                    stats.stopped = stats.stopped or (
                        f"--max-cost ${budget.max_cost_usd:g} reached: an item's worst case (${worst or 0:.4f}, "
                        f"every call at its max_tokens) does not fit the ${max(0.0, budget.remaining_usd):.4f} left"
                    )
                    return None
                await settled.wait()
            return budget.child(worst)

    async def one(key: str, item: Any) -> None:
        nonlocal in_flight
        async with gate:
            if stats.stopped:
                stats.not_started += 1
                return
            item_budget = await reserve(item) if budget is not None else None
            if budget is not None and item_budget is None:
                stats.not_started += 1
                return
            in_flight += 1
            ITEM_BUDGET.set(item_budget)
            try:
                record = await work(item)
            except ConfigError:
                raise  # the user's mistake, the same for every item: stop everything
            except Exception as exc:
                stats.failed += 1
                stats.errors.append((key, redact(f"{type(exc).__name__}: {exc}")))
                progress.advance(0)
                return
            finally:
                in_flight -= 1
                if item_budget is not None:
                    item_budget.close()
                async with settled:
                    settled.notify_all()
            record["key"] = key
            try:
                checkpoint.append(record)
            except (OSError, ValueError) as exc:  # a full disk, or a record that cannot be encoded
                stats.unsaved += 1
                stats.stopped = stats.stopped or f"{checkpoint.path} cannot be written ({exc})"
                return
            done[key] = record
            stats.finished += 1
            stats.tokens += int(record.get("tokens", 0))
            if record.get("cost_usd") is None:
                stats.unpriced += 1
            else:
                stats.cost_usd += record["cost_usd"]
            progress.advance(1)

    with progress:
        outcomes = await settle(
            [_bind(one, key, item) for key, item in pending],
            min_success=0,
            fatal=lambda exc: isinstance(exc, ConfigError),
        )
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome  # a ConfigError stops the run; anything else is a bug, never dropped silently
    stats.wall_s = time.perf_counter() - started
    return done, stats


def _bind(fn: Callable[[str, Any], Awaitable[None]], key: str, item: Any) -> Callable[[], Awaitable[None]]:
    return lambda: fn(key, item)


class _Progress:
    """A rich progress bar on stderr (items, failures, tokens, cost, ETA); silent when not a terminal."""

    def __init__(self, label: str, total: int, stats: RunStats, show: bool | None) -> None:
        self.stats = stats
        self.enabled = sys.stderr.isatty() if show is None else show
        self._progress: Any = None
        if self.enabled:
            from rich.console import Console
            from rich.markup import escape
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[extra]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._progress.add_task(escape(label), total=total, extra="")  # a recipe name: not markup

    def advance(self, n: int) -> None:
        if self._progress is None:
            return
        cost = f"${self.stats.cost_usd:.4f}" + (" +unpriced" if self.stats.unpriced else "")
        extra = f"failed {self.stats.failed}  tokens {self.stats.tokens}  cost {cost}"
        self._progress.update(self._task, advance=n, extra=extra)

    def __enter__(self) -> _Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
