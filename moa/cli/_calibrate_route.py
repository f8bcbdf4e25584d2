"""``moa calibrate`` for a ``route`` layer: a nearest-neighbour router fitted on a run of each route."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from moa.cli._common import EXIT_OK


def calibrate_route(args: argparse.Namespace, recipe: Any, index: int, source: Path, scoring: Any) -> int:
    import yaml

    from moa._errors import ConfigError
    from moa.eval import _calibrate as cascade
    from moa.eval import _calibrate_routes as fitting
    from moa.eval._common import DataError
    from moa.eval.qa import read_questions
    from moa.recipe import Agent, NeighboursRouter, RouteLayer

    from ._fitted import absolute_paths, write_recipe

    layer = recipe.layers[index]
    assert isinstance(layer, RouteLayer)
    names = layer.names
    runs = _runs(args.run, names)
    if args.embedding:
        embedding = Agent(model=args.embedding)
        embedding_config: dict[str, Any] = {"model": args.embedding}
    elif isinstance(layer.router, NeighboursRouter):
        embedding = layer.router.embedding
        embedding_config = layer.router.embedding.model_dump(mode="json", exclude_defaults=True)
    else:
        raise ConfigError(f"--embedding MODEL: the route layer's router is `{layer.router.type}`; calibrate fits a "
                          "`neighbours` router, which needs an embedding model")  # fmt: skip
    rows = {str(row["id"]): row for row in read_questions(args.data)}
    routes = list(zip(names, layer.routes, strict=True))
    items, unit, dropped = fitting.route_items(runs, routes, rows, scoring)
    if dropped:
        print(f"{dropped} item(s) not finished by every route's run are left out", file=sys.stderr)
    train, held = cascade.split(items, args.holdout, args.seed)
    if len(train) < 2:
        raise DataError(f"{len(items)} item(s) finished by every route, {len(train)} left to fit on (--holdout "
                        f"{args.holdout:g}): a router needs at least two; run more questions")  # fmt: skip
    print(f"embedding {len(items)} questions with {embedding.model}", file=sys.stderr)
    texts = [item.prompt for item in [*train, *held]]
    vectors = asyncio.run(fitting.embed_prompts(recipe, embedding, texts, progress=_progress))
    known, asked = vectors[: len(train)], vectors[len(train) :]
    examples = [item.example(names, vector, embedding.model) for item, vector in zip(train, known, strict=True)]
    lists = fitting.neighbour_lists(known, known, leave_out_self=True)
    target = cascade.Target.of(args.max_cost, args.max_share)
    policy, strong = fitting.fit(train, lists, examples, names, target, unit)
    examples_file = args.out.with_name(f"{args.out.stem}.examples.jsonl")
    report = _report(fitting, policy, strong, train, held, lists, fitting.neighbour_lists(asked, known,
                     leave_out_self=False), examples, names, unit, target, args, examples_file)  # fmt: skip
    fitting.write_examples(examples_file, examples)
    data = absolute_paths(yaml.safe_load(source.read_text(encoding="utf-8")), source.parent)
    key = "layers" if "layers" in data else "stages"
    config = dict(data[key][index])
    config["routes"] = [{k: v for k, v in route.items() if k not in ("when", "description")}
                        for route in config["routes"]]  # fmt: skip
    config["router"] = {
        "type": "neighbours",
        "embedding": embedding_config,
        "examples": examples_file.name,  # next to the recipe
        "k": policy.k,
        "cost_weight": float(policy.cost_weight),
        "cost_unit": unit,
    }
    data[key][index] = config
    write_recipe(args.out, data, recipe.name, report)
    return EXIT_OK


def _runs(given: list[str], names: list[str]) -> dict[str, Path]:
    from moa._errors import ConfigError

    runs: dict[str, Path] = {}
    for value in given:
        name, equals, folder = value.partition("=")
        if not equals or not folder:
            raise ConfigError(f"--run {value}: a route layer needs NAME=DIR, one per route ({', '.join(names)})")
        if name not in names:
            raise ConfigError(f"--run {value}: {name!r} is no route of the recipe; routes: {', '.join(names)}")
        if name in runs:
            raise ConfigError(f"--run {value}: the route {name} is given twice")
        runs[name] = Path(folder)
    missing = [name for name in names if name not in runs]
    if missing:
        raise ConfigError(f"--run: no run of the route(s) {', '.join(missing)} (give NAME=DIR for each route)")
    return runs


def _progress(done: int, total: int) -> None:
    print(f"  embedded {done}/{total}", file=sys.stderr, flush=True)


def _report(fitting: Any, policy: Any, strong: int, train: list[Any], held: list[Any], lists: list[Any],
            held_lists: list[Any], examples: list[Any], names: list[str], unit: str, target: Any,
            args: argparse.Namespace, examples_file: Path) -> list[str]:  # fmt: skip
    per = "USD per 1,000 queries" if unit == "usd" else "tokens per query"
    scale = 1000 if unit == "usd" else 1
    runs = ", ".join(args.run)
    target_text = target.describe(names, per)
    if target.kind == "max_share":
        target_text = f"the best accuracy with {names[strong]} answering at most {target.value:g} % of queries"
    elif target.kind == "best":
        target_text = "the best single route's accuracy at the least cost"
    lines = [
        f"calibrated by moa calibrate on {runs} ({len(train)} items; {len(held)} held out, seed {args.seed})",
        f"target: {target_text}",
        f"router: k {policy.k}, cost_weight {policy.cost_weight:.4g} ({unit}); {len(examples)} examples in "
        f"{examples_file.name}",
    ]
    found = fitting.replay(policy, train, lists, examples, names, strong)
    ci = fitting.bootstrap(policy, train, lists, examples, names, strong, args.bootstrap, args.seed)
    lines.append(
        f"train (each routed by the others): accuracy {100 * found.accuracy:.1f} % (95 % CI "
        f"{100 * ci['accuracy'][0]:.1f}-{100 * ci['accuracy'][1]:.1f}), {found.cost * scale:.4g} {per} (95 % CI "
        f"{ci['cost'][0] * scale:.4g}-{ci['cost'][1] * scale:.4g}), {names[strong]} answers "
        f"{100 * found.last_share:.0f} %"
    )
    if held:
        mine = fitting.replay(policy, held, held_lists, examples, names, strong)
        alone = ", ".join(
            f"{name} alone {100 * fitting.mean([i.correct[r] for i in held]):.1f} % at "
            f"{fitting.mean([i.cost[r] for i in held]) * scale:.4g}"
            for r, name in enumerate(names)
        )
        lines.append(f"held out: accuracy {100 * mine.accuracy:.1f} %, {mine.cost * scale:.4g} {per}, "
                     f"{names[strong]} answers {100 * mine.last_share:.0f} %; {alone} ({per})")  # fmt: skip
    return lines
