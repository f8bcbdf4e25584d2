"""Evaluate a space's candidates on the user's questions: successive halving under a budget, with a call cache.

Rung sizes grow by ``eta`` (default 3) from ``min_items`` to every search
question.  After each rung the candidates on the accuracy/cost Pareto frontier
and the best ``1/eta`` by accuracy go on (and the best single-call candidate,
the baseline, always does); the others stop.  Every candidate answers through
one shared call cache, so a candidate that shares calls with one already run
(the same proposers under another aggregator) pays only for what differs, and
each answered question is checkpointed: a killed search resumes where it was.

Costs per question count every call at what it costs (a cached call at what it
cost when made): that is what the recipe will cost in use.  What the search
itself paid is counted apart (``spent_usd``, ``paid_calls``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa._call import Budget, CallCache
from moa._secrets import redact
from moa.eval._calibrate import split as split_items
from moa.eval._common import EvalContext, trace_record
from moa.eval._scoring import Scoring, is_correct
from moa.eval._store import Checkpoint

from .space import Candidate


@dataclass(frozen=True)
class Answered:
    """One candidate's answer to one question: its score (1 right / 0 wrong, or a judge's rating from 0 to 1)."""

    score: float
    cost_usd: float | None  # every call at its price (cached ones at what they cost when made); None: unpriced
    tokens: int
    calls: int
    paid_calls: int  # calls this search made (not from the cache)
    latency_s: float

    @property
    def correct(self) -> bool:
        return self.score >= 1.0


#: Grades an answer: (score from 0 to 1, or None when it could not be graded; the calls grading made).
Grader = Callable[[Mapping[str, Any], str, "Limits"], Awaitable[tuple[float | None, list[Any]]]]


@dataclass
class Limits:
    """What the search may spend: USD (strict: each question's worst case is reserved first), paid calls
    (each question's most calls are reserved first), and a wall-clock deadline."""

    budget: Budget | None = None
    max_calls: int | None = None
    deadline: float | None = None  # time.monotonic() value
    paid_calls: int = 0
    spent_usd: float = 0.0  # what the calls this search made cost (priced ones)
    reserved_calls: int = 0
    stopped: str | None = None
    failures: list[str] = field(default_factory=list)  # "candidate, question id: error" (not saved: retried)

    def reserve_calls(self, most: int) -> bool:
        if self.max_calls is None:
            return True
        if self.paid_calls + self.reserved_calls + most > self.max_calls:
            self.stopped = self.stopped or f"--max-calls {self.max_calls} reached"
            return False
        self.reserved_calls += most
        return True

    def settle_calls(self, most: int, paid: int) -> None:
        if self.max_calls is not None:
            self.reserved_calls -= most
        self.paid_calls += paid

    def past_deadline(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped = self.stopped or "--deadline reached"
            return True
        return False


@dataclass
class Progress:
    """What the live view shows: the rung, the candidates, questions done, spend."""

    say: Callable[[str], None] = lambda line: None
    done: int = 0


async def evaluate(candidate: Candidate, rows: Sequence[Mapping[str, Any]], folder: Path, cache: CallCache | None,
                   limits: Limits, scoring: Scoring, concurrency: int = 4, grader: Grader | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Answered]:  # fmt: skip
    """The candidate's answers to ``rows`` (by question id), resumed from its checkpoint in ``folder``; questions
    the limits do not allow are left unanswered.  Each answer is scored against the row (``scoring``), or graded
    by ``grader`` (a judge; its calls count against the limits, not in the candidate's cost).  ``progress(done,
    total)`` is called as questions finish."""
    checkpoint = Checkpoint(folder / "items.jsonl")
    by_id = {str(row["id"]): row for row in rows}
    found = {key: _answered(record, by_id[key], scoring) for key, record in checkpoint.load().items() if key in by_id}
    ctx = EvalContext(recipe=candidate.recipe, budget=limits.budget, cache=cache)
    most = candidate.recipe.calls_per_query + (1 if grader is not None else 0)
    gate = asyncio.Semaphore(concurrency)

    async def one(row: Mapping[str, Any]) -> None:
        key = str(row["id"])
        async with gate:
            if limits.stopped or limits.past_deadline() or not limits.reserve_calls(most):
                return
            reserved: Budget | None = None
            if limits.budget is not None:
                worst = ctx.worst_case(row["prompt"])
                if not limits.budget.fits(worst):
                    limits.stopped = limits.stopped or f"--budget ${limits.budget.max_cost_usd:g} reached"
                    limits.settle_calls(most, 0)
                    return
                reserved = limits.budget.child(worst)
            paid = 0
            try:
                remaining = None if limits.deadline is None else max(0.001, limits.deadline - time.monotonic())
                result = await asyncio.wait_for(_answer(ctx, row, reserved), remaining)
                paid = _paid(result.calls)
                limits.spent_usd += sum(o.cost_usd or 0.0 for o in result.calls if not o.cached)
            except TimeoutError:
                limits.stopped = limits.stopped or "--deadline reached"
                return
            except Exception as exc:  # wrong in this comparison, not saved: the same command asks it again
                partial = getattr(getattr(exc, "partial", None), "calls", None) or []
                paid = _paid(partial)
                limits.failures.append(redact(f"{candidate.label}, question {key}: {type(exc).__name__}: {exc}"))
                found[key] = Answered(0.0, None, 0, paid, paid, 0.0)
                return
            else:
                record = {"id": row["id"], "output": result.output, "key": key, **_costs(result)}
                if grader is not None:
                    record["grade"], judged = await grader(row, result.output, limits)
                    paid += sum(o.model_calls for o in judged if not o.cached)
                    limits.spent_usd += sum(o.cost_usd or 0.0 for o in judged if not o.cached)
            finally:
                limits.settle_calls(most, paid)
                if reserved is not None:
                    reserved.close()
            checkpoint.append(record)
            found[key] = _answered(record, row, scoring)
            if progress is not None:
                progress(len(found), len(rows))

    await asyncio.gather(*(one(row) for row in rows if str(row["id"]) not in found))
    return found


async def _answer(ctx: EvalContext, row: Mapping[str, Any], budget: Budget | None) -> Any:
    return await ctx.answer(row["prompt"], budget=budget)


def _paid(calls: Sequence[Any]) -> int:
    """Model calls made (not from the cache) that were answered or billed: a refused connection costs nothing."""
    return sum(o.model_calls for o in calls if not o.cached and (o.ok or (o.cost_usd or 0.0) > 0))


def _costs(result: Any) -> dict[str, Any]:
    traced = trace_record([result])
    costs = [o.price_usd for o in result.calls if o.ok or o.price_usd]
    return {
        "tokens": traced["tokens"],
        "cost_usd": None if any(c is None for c in costs) else sum(c or 0.0 for c in costs),
        "calls": traced["calls"],
        "paid_calls": _paid(result.calls),
        "latency_s": result.latency_s,
    }


def _answered(record: Mapping[str, Any], row: Mapping[str, Any], scoring: Scoring) -> Answered:
    output = record.get("output")
    if "grade" in record:  # a judge's rating (None: it gave none, counted as 0)
        score = float(record["grade"] or 0.0) if isinstance(output, str) else 0.0
    else:
        score = float(isinstance(output, str) and is_correct(output, dict(row), scoring))
    return Answered(score, record.get("cost_usd"), int(record.get("tokens") or 0), int(record.get("calls") or 0),
                    int(record.get("paid_calls") or 0), float(record.get("latency_s") or 0.0))  # fmt: skip


@dataclass
class Score:
    """A candidate on a set of questions: accuracy, mean cost (USD, else tokens) and latency per question."""

    candidate: Candidate
    answered: dict[str, Answered] = field(default_factory=dict)

    def on(self, keys: Sequence[str]) -> list[Answered]:
        return [self.answered[k] for k in keys if k in self.answered]

    def accuracy(self, keys: Sequence[str]) -> float:
        found = self.on(keys)
        return sum(a.score for a in found) / len(found) if found else 0.0

    def cost(self, keys: Sequence[str], unit: str) -> float:
        found = self.on(keys)
        values = [(a.cost_usd or 0.0) if unit == "usd" else a.tokens for a in found]
        return sum(values) / len(values) if values else 0.0

    def latency(self, keys: Sequence[str]) -> float:
        found = self.on(keys)
        return sum(a.latency_s for a in found) / len(found) if found else 0.0

    def complete(self, keys: Sequence[str]) -> bool:
        return all(k in self.answered for k in keys)


def pareto(scores: Sequence[Score], keys: Sequence[str], unit: str) -> list[Score]:
    """The scores no other beats on both accuracy (higher) and cost (lower), cheapest first."""
    points = sorted(scores, key=lambda s: (s.cost(keys, unit), -s.accuracy(keys)))
    frontier: list[Score] = []
    for score in points:
        if not frontier or score.accuracy(keys) > frontier[-1].accuracy(keys) + 1e-12:
            frontier.append(score)
    return frontier


def rungs(total: int, eta: int, smallest: int) -> list[int]:
    """Question counts of the rungs: ``smallest``, times ``eta`` each rung, ending with every question."""
    sizes = []
    size = min(smallest, total)
    while size < total:
        sizes.append(size)
        size *= eta
    return [*sizes, total]


def split(rows: Sequence[Mapping[str, Any]], holdout: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Search and held-out questions, shuffled by ``seed`` (the order the rungs take them in): the calibration's
    split, by question id."""
    return split_items(list(rows), holdout, seed, key=lambda row: str(row["id"]))


def survivors(scores: Sequence[Score], keys: Sequence[str], unit: str, eta: int, keep: Score | None) -> list[Score]:
    """Who goes on to the next rung: the frontier, the best ``ceil(n / eta)`` by accuracy (then cost), and
    ``keep`` (the baseline)."""
    ranked = sorted(scores, key=lambda s: (-s.accuracy(keys), s.cost(keys, unit)))
    chosen = {id(s) for s in ranked[: math.ceil(len(scores) / eta)]} | {id(s) for s in pareto(scores, keys, unit)}
    if keep is not None:
        chosen.add(id(keep))
    return [s for s in scores if id(s) in chosen]
