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

from moa._call import Budget, CallCache, output_tokens, plan_layer, pricing_of
from moa._call.cost import CHARS_PER_TOKEN
from moa._engine import Engine, run, run_worst_case
from moa._errors import ConfigError
from moa._limits import Limiter
from moa._overrides import merge
from moa._prompt import is_blank, normalize_prompt
from moa._provider import Provider
from moa.eval._control import control_summary
from moa.eval._runner import ITEM_BUDGET, RUNNER, Record, RunStats, run_items
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
    """How items are answered: one recipe, shared limits, call overrides, optional cached traces.

    Public for library users: ``await ctx.answer(prompt)`` is one run of the
    recipe under the eval's limits and budget.
    """

    recipe: Recipe
    overrides: CallParams | None = None
    provider: Provider | None = None
    limiter: Limiter | None = None
    reuse: Mapping[str, list[LayerResult]] = field(default_factory=dict)
    budget: Budget | None = None  # shared by every call of every item (and the judge's)
    cache: CallCache | None = None  # answers of earlier calls (``moa.CallCache``), shared by every item
    #: Where runs are made: None, here; a ``moa.distributed.RayRunner``, on Ray workers (default: ``RUNNER``'s).
    runner: Any = None

    def __post_init__(self) -> None:
        self.limiter = self.limiter or Limiter(self.recipe.limits)
        self.runner = self.runner or RUNNER.get()
        if self.provider is None:
            from moa._litellm import LiteLLMProvider

            self.provider = LiteLLMProvider()

    def _engine(self, settings: CallParams | None = None) -> Engine:
        assert self.provider is not None and self.limiter is not None
        return Engine(
            recipe=self.recipe,
            provider=self.provider,
            limiter=self.limiter,
            overrides=merge(self.overrides, settings),
            budget=self.budget,
        )

    def preflight(self) -> None:
        """Raise the ``ConfigError`` every item would hit (missing key or extra, unpriced model) before any call."""
        self._engine().preflight(start=1 if self.reuse else 0)

    def worst_case(self, conversation: Any, key: str = "", settings: CallParams | None = None) -> float | None:
        """The most one run for this prompt can cost (the rule of ``moa._call.cost``); None when unpriced."""
        return self._engine(settings).worst_case(normalize_prompt(conversation), self.reuse.get(key, ()))

    def unpriced_models(self) -> list[str]:
        """The recipe's models without a known price."""
        pricing = pricing_of(self.provider)
        if pricing is None:
            return self.recipe.models
        _, unpriced = run_worst_case(pricing, self.recipe, [{"role": "user", "content": "?"}], self.overrides)
        return unpriced

    def answer_chars_max(self) -> int:
        """The longest final answer, in characters as ``moa._call.cost`` counts them (MT-Bench's turn 2 quotes it)."""
        pricing = pricing_of(self.provider)
        if pricing is None:
            return 0
        spec = plan_layer(self.recipe, len(self.recipe.layers) - 1, self.overrides)[0]
        return output_tokens(pricing, spec.model, spec.params) * CHARS_PER_TOKEN

    async def answer(
        self, prompt: Any, key: str = "", settings: CallParams | None = None, budget: Budget | None = None
    ) -> MoAResult:
        """One run of the recipe; ``settings`` (e.g. MT-Bench's temperature) beat the context's overrides.

        ``budget`` (else the item's, else the context's) pays for it; with a ``runner`` the run is made there."""
        budget = budget or ITEM_BUDGET.get() or self.budget
        merged = merge(self.overrides, settings)
        if self.runner is not None:
            worst = self.worst_case(prompt, key, settings) if budget is not None else None
            result: MoAResult = await self.runner.run(prompt, self.recipe, reuse=self.reuse.get(key, ()),
                                                      budget=budget, settings=merged, worst_case_usd=worst)  # fmt: skip
            return result
        return await run(prompt, self.recipe, provider=self.provider, limiter=self.limiter,
                         reuse=self.reuse.get(key, ()), budget=budget, settings=merged, cache=self.cache)  # fmt: skip


async def run_in_order(
    ctx: EvalContext,
    label: str,
    items: Sequence[tuple[str, Any]],
    work: Callable[[Any], Awaitable[Record]],
    checkpoint: Path,
    *,
    run: str | None = None,
    worst_case: Callable[[Any], float | None] | None = None,
    concurrency: int = 8,
    show_progress: bool | None = None,
) -> tuple[list[Record], RunStats]:
    """``run_items`` under the context's budget; the finished records come back in input order.

    ``run`` is the run identity's digest, stamped on every record (``moa.eval._identity``).
    """
    records, stats = await run_items(
        label, items, work, Checkpoint(checkpoint, run=run), concurrency=concurrency, budget=ctx.budget,
        worst_case=worst_case, show_progress=show_progress,
    )  # fmt: skip
    return [records[key] for key, _ in items if key in records], stats


def trace_record(results: Sequence[MoAResult]) -> dict[str, Any]:
    """Totals and full traces of the runs that answered one item (MT-Bench: two turns)."""
    # What the answer costs in use (a cached call at its price when made); what this run paid is apart.
    prices = [c.price_usd for r in results for c in r.calls if c.ok or c.price_usd]
    paid = [r.cost_usd for r in results]
    return {
        "tokens": sum(r.usage.total_tokens for r in results),
        "cost_usd": None if any(c is None for c in prices) else sum(c or 0.0 for c in prices),
        "paid_usd": None if any(c is None for c in paid) else sum(c or 0.0 for c in paid),
        "calls": sum(r.model_calls for r in results),  # every step of a tool loop is a call
        "failed_calls": sum(sum(not c.ok for c in r.calls) for r in results),
        "latency_s": sum(r.latency_s for r in results),
        "traces": [r.model_dump(mode="json") for r in results],
    }


def load_reuse(directory: Path, layers: int = 1) -> tuple[dict[str, list[LayerResult]], str]:
    """The first ``layers`` layers of an earlier run's finished items (for re-aggregation), and that run's identity.

    Only layers whose calls all succeeded are kept: a failed proposer would be
    called again by the new run.
    """
    path = directory / ITEMS_FILE
    if not path.exists():
        raise DataError(f"--reaggregate-from {directory}: {path} does not exist: nothing to re-aggregate from")
    reuse: dict[str, list[LayerResult]] = {}
    for key, record in Checkpoint(path).load().items():
        for turn, trace in enumerate(record.get("traces", [])):
            cached = [LayerResult.model_validate(layer) for layer in trace["layers"][:layers]]
            if len(cached) == layers and all(layer.succeeded for layer in cached):
                reuse[key if turn == 0 else f"{key}#turn{turn + 1}"] = cached
    digest = ((_read_summary(directory).get("identity") or {}).get("generation") or {}).get("digest", "unknown")
    return reuse, f"{directory.name} #{digest}"


def check_reuse(reuse: Mapping[str, list[LayerResult]], directory: Path, keys: Sequence[str]) -> None:
    """Every run still to make (``keys``) must find its reused layers: else its proposers would be called again."""
    missing = [key for key in keys if key not in reuse]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(
            f"--reaggregate-from {directory}: {len(missing)} of the {len(keys)} runs still to make have no "
            f"finished trace there ({shown}), so their proposers would be called again; finish that run first, "
            "or pass a --limit it covers"
        )


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
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = kind.__name__ if kind is not list else "list"
        raise DataError(f"{where}: field `{field_name}` must be a {expected}, got {type(value).__name__}")
    return value


def require_text(value: Any, where: str) -> str:
    """A prompt given in a data file: a string that shows something and is valid text, else a ``DataError``."""
    if not isinstance(value, str):
        raise DataError(f"{where} must be a string, got {type(value).__name__}")
    if is_blank(value):
        raise DataError(f"{where} is empty: a prompt needs some text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{where} holds half a character (a lone surrogate): is the file's encoding right?") from None
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
    cache: CallCache | None = None,
) -> dict[str, Any]:
    """``summary.json``: what the report reads (score, cost, latency and calls per item), and what went wrong.

    Costs are totals only when every item's cost is known; otherwise they are
    None and ``cost_priced_usd`` holds the part that is known.
    """
    n = len(records)
    costs = [r.get("cost_usd") for r in records]
    known = [c for c in costs if c is not None]
    every_cost_known = len(known) == n
    previous = _read_summary(out)
    summary = {
        **previous,
        "benchmark": benchmark,
        "recipe": recipe.name,
        "recipe_calls_per_query": recipe.calls_per_query,
        "items": stats.total,
        "finished": n,
        "failed": stats.failed,
        "not_started": stats.not_started,
        "unsaved": stats.unsaved,
        "complete": n == stats.total,
        "stopped": stats.stopped,
        "failures": [{"key": key, "error": error} for key, error in stats.errors[:100]],
        "cost_usd": sum(known) if every_cost_known else None,
        "cost_priced_usd": sum(known),
        "cost_unpriced_items": n - len(known),
        "cost_per_item_usd": (sum(known) / n) if n and every_cost_known else None,
        # What this run paid: less than cost_usd when answers came from the call cache (or before the cache).
        "paid_usd": _paid(records),
        "latency_per_item_s": (sum(r.get("latency_s", 0.0) for r in records) / n) if n else None,
        "calls_per_item": (sum(r.get("calls", 0) for r in records) / n) if n else None,
        "tokens": sum(int(r.get("tokens", 0)) for r in records),
        "generation_wall_s": stats.wall_s,
        "control": control_summary(records),
        "cache": cache.summary() if cache is not None else None,  # this process's hits and misses
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        **extra,
    }
    write_json(out / SUMMARY_FILE, summary)
    return summary


def _paid(records: Sequence[Mapping[str, Any]]) -> float | None:
    paid = [r.get("paid_usd", r.get("cost_usd")) for r in records]  # (records from before the cache: all paid)
    return None if any(p is None for p in paid) else sum(paid)


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
