"""Fit a ``neighbours`` router to the user's data: labelled examples from an eval run of each route, ``k`` and
``cost_weight`` for a target.

Each route was run alone on the same questions (``moa eval qa``), so every item
has each route's answer (scored against its reference answers) and cost.  The
items' prompts are embedded with the router's embedding model (through moa's
call pipeline: limits, retries, keys), and any router over those examples can
be replayed offline: on the training items each one is routed by its nearest
*other* training items (leave one out), on the held-out items by the training
items, as the fitted recipe will route new prompts.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from moa._stages.neighbours import Vector, decide, similarities
from moa.eval._calibrate import Outcome, Target, _interval
from moa.eval._common import DataError, read_jsonl
from moa.eval._scoring import Scoring, is_correct
from moa.recipe import Agent, Example, Recipe

#: Neighbour counts tried (those below the number of training items).
KS = (1, 3, 5, 7, 10, 15, 20, 30)


@dataclass(frozen=True)
class RouteItem:
    """One question with each route's result on it (in the layer's route order)."""

    id: str
    prompt: str
    correct: tuple[bool, ...]
    cost: tuple[float, ...]

    def example(self, names: Sequence[str], vector: Vector | None = None, model: str | None = None) -> Example:
        return Example(
            prompt=self.prompt,
            scores={n: float(c) for n, c in zip(names, self.correct, strict=True)},
            costs=dict(zip(names, self.cost, strict=True)),
            embedding=list(vector) if vector is not None else None,
            embedded_with=model if vector is not None else None,
        )


@dataclass(frozen=True)
class RouterPolicy:
    k: int
    cost_weight: float


def route_items(runs: Mapping[str, Path], routes: Sequence[tuple[str, Any]], rows: Mapping[str, Mapping[str, Any]],
                scoring: Scoring) -> tuple[list[RouteItem], str, int]:  # fmt: skip
    """The items every route's run finished, in question-file order; the cost unit (``usd`` when every cost is
    known, else ``tokens``); and how many items some run lacked (left out)."""
    found: dict[str, dict[str, Mapping[str, Any]]] = {}
    for name, answerer in routes:
        run = runs[name]
        items_file = run / "items.jsonl"
        if not items_file.is_file():
            raise DataError(f"{run}: no items.jsonl: give the output folder of `moa eval qa` run with the route "
                            f"{name} alone")  # fmt: skip
        records = read_jsonl(items_file)
        for record in records:
            if str(record.get("id")) not in rows:
                raise DataError(f"{items_file}: item {record.get('id')!r} is not in the question file: calibrate on "
                                "the data it was run on")  # fmt: skip
        _same_route(name, answerer, records, items_file)
        found[name] = {str(r["id"]): r for r in records}
    every = set.union(*(set(by_id) for by_id in found.values()))
    common = [key for key in rows if all(key in by_id for by_id in found.values())]
    if not common:
        raise DataError("no question was finished by every route's run: calibrate on runs of the same questions")
    priced = all(found[name][key].get("cost_usd") is not None for name in found for key in common)
    items = []
    for key in common:
        correct, cost = [], []
        for name, _ in routes:
            got = found[name][key]
            answer = got.get("output")
            right = isinstance(answer, str) and not got.get("failed") and is_correct(answer, dict(rows[key]), scoring)
            correct.append(bool(right))
            cost.append(float((got.get("cost_usd") if priced else got.get("tokens")) or 0))
        prompt = rows[key].get("prompt") or found[routes[0][0]][key].get("prompt")
        items.append(RouteItem(key, str(prompt), tuple(correct), tuple(cost)))
    return items, "usd" if priced else "tokens", len(every) - len(common)


def _same_route(name: str, answerer: Any, records: Sequence[Mapping[str, Any]], where: Path) -> None:
    """A route's run was made by that route: its agent's model answered (an agent route), or its recipe ran."""
    traces = [t for r in records for t in r.get("traces") or []]
    if answerer.agent is not None:
        models = {o.get("model") for t in traces for layer in t.get("layers") or [] for o in layer.get("outputs") or []}
        if models and answerer.agent.model not in models:
            raise DataError(f"{where}: the route {name} is {answerer.agent.model}, but this run called "
                            f"{', '.join(sorted(str(m) for m in models))}: give each route's own run")  # fmt: skip
    else:
        ran = {t.get("recipe") for t in traces if t.get("recipe")}
        wanted = answerer._loaded.name if answerer._loaded is not None else None
        if ran and wanted and wanted not in ran:
            raise DataError(f"{where}: the route {name} runs the recipe {wanted!r}, but this run is of "
                            f"{', '.join(sorted(str(r) for r in ran))}: give each route's own run")  # fmt: skip


async def embed_prompts(recipe: Recipe, agent: Agent, texts: Sequence[str], *, batch: int = 64,
                        progress: Callable[[int, int], None] | None = None) -> list[Vector]:  # fmt: skip
    """Each text's embedding by ``agent``, through moa's call pipeline (the recipe's limits, retries and keys)."""
    from moa import _secrets
    from moa._call import Caller, Tracer
    from moa._call.spec import plan_agent
    from moa._errors import CallSite, MissingAPIKeyError, ProviderError
    from moa._limits import Limiter
    from moa._litellm import LiteLLMProvider
    from moa.recipe.routing import EMBEDDING_SETTINGS

    site = CallSite(layer=0, agent=0, sample=0, agent_name=agent.label, model=agent.model)
    spec = plan_agent(recipe, site, agent)
    keys = {}
    if spec.api_key_env:
        keys[spec.api_key_env] = os.environ.get(spec.api_key_env) or ""
        if not keys[spec.api_key_env]:
            raise MissingAPIKeyError(spec.api_key_env, [agent.model])
        _secrets.register(keys[spec.api_key_env])
    caller = Caller(LiteLLMProvider(), Limiter(recipe.limits), Tracer(None), recipe.retry, keys=keys)
    spec = replace(spec, params={**spec.params, **EMBEDDING_SETTINGS})
    vectors: list[Vector] = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        messages: list[dict[str, object]] = [{"role": "user", "content": text} for text in chunk]
        try:
            output = await caller.call(spec, messages, embed=True)
        except Exception as exc:
            cause = getattr(exc, "cause", exc)
            message = f"{type(cause).__name__}: {cause}" if isinstance(cause, ProviderError) else str(exc)
            raise DataError(f"embedding the prompts with {agent.model} failed: {message}") from None
        vectors += output.embeddings
        if progress is not None:
            progress(len(vectors), len(texts))
    if len({len(v) for v in vectors}) > 1:
        raise DataError(f"{agent.model} gave embeddings of different lengths")
    return vectors


def neighbour_lists(
    queries: Sequence[Vector], known: Sequence[Vector], *, leave_out_self: bool
) -> list[list[tuple[float, int]]]:
    """For each query, every known vector by similarity (highest first); itself left out (leave one out)."""
    lists = []
    for i, query in enumerate(queries):
        ranked = similarities(query, known)
        lists.append([(s, j) for s, j in ranked if not (leave_out_self and j == i)])
    return lists


def replay(policy: RouterPolicy, items: Sequence[RouteItem], lists: Sequence[Sequence[tuple[float, int]]],
           examples: Sequence[Example], names: Sequence[str], strong: int) -> Outcome:  # fmt: skip
    """Route each item by its nearest examples: the accuracy, mean cost and share of the ``strong`` route."""
    right = spent = share = 0.0
    for item, ranked in zip(items, lists, strict=True):
        choice = decide(examples, list(names), list(ranked[: policy.k]), policy.cost_weight)
        right += item.correct[choice.index]
        spent += item.cost[choice.index]
        share += choice.index == strong
    n = max(1, len(items))
    return Outcome(right / n, spent / n, share / n)


def fit(items: Sequence[RouteItem], lists: Sequence[Sequence[tuple[float, int]]], examples: Sequence[Example],
        names: Sequence[str], target: Target, unit: str) -> tuple[RouterPolicy, int]:  # fmt: skip
    """The ``k`` and ``cost_weight`` that best meet ``target`` on the training items (leave one out); and the
    index of the strong route (the costliest on average, which ``--max-share`` limits)."""
    n = len(items)
    strong = max(range(len(names)), key=lambda r: (sum(i.cost[r] for i in items), r))
    ks = [k for k in KS if k < max(2, n)] or [1]
    scored = [(p, replay(p, items, lists, examples, names, strong)) for p in _policies(items, ks)]
    scale = 1000 if unit == "usd" else 1
    if target.kind == "best":
        bar = max(sum(i.correct[r] for i in items) / max(1, n) for r in range(len(names)))
        feasible = [(p, o) for p, o in scored if o.accuracy >= bar - 1e-12]
        chosen = min(feasible or scored, key=lambda po: (po[1].cost, -po[1].accuracy, po[0].cost_weight, po[0].k))
        return chosen[0], strong
    assert target.value is not None
    if target.kind == "max_cost":
        feasible = [(p, o) for p, o in scored if o.cost * scale <= target.value + 1e-9]
    else:
        feasible = [(p, o) for p, o in scored if o.last_share * 100 <= target.value + 1e-9]
    if not feasible:
        per = "USD per 1,000 queries" if unit == "usd" else "tokens per query"
        cheapest = min(o.cost for _, o in scored) * scale
        raise DataError(f"no router over these routes meets {target.kind} {target.value:g} on the training items "
                        f"(the cheapest costs {cheapest:g} {per})")  # fmt: skip
    return max(feasible, key=lambda po: (po[1].accuracy, -po[1].cost, -po[0].cost_weight, -po[0].k))[0], strong


def _policies(items: Sequence[RouteItem], ks: Sequence[int]) -> list[RouterPolicy]:
    """Each k with lambda 0 and a grid of lambdas at which trading quality for cost can change a choice: from a
    hundredth to a hundred times the quality per unit of cost that separates the routes on average."""
    routes = len(items[0].cost) if items else 0
    means = [sum(i.cost[r] for i in items) / max(1, len(items)) for r in range(routes)]
    spread = max(means, default=0.0) - min(means, default=0.0)
    weights = [0.0]
    if spread > 0:
        weights += [(10 ** (step / 4)) / spread for step in range(-8, 9)]
    return [RouterPolicy(k, w) for k, w in itertools.product(ks, weights)]


def bootstrap(policy: RouterPolicy, items: Sequence[RouteItem], lists: Sequence[Sequence[tuple[float, int]]],
              examples: Sequence[Example], names: Sequence[str], strong: int, draws: int,
              seed: int) -> dict[str, tuple[float, float]]:  # fmt: skip
    """95 % intervals of accuracy and mean cost over resamples of the items (each routed as in the fit)."""
    routed = [
        (item.correct[c.index], item.cost[c.index])
        for item, ranked in zip(items, lists, strict=True)
        for c in [decide(examples, list(names), list(ranked[: policy.k]), policy.cost_weight)]
    ]
    generator = random.Random(seed)
    accuracy, cost = [], []
    for _ in range(draws if routed else 0):
        sample = [routed[generator.randrange(len(routed))] for _ in routed]
        accuracy.append(sum(r for r, _ in sample) / len(sample))
        cost.append(sum(c for _, c in sample) / len(sample))
    return {"accuracy": _interval(accuracy), "cost": _interval(cost)}


def write_examples(path: Path, examples: Sequence[Example]) -> None:
    """The examples as JSON Lines (written whole, then moved into place)."""
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps(example.model_dump(mode="json", exclude_none=True), ensure_ascii=False) + "\n")
    partial.replace(path)


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / max(1, len(values))
