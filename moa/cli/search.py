"""``moa search``: find the recipes on the quality/cost frontier for your questions, under a budget."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from moa.cli._cache_args import add_cache_arguments, open_cache
from moa.cli._common import EXIT_FAILED, EXIT_OK
from moa.cli._ray_args import PER_WORKER, add_ray_arguments, with_ray
from moa.cli.args import non_negative_float, positive_float, positive_int

EPILOG = """\
A space is a recipe whose values may be {choose: [...]} (every combination is a candidate), and/or a list of
recipes (`candidates:`); see README "Searching for a recipe". Example:
  moa search --space space.yaml --data dev.jsonl --out runs/search --max-calls 2000 --holdout 0.3
The run resumes where it stopped (the same command); every answer goes through OUT/calls.sqlite.
"""


def add_parser(commands: Any) -> None:
    search = commands.add_parser(
        "search",
        help="find the best recipes for your questions under a budget",
        description="Evaluate a search space's candidate recipes on your questions (`moa eval qa` scoring) by "
        "successive halving through a shared call cache, and write the accuracy/cost frontier: each point's recipe, "
        "accuracy with a 95 % interval, cost per question, McNemar's p against the best single model, and the "
        "held-out scores.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search.add_argument("--space", required=True, type=Path, help="the search space (YAML)")
    search.add_argument("--data", required=True, type=Path, help="the questions (JSONL, as `moa eval qa --data`)")
    search.add_argument("--out", "-o", required=True, type=Path, help="the folder for the search's files")
    search.add_argument("--budget", type=non_negative_float, metavar="USD",
                        help="the most the search may pay (each question's worst case is held first)")  # fmt: skip
    search.add_argument("--allow-unpriced", action="store_true",
                        help="under --budget, count models with no known price as free, not refuse them")  # fmt: skip
    search.add_argument("--max-calls", type=positive_int, metavar="N",
                        help="the most model calls the search may pay for (cached calls are free)")  # fmt: skip
    search.add_argument("--deadline", type=positive_float, metavar="SECONDS", help="stop after this long")
    search.add_argument("--holdout", type=float, default=0.0, metavar="F",
                        help="the share of questions kept out, scored on the frontier at the end")  # fmt: skip
    search.add_argument("--seed", type=int, default=0, help="the split's and the question order's seed (default 0)")
    search.add_argument("--strategy", choices=["halving", "exhaustive"], default="halving",
                        help="successive halving (default) or every candidate on every question")  # fmt: skip
    search.add_argument("--eta", type=positive_int, default=3, help="halving: 1/eta go on, eta x questions (3)")
    search.add_argument("--min-items", type=positive_int, default=8, metavar="N",
                        help="halving: the questions of the first rung (default 8)")  # fmt: skip
    search.add_argument("--baseline", metavar="RECIPE",
                        help="compare with this recipe (default: the space's best single-call candidate)")  # fmt: skip
    search.add_argument("--score", default="last-number", metavar="MODE",
                        help="how answers are scored, as in `moa eval qa --score` (default last-number)")  # fmt: skip
    search.add_argument("--metric", choices=["qa", "judge"], default="qa",
                        help="qa: answers scored against the questions' `answers`/`regex` (default); judge: open-ended "
                        "questions (id, prompt), each answer rated 1-10 by --judge")  # fmt: skip
    search.add_argument("--judge", metavar="MODEL", help="--metric judge: the judge model, or a recipe (name or YAML)")
    search.add_argument("--concurrency", type=positive_int, help="questions in flight at once (4; with --ray, "
                        f"{PER_WORKER} per worker)")  # fmt: skip
    add_ray_arguments(search)
    add_cache_arguments(search, default_on=True)
    search.set_defaults(handler=search_command)


@with_ray
def search_command(args: argparse.Namespace) -> int:
    from moa._errors import ConfigError
    from moa.cli import signals
    from moa.eval._scoring import Scoring
    from moa.search import SearchOptions, search
    from moa.search.report import table

    if not 0 <= args.holdout < 1:
        raise ConfigError(f"--holdout must be at least 0 and below 1, got {args.holdout:g}")
    if args.eta < 2:
        raise ConfigError(f"--eta must be 2 or more, got {args.eta}")
    try:
        scoring = Scoring.parse(args.score)
    except ValueError as exc:
        raise ConfigError(f"--score: {exc}") from None
    options = SearchOptions(
        space=args.space, data=args.data, out=args.out, budget_usd=args.budget, max_calls=args.max_calls,
        deadline_s=args.deadline, holdout=args.holdout, seed=args.seed, eta=args.eta, min_items=args.min_items,
        strategy=args.strategy, baseline=args.baseline, scoring=scoring, concurrency=args.concurrency or 4,
        metric=args.metric, judge=args.judge, allow_unpriced=args.allow_unpriced,
        cache=open_cache(args, args.out),
    )  # fmt: skip

    live = sys.stderr.isatty()

    def say(line: str) -> None:
        print(("\r\033[K" if live else "") + line, file=sys.stderr, flush=True)

    def progress(label: str) -> Any:
        def done(count: int, total: int) -> None:  # one status line, rewritten, on a terminal
            print(f"\r\033[K  {label[:70]}: {count}/{total} questions", end="", file=sys.stderr, flush=True)

        return done if live else None

    result = signals.run(lambda: search(options, say, progress))
    for line in table(result, result.unit):
        print(line)
    if result.warning:
        print(f"warning: {result.warning}")
    cache = options.cache.summary() if options.cache is not None else None
    print(f"paid {result.paid_calls} calls (${result.spent_usd:.4f})"
          + (f"; cache {cache['hits']} hits, {cache['misses']} misses" if cache else "")
          + (f"; stopped: {result.stopped}" if result.stopped else ""))  # fmt: skip
    print(f"wrote {args.out / 'frontier.json'} and the frontier's recipes in {args.out / 'recipes'}")
    if result.failures:
        print(f"moa: {len(result.failures)} answer(s) failed and were counted wrong (e.g. {result.failures[0]}); "
              "run the same command to ask them again", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    return EXIT_OK
