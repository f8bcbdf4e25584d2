"""Run many items concurrently, durably and within a budget, with a progress bar.

Every item is one async job returning a JSON-able record.  A ``Budget`` (the
same one every call of every item reserves from) stops new items once spent.  Finished records
are appended to a ``Checkpoint`` as they complete, so a re-run (after a crash,
Ctrl-C or ``kill -9``) skips them and never pays for them twice.  Items run
under one global concurrency limit, and their calls share one ``Limiter`` for
the recipe's per-provider limits.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moa._budget import Budget
from moa._fanout import settle
from moa.eval._store import Checkpoint

Record = dict[str, Any]


@dataclass
class RunStats:
    """What a pass over the items did."""

    total: int = 0
    skipped_done: int = 0
    finished: int = 0
    failed: int = 0
    not_started: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0  # finished items whose cost is unknown
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0


async def run_items(
    label: str,
    items: Sequence[tuple[str, Any]],
    work: Callable[[Any], Awaitable[Record]],
    checkpoint: Checkpoint,
    *,
    concurrency: int = 8,
    budget: Budget | None = None,
    show_progress: bool | None = None,
) -> tuple[dict[str, Record], RunStats]:
    """Run ``work`` on every (key, item) not yet in the checkpoint; return all records by key."""
    done = checkpoint.load()
    pending = [(key, item) for key, item in items if key not in done]
    stats = RunStats(total=len(items), skipped_done=len(items) - len(pending))
    gate = asyncio.Semaphore(concurrency)
    progress = _Progress(label, len(items), stats, show_progress)
    progress.advance(stats.skipped_done)
    started = time.perf_counter()

    async def one(key: str, item: Any) -> None:
        async with gate:
            if budget is not None and budget.exhausted:
                stats.not_started += 1
                return
            try:
                record = await work(item)
            except Exception as exc:
                stats.failed += 1
                stats.errors.append(f"{key}: {type(exc).__name__}: {exc}")
                progress.advance(0)
                raise
            record["key"] = key
            checkpoint.append(record)
            done[key] = record
            stats.finished += 1
            stats.tokens += int(record.get("tokens", 0))
            if record.get("cost_usd") is None:
                stats.unpriced += 1
            else:
                stats.cost_usd += record["cost_usd"]
            progress.advance(1)

    with progress:
        await settle([_bind(one, key, item) for key, item in pending], min_success=0)
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
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[extra]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            from rich.markup import escape

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
