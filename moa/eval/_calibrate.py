"""Fit a cascade to the user's data: thresholds (or lambda) from an eval run in which every tier answered.

The run is ``moa eval qa`` of a recipe whose cascade has ``strategy:
always_escalate``: every item holds every tier's answer, its score and what it
cost.  Each tier's answer is scored against the item's reference answers, so
any cascade over the same tiers can be replayed exactly, offline: which tier
would have answered, whether it was right, and what the tiers it walked cost.
The fit searches thresholds (or ``cost_weight``) on a training split for a
target, and reports the result on the training items with a bootstrap
confidence interval, and measured on the held-out items.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, TypeVar

from moa.eval._common import DataError
from moa.eval._scoring import Scoring, is_correct


@dataclass(frozen=True)
class TierAnswer:
    """One tier's answer to one item: its score (None: none), whether it is right, what it cost."""

    score: float | None
    correct: bool
    cost: float
    answered: bool = True  # False: the tier's call (or recipe) failed


@dataclass(frozen=True)
class Item:
    id: str
    tiers: tuple[TierAnswer, ...]


@dataclass(frozen=True)
class Target:
    """What the fit aims for: ``best`` (the best single tier's accuracy at least cost), ``max_cost`` (the most
    accurate under a mean cost per 1,000 queries) or ``max_share`` (the last tier answers at most this share)."""

    kind: str
    value: float | None = None

    @classmethod
    def of(cls, max_cost: float | None, max_share: float | None) -> Target:
        """The target the command line asks for: ``--max-cost``, ``--max-share``, else the best single tier's."""
        if max_cost is not None:
            return cls("max_cost", max_cost)
        return cls("max_share", max_share) if max_share is not None else cls("best")

    def describe(self, names: Sequence[str], unit: str) -> str:
        if self.kind == "best":
            return "the best single tier's accuracy at the least cost"
        if self.kind == "max_cost":
            return f"the best accuracy at a mean cost of at most {self.value:g} {unit}"
        return f"the best accuracy with {names[-1]} answering at most {self.value:g} % of queries"


@dataclass
class Policy:
    """A fitted cascade: thresholds (``threshold``), or qualities, costs and a lambda (``cost_aware``)."""

    strategy: str
    accept: list[float] = field(default_factory=list)  # one per tier but the last
    quality: list[float] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    cost_weight: float = 0.0

    def answer(self, item: Item) -> tuple[int | None, float]:
        """The tier that answers ``item`` (None: no tier gave an answer) and what the tiers run cost."""
        if self.strategy == "threshold":
            spent = 0.0
            for index, tier in enumerate(item.tiers[:-1]):
                spent += tier.cost
                if tier.score is not None and tier.score >= self.accept[index]:
                    return index, spent
            return len(item.tiers) - 1, spent + item.tiers[-1].cost
        return self._cost_aware(item)

    def _cost_aware(self, item: Item) -> tuple[int | None, float]:
        """The cascade stage's rule (``moa._stages.cascade``), replayed on the recorded answers."""
        tried: set[int] = set()
        answered: dict[int, float] = {}
        spent = 0.0
        while len(tried) < len(item.tiers):
            best = max(answered.values(), default=0.0)
            gains = {i: max(0.0, self.quality[i] - best) - self.cost_weight * self.cost[i]
                     for i in range(len(item.tiers)) if i not in tried}  # fmt: skip
            index = max(gains, key=lambda i: (gains[i], -i))
            if answered and gains[index] <= 0:
                break
            tried.add(index)
            spent += item.tiers[index].cost
            if item.tiers[index].answered:
                answered[index] = item.tiers[index].score or 0.0
        if not answered:
            return None, spent
        return max(answered, key=lambda i: (answered[i], i)), spent


@dataclass(frozen=True)
class Outcome:
    accuracy: float
    cost: float  # mean per query
    last_share: float  # the share the last tier answered


def replay(policy: Policy, items: Sequence[Item]) -> Outcome:
    right = spent = last = 0.0
    for item in items:
        index, cost = policy.answer(item)
        right += index is not None and item.tiers[index].correct
        last += index == len(item.tiers) - 1
        spent += cost
    n = max(1, len(items))
    return Outcome(right / n, spent / n, last / n)


def items_of(records: Sequence[Mapping[str, Any]], rows: Mapping[str, Mapping[str, Any]], names: Sequence[str],
             scoring: Scoring, where: str) -> tuple[list[Item], str]:  # fmt: skip
    """Every finished item with each tier's scored answer; and the cost unit (``usd`` when every cost is known)."""
    raw: list[tuple[str, list[tuple[float | None, bool, float | None, int, bool]]]] = []
    for record in records:
        key = str(record.get("id"))
        if key not in rows:
            raise DataError(f"{where}: item {key!r} is not in the question file: calibrate on the data it was run on")
        layer = _cascade_layer(record, where)
        options = [d["option"] for d in layer["decisions"] if d.get("tokens") is not None or d["action"] == "failed"]
        if options != list(names):
            raise DataError(
                f"{where}: item {key!r} ran the tiers {options}, but the recipe's cascade has {list(names)}: calibrate "
                "on a run of the same cascade with `strategy: always_escalate` (every tier runs)"
            )
        by_step = {c.get("step"): c for c in layer.get("considered") or []}
        tiers = []
        for index, decision in enumerate(layer["decisions"][: len(names)]):
            answer = by_step.get(index + 1)
            right = answer is not None and answer.get("finish_reason") != "length" and is_correct(
                answer.get("text") or "", dict(rows[key]), scoring)  # fmt: skip
            score = answer.get("score") if answer is not None else None
            tiers.append((score, bool(right), decision.get("cost_usd"), int(decision.get("tokens") or 0),
                          answer is not None))  # fmt: skip
        raw.append((key, tiers))
    priced = all(usd is not None for _, tiers in raw for _, _, usd, _, _ in tiers)
    unit = "usd" if priced else "tokens"
    items = [Item(key, tuple(TierAnswer(s, r, float(usd if priced and usd is not None else tokens), ok)
                             for s, r, usd, tokens, ok in tiers)) for key, tiers in raw]  # fmt: skip
    return items, unit


def _cascade_layer(record: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    traces = record.get("traces") or []
    layers: list[Mapping[str, Any]] = [
        layer for layer in (traces[-1].get("layers") or [] if traces else []) if layer.get("kind") == "cascade"
    ]
    if len(layers) != 1:
        raise DataError(f"{where}: item {record.get('id')!r} has {len(layers)} cascade layers in its trace; "
                        "calibrate reads runs of a recipe with exactly one")  # fmt: skip
    return layers[0]


T = TypeVar("T")


def split(items: Sequence[T], holdout: float, seed: int,
          key: Callable[[Any], str] = attrgetter("id")) -> tuple[list[T], list[T]]:  # fmt: skip
    """A seeded split, in a seeded order: ``holdout`` of the items held out (at least one on each side when there
    are two); ``key`` gives an item's id (the order does not depend on the input's)."""
    shuffled = sorted(items, key=key)
    random.Random(seed).shuffle(shuffled)
    held = round(len(shuffled) * holdout)
    if holdout > 0 and len(shuffled) >= 2:
        held = min(max(held, 1), len(shuffled) - 1)
    return shuffled[held:], shuffled[:held]


def fit(items: Sequence[Item], strategy: str, target: Target, unit: str = "usd") -> Policy:
    """The policy that best meets ``target`` on ``items`` (``max_cost``: USD per 1,000 queries, or tokens per
    query, as ``unit`` says)."""
    scale = 1000 if unit == "usd" else 1
    candidates = _thresholds(items) if strategy == "threshold" else _cost_aware(items)
    scored = [(policy, replay(policy, items)) for policy in candidates]
    if target.kind == "best":
        tiers = len(items[0].tiers) if items else 0
        bar = max((sum(i.tiers[t].correct for i in items) / max(1, len(items)) for t in range(tiers)), default=0.0)
        feasible = [(p, o) for p, o in scored if o.accuracy >= bar - 1e-12]
        return min(feasible or scored, key=lambda po: (po[1].cost, -po[1].accuracy))[0]
    if target.kind == "max_cost":
        assert target.value is not None
        feasible = [(p, o) for p, o in scored if o.cost * scale <= target.value + 1e-9]
    else:
        assert target.value is not None
        feasible = [(p, o) for p, o in scored if o.last_share * 100 <= target.value + 1e-9]
    if not feasible:
        cheapest = min(o.cost for _, o in scored) * scale
        per = "USD per 1,000 queries" if unit == "usd" else "tokens per query"
        raise DataError(f"no cascade over these tiers meets {target.kind} {target.value:g} on the training items "
                        f"(the cheapest costs {cheapest:g} {per})")  # fmt: skip
    return max(feasible, key=lambda po: (po[1].accuracy, -po[1].cost))[0]


def _thresholds(items: Sequence[Item]) -> list[Policy]:
    """Every combination of meaningful thresholds (each tier's distinct scores, and 'never'), coarsened to at most
    20,000 combinations by quantiles."""
    tiers = len(items[0].tiers) if items else 0
    per_tier: list[list[float]] = []
    for index in range(tiers - 1):
        values = sorted({score for i in items if (score := i.tiers[index].score) is not None})
        per_tier.append([*values, math.inf])
    limit = max(2, int(20_000 ** (1 / max(1, tiers - 1))))
    per_tier = [_coarsen(values, limit) for values in per_tier]
    return [Policy("threshold", accept=list(combo)) for combo in itertools.product(*per_tier)]


def _coarsen(values: list[float], limit: int) -> list[float]:
    if len(values) <= limit:
        return values
    step = (len(values) - 1) / (limit - 1)
    return sorted({values[round(k * step)] for k in range(limit)})


def _cost_aware(items: Sequence[Item]) -> list[Policy]:
    """Each tier's training accuracy and mean cost, with every lambda at which some choice of the rule changes
    (the midpoints between them, 0, and past the last): which tier runs first, and whether a tier is still worth
    running after an answer of a given score."""
    tiers = len(items[0].tiers) if items else 0
    n = max(1, len(items))
    quality = [sum(i.tiers[t].correct for i in items) / n for t in range(tiers)]
    cost = [sum(i.tiers[t].cost for i in items) / n for t in range(tiers)]
    breaks = {(quality[a] - quality[b]) / (cost[a] - cost[b]) for a in range(tiers) for b in range(tiers)
              if cost[a] != cost[b]}  # fmt: skip
    scores = {t.score or 0.0 for i in items for t in i.tiers}
    breaks |= {max(0.0, quality[j] - score) / cost[j] for j in range(tiers) if cost[j] > 0 for score in scores}
    points = sorted(b for b in breaks if b > 0 and math.isfinite(b))
    weights = {0.0, *(a + (b - a) / 2 for a, b in itertools.pairwise(points))}
    if points:
        weights |= {points[0] / 2, points[-1] * 2}
    return [Policy("cost_aware", quality=quality, cost=cost, cost_weight=w) for w in sorted(weights)]


def bootstrap(policy: Policy, items: Sequence[Item], draws: int, seed: int) -> dict[str, tuple[float, float]]:
    """95 % intervals of accuracy and mean cost over resamples of the items."""
    generator = random.Random(seed)
    accuracy, cost = [], []
    for _ in range(draws if items else 0):
        sample = [items[generator.randrange(len(items))] for _ in items]
        found = replay(policy, sample)
        accuracy.append(found.accuracy)
        cost.append(found.cost)
    return {"accuracy": _interval(accuracy), "cost": _interval(cost)}


def _interval(values: list[float]) -> tuple[float, float]:
    if not values:
        return (math.nan, math.nan)
    ordered = sorted(values)
    return ordered[int(0.025 * (len(ordered) - 1))], ordered[math.ceil(0.975 * (len(ordered) - 1))]


def single(items: Sequence[Item], tier: int) -> Outcome:
    """One tier alone on every item (its cost only)."""
    n = max(1, len(items))
    return Outcome(sum(i.tiers[tier].correct for i in items) / n, sum(i.tiers[tier].cost for i in items) / n, 0.0)


def single_beats(policy: Policy, items: Sequence[Item]) -> tuple[int, Outcome] | None:
    """The tier that alone is as accurate as the fitted cascade on ``items`` at less cost (the most accurate such,
    then the cheapest); None when the cascade pays for itself."""
    found = replay(policy, items)
    alone = [(t, single(items, t)) for t in range(len(items[0].tiers) if items else 0)]
    better = [(t, o) for t, o in alone if o.accuracy >= found.accuracy - 1e-12 and o.cost < found.cost - 1e-12]
    return max(better, key=lambda pair: (pair[1].accuracy, -pair[1].cost)) if better else None


def always(items: Sequence[Item]) -> Outcome:
    """Every tier runs, the last answers (always escalate)."""
    n = max(1, len(items))
    spent = sum(sum(t.cost for t in i.tiers) for i in items)
    return Outcome(sum(i.tiers[-1].correct for i in items) / n, spent / n, 1.0)
