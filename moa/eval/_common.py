"""What every benchmark shares: the recipe context, per-item traces, summaries, input checks."""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa._budget import Budget
from moa._engine import run
from moa._errors import ConfigError
from moa._limits import Limiter
from moa._overrides import merge
from moa._provider import Provider
from moa.eval._runner import Record, RunStats, run_items
from moa.eval._store import Checkpoint, write_json
from moa.recipe import CallParams, Recipe
from moa.result import LayerResult, MoAResult

ITEMS_FILE = "items.jsonl"  # generation checkpoint: one record with the full MoA trace per item
JUDGMENTS_FILE = "judgments.jsonl"  # judging checkpoint
SUMMARY_FILE = "summary.json"


class DataError(ConfigError):
    """An input file is missing or not in the expected format (names the file and the item)."""


@dataclass
class EvalContext:
    """How items are answered: one recipe, shared limits, call overrides, optional cached traces."""

    recipe: Recipe
    overrides: CallParams | None = None
    provider: Provider | None = None
    limiter: Limiter | None = None
    reuse: Mapping[str, list[LayerResult]] = field(default_factory=dict)
    budget: Budget | None = None  # shared by every call of every item (and the judge's)

    def __post_init__(self) -> None:
        self.limiter = self.limiter or Limiter(self.recipe.limits)

    async def answer(self, prompt: Any, key: str = "", settings: CallParams | None = None) -> MoAResult:
        """One run of the recipe; ``settings`` (e.g. MT-Bench's temperature) beat the context's overrides."""
        return await run(
            prompt,
            self.recipe,
            provider=self.provider,
            limiter=self.limiter,
            reuse=self.reuse.get(key, ()),
            budget=self.budget,
            settings=merge(self.overrides, settings),
        )


async def run_in_order(
    ctx: EvalContext,
    label: str,
    items: Sequence[tuple[str, Any]],
    work: Callable[[Any], Awaitable[Record]],
    checkpoint: Path,
    *,
    concurrency: int = 8,
    show_progress: bool | None = None,
) -> tuple[list[Record], RunStats]:
    """``run_items`` under the context's budget; the finished records come back in input order."""
    records, stats = await run_items(
        label, items, work, Checkpoint(checkpoint), concurrency=concurrency, budget=ctx.budget,
        show_progress=show_progress,
    )  # fmt: skip
    return [records[key] for key, _ in items if key in records], stats


def trace_record(results: Sequence[MoAResult]) -> dict[str, Any]:
    """Totals and full traces of the runs that answered one item (MT-Bench: two turns)."""
    costs = [r.cost_usd for r in results]
    return {
        "tokens": sum(r.usage.total_tokens for r in results),
        "cost_usd": None if any(c is None for c in costs) else sum(c or 0.0 for c in costs),
        "calls": sum(len(r.calls) for r in results),
        "failed_calls": sum(sum(not c.ok for c in r.calls) for r in results),
        "latency_s": sum(r.latency_s for r in results),
        "traces": [r.model_dump(mode="json") for r in results],
    }


def load_reuse(directory: Path, layers: int = 1) -> dict[str, list[LayerResult]]:
    """The first ``layers`` layers of every finished item of an earlier run (for re-aggregation)."""
    path = directory / ITEMS_FILE
    if not path.exists():
        raise DataError(f"{path} does not exist: nothing to re-aggregate from")
    reuse: dict[str, list[LayerResult]] = {}
    for key, record in Checkpoint(path).load().items():
        for turn, trace in enumerate(record.get("traces", [])):
            cached = [LayerResult.model_validate(layer) for layer in trace["layers"][:layers]]
            reuse[key if turn == 0 else f"{key}#turn{turn + 1}"] = cached
    return reuse


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist") from exc
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object")
        rows.append(row)
    return rows


def require(row: Mapping[str, Any], field_name: str, kind: type, where: str) -> Any:
    value = row.get(field_name)
    if not isinstance(value, kind):
        expected = kind.__name__ if kind is not list else "list"
        raise DataError(f"{where}: field `{field_name}` must be a {expected}, got {type(value).__name__}")
    return value


def short_id() -> str:
    """A 22-character id like FastChat's ``answer_id``."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(22))


def write_summary(
    out: Path,
    benchmark: str,
    recipe: Recipe,
    stats: RunStats,
    records: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """``summary.json``: what the report reads (score, cost, latency and calls per item)."""
    n = len(records)
    costs = [r.get("cost_usd") for r in records]
    known = [c for c in costs if c is not None]
    previous = _read_summary(out)
    summary = {
        **previous,
        "benchmark": benchmark,
        "recipe": recipe.name,
        "recipe_calls_per_query": recipe.calls_per_query,
        "items": stats.total,
        "finished": n,
        "failed": stats.failed,
        "complete": n == stats.total,
        "cost_usd": sum(known) if known else (0.0 if not n else None),
        "cost_unpriced_items": len(costs) - len(known),
        "cost_per_item_usd": (sum(known) / len(known)) if known else None,
        "latency_per_item_s": (sum(r.get("latency_s", 0.0) for r in records) / n) if n else None,
        "calls_per_item": (sum(r.get("calls", 0) for r in records) / n) if n else None,
        "tokens": sum(int(r.get("tokens", 0)) for r in records),
        "generation_wall_s": stats.wall_s,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        **extra,
    }
    write_json(out / SUMMARY_FILE, summary)
    return summary


def _read_summary(out: Path) -> dict[str, Any]:
    path = out / SUMMARY_FILE
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def update_summary(out: Path, **fields: Any) -> dict[str, Any]:
    summary = {**_read_summary(out), **fields}
    write_json(out / SUMMARY_FILE, summary)
    return summary
