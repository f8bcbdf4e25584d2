"""``moa calibrate``: fit a cascade's thresholds (or lambda) on an eval run, or a router's labelled examples on a run
of each route, and write the recipe that uses them."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from moa.cli._common import EXIT_OK
from moa.cli.args import positive_int

EPILOG = """\
First run the cascade on your questions with every tier answering every one:
  (in the recipe's cascade layer) strategy: always_escalate
  moa eval qa --recipe my-cascade.yaml --data dev.jsonl --out runs/dev
Then fit it:
  moa calibrate --recipe my-cascade.yaml --run runs/dev --data dev.jsonl --out my-cascade-fitted.yaml

For a recipe with a `route` layer, run each route alone on your questions and give every run by route name; the
router becomes a `neighbours` router whose labelled examples are those questions (written next to --out):
  moa eval qa --recipe fast-only.yaml --data dev.jsonl --out runs/fast
  moa eval qa --recipe strong-only.yaml --data dev.jsonl --out runs/strong
  moa calibrate --recipe my-route.yaml --run fast=runs/fast --run strong=runs/strong --data dev.jsonl \\
      --embedding openai/text-embedding-3-small --out my-route-fitted.yaml
"""


def add_parser(commands: Any) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="fit a cascade's thresholds, or a router's examples, on eval runs",
        description="Fit the thresholds (or cost_weight) of a recipe's cascade on a `moa eval qa` run of it with "
        "`strategy: always_escalate`, or a `route` layer's nearest-neighbour router (labelled examples, k, "
        "cost_weight) on a run of each route, for a target; write the fitted recipe and report its accuracy and "
        "cost on the training items (95 percent bootstrap intervals) and on held-out items. A cascade calls no "
        "model; a router's fit embeds the questions with its embedding model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    calibrate.add_argument("--recipe", "-r", required=True, help="the recipe the run was made with (name or path)")
    calibrate.add_argument(
        "--run", required=True, action="append", metavar="DIR",
        help="the `moa eval qa` output folder (a cascade); for a route layer, NAME=DIR once per route: that route's "
        "run alone",
    )  # fmt: skip
    calibrate.add_argument(
        "--embedding", metavar="MODEL",
        help="a route layer: the embedding model of the fitted router (default: the recipe's own, when its router is "
        "`neighbours`)",
    )  # fmt: skip
    calibrate.add_argument("--data", required=True, type=Path, help="the question file it was run on")
    calibrate.add_argument("--out", "-o", required=True, type=Path, help="where to write the fitted recipe (YAML)")
    calibrate.add_argument(
        "--strategy", choices=["threshold", "cost_aware"], default="threshold",
        help="fit thresholds (default) or cost-aware cascade routing (qualities, costs, lambda)",
    )  # fmt: skip
    target = calibrate.add_mutually_exclusive_group()
    target.add_argument("--max-cost", type=float, metavar="X",
                        help="the best accuracy at a mean cost of at most X: USD per 1,000 queries when every "
                        "model is priced, else tokens per query")  # fmt: skip
    target.add_argument("--max-share", type=float, metavar="P",
                        help="the best accuracy with the last tier (the costliest route) answering at most P %% of "
                        "queries")  # fmt: skip
    calibrate.add_argument(
        "--score", default="last-number", metavar="MODE",
        help="how answers are scored, as in `moa eval qa --score` (default last-number)",
    )  # fmt: skip
    calibrate.add_argument("--holdout", type=float, default=0.3, metavar="F",
                           help="the share of items held out of the fit and measured on (default 0.3)")  # fmt: skip
    calibrate.add_argument("--seed", type=int, default=0, help="the split's and the bootstrap's seed (default 0)")
    calibrate.add_argument("--bootstrap", type=positive_int, default=1000, metavar="N",
                           help="bootstrap resamples (default 1000)")  # fmt: skip
    calibrate.set_defaults(handler=calibrate_command)


def calibrate_command(args: argparse.Namespace) -> int:
    import yaml

    from moa._errors import ConfigError
    from moa._loader import builtin_recipes, load_recipe
    from moa._resources import data_dir
    from moa.cli._fitted import absolute_paths, write_recipe
    from moa.eval import _calibrate as fitting
    from moa.eval._common import DataError, read_jsonl
    from moa.eval._scoring import Scoring
    from moa.eval.qa import read_questions
    from moa.recipe import CascadeLayer, RouteLayer

    if not 0 <= args.holdout < 1:
        raise ConfigError(f"--holdout must be at least 0 and below 1, got {args.holdout:g}")
    for flag, value, top in (("--max-cost", args.max_cost, math.inf), ("--max-share", args.max_share, 100)):
        if value is not None and (not math.isfinite(value) or not 0 <= value <= top):
            bounds = "at least 0" if math.isinf(top) else f"from 0 to {top:g}"
            raise ConfigError(f"{flag} must be a number {bounds}, got {value:g}")
    if not args.out.parent.is_dir():
        raise ConfigError(f"--out: the folder {args.out.parent} does not exist")
    try:
        scoring = Scoring.parse(args.score)
    except ValueError as exc:
        raise ConfigError(f"--score: {exc}") from None
    recipe = load_recipe(args.recipe)
    source = data_dir("recipes") / f"{args.recipe}.yaml" if args.recipe in builtin_recipes() else Path(args.recipe)
    fitted = [i for i, layer in enumerate(recipe.layers) if isinstance(layer, CascadeLayer | RouteLayer)]
    if len(fitted) != 1:
        raise ConfigError(f"{args.recipe}: calibrate fits a recipe with exactly one cascade or route layer; it has "
                          f"{len(fitted)}")  # fmt: skip
    index = fitted[0]
    layer = recipe.layers[index]
    if isinstance(layer, RouteLayer):
        from moa.cli._calibrate_route import calibrate_route

        return calibrate_route(args, recipe, index, source, scoring)
    assert isinstance(layer, CascadeLayer)
    if len(args.run) != 1 or args.embedding:
        extra = "--embedding" if args.embedding else "--run more than once"
        raise ConfigError(f"{extra}: a cascade is fitted on one run of it (give --run DIR once)")
    run = Path(args.run[0])
    items_file = run / "items.jsonl"
    if not items_file.is_file():
        raise DataError(f"{run}: no items.jsonl: give the output folder of `moa eval qa`")
    rows = {str(row["id"]): row for row in read_questions(args.data)}
    records = read_jsonl(items_file)
    if not records:
        raise DataError(f"{items_file}: no finished item to calibrate on")
    items, unit = fitting.items_of(records, rows, layer.names, scoring, str(items_file))
    train, held = fitting.split(items, args.holdout, args.seed)
    if not train:
        raise DataError(f"{items_file}: {len(items)} item(s), all held out (--holdout {args.holdout:g}): nothing to "
                        "fit on; lower --holdout or run more questions")  # fmt: skip
    target = fitting.Target.of(args.max_cost, args.max_share)
    policy = fitting.fit(train, args.strategy, target, unit)
    report = _report(fitting, policy, train, held, layer.names, unit, target, args)
    data = absolute_paths(yaml.safe_load(source.read_text(encoding="utf-8")), source.parent)
    key = "layers" if "layers" in data else "stages"
    data[key][index] = _fitted(data[key][index], policy, unit)
    write_recipe(args.out, data, recipe.name, report)
    return EXIT_OK


def _fitted(config: dict[str, Any], policy: Any, unit: str) -> dict[str, Any]:
    """The cascade layer's mapping with the fitted strategy and numbers."""
    config = dict(config)
    config["strategy"] = policy.strategy
    for name in ("cost_weight", "cost_unit"):
        config.pop(name, None)
    tiers = [dict(tier) for tier in config["tiers"]]
    for number, tier in enumerate(tiers):
        for name in ("accept", "quality", "cost"):
            tier.pop(name, None)
        if policy.strategy == "threshold" and number < len(tiers) - 1:
            accept = policy.accept[number]  # a score seen in the data, exactly: rounding could move it past it
            tier["accept"] = "never" if math.isinf(accept) else float(accept)
        if policy.strategy == "cost_aware":
            tier["quality"] = float(policy.quality[number])
            tier["cost"] = float(policy.cost[number])
    config["tiers"] = tiers
    if policy.strategy == "cost_aware":
        config["cost_weight"] = float(policy.cost_weight)
        config["cost_unit"] = unit
    return config


def _report(fitting: Any, policy: Any, train: list[Any], held: list[Any], names: list[str], unit: str,
            target: Any, args: argparse.Namespace) -> list[str]:  # fmt: skip
    per = "USD per 1,000 queries" if unit == "usd" else "tokens per query"  # as --max-cost reads it
    scale = 1000 if unit == "usd" else 1

    def cost(value: float) -> str:
        return f"{value * scale:.4g} {per}"

    lines = [f"calibrated by moa calibrate on {args.run[0]} ({len(train)} items; {len(held)} held out, seed "
             f"{args.seed})", f"target: {target.describe(names, per)}"]  # fmt: skip
    if policy.strategy == "threshold":
        pairs = zip(names, policy.accept, strict=False)  # every tier but the last
        shown = ", ".join(f"{n} accept {('never' if math.isinf(t) else f'{t:.4g}')}" for n, t in pairs)
        lines.append(f"thresholds: {shown}")
    else:
        lines.append(f"cost_weight {policy.cost_weight:.4g}; " + ", ".join(
            f"{n} quality {q:.3f}, cost {c * scale:.4g}" for n, q, c in zip(names, policy.quality, policy.cost,
                                                                           strict=True)))  # fmt: skip
    found = fitting.replay(policy, train)
    ci = fitting.bootstrap(policy, train, args.bootstrap, args.seed)
    lines.append(f"train: accuracy {100 * found.accuracy:.1f} % (95 % CI {100 * ci['accuracy'][0]:.1f}-"
                 f"{100 * ci['accuracy'][1]:.1f}), {cost(found.cost)} (95 % CI {ci['cost'][0] * scale:.4g}-"
                 f"{ci['cost'][1] * scale:.4g}), {names[-1]} answers {100 * found.last_share:.0f} %")  # fmt: skip
    better = fitting.single_beats(policy, train)
    if better is not None:
        n, o = names[better[0]], better[1]
        lines.append(f"warning: {n} alone is as accurate on the training items ({100 * o.accuracy:.1f} %) at less "
                     f"cost ({cost(o.cost)}): here a cascade does not pay; use {n} alone")  # fmt: skip
    for label, items in (("held out", held),) if held else ():
        mine = fitting.replay(policy, items)
        tiers = ", ".join(f"{n} alone {100 * fitting.single(items, t).accuracy:.1f} % at "
                          f"{fitting.single(items, t).cost * scale:.4g}" for t, n in enumerate(names))  # fmt: skip
        every = fitting.always(items)
        lines.append(f"{label}: accuracy {100 * mine.accuracy:.1f} %, {cost(mine.cost)}, {names[-1]} answers "
                     f"{100 * mine.last_share:.0f} %; {tiers}; always escalate {100 * every.accuracy:.1f} % at "
                     f"{every.cost * scale:.4g} ({per})")  # fmt: skip
    return lines
