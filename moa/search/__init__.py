"""``moa search``: from a question set and a budget to the recipes on the quality/cost frontier, with evidence.

``search()`` reads a search space (``space.py``), evaluates its candidates by
successive halving through one call cache (``run.py``), and writes the frontier
(``report.py``): each point's recipe YAML, its accuracy with a 95 % interval,
its cost and latency per question, McNemar's p against the best single model,
and the held-out scores.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moa._call import Budget, CallCache
from moa._errors import ConfigError
from moa.eval._scoring import DEFAULT_SCORING, Scoring

from .judge import judge_grader, judge_of, read_prompts
from .report import Finding, SearchResult, findings, write_outputs
from .run import Limits, Score, evaluate, pareto, rungs, split, survivors
from .space import Candidate, read_space, recipe_id

__all__ = ["SearchOptions", "SearchResult", "search"]


@dataclass
class SearchOptions:
    """What ``moa search`` is asked (its command line, for library users too)."""

    space: Path
    data: Path
    out: Path
    budget_usd: float | None = None  # USD this search may pay (cached calls are free)
    max_calls: int | None = None  # model calls this search may pay for
    deadline_s: float | None = None
    holdout: float = 0.0
    seed: int = 0
    eta: int = 3
    min_items: int = 8
    strategy: str = "halving"  # or "exhaustive": every candidate on every question
    allow_unpriced: bool = False  # under a budget, count unpriced models as free instead of refusing them
    baseline: str | None = None  # a recipe to compare with (default: the best single-call candidate)
    scoring: Scoring = DEFAULT_SCORING
    metric: str = "qa"  # or "judge": a judge rates open-ended answers (``judge``)
    judge: str | None = None  # the judge model, or a recipe
    concurrency: int = 4
    cache: CallCache | None = None


async def search(
    options: SearchOptions,
    say: Callable[[str], None] = lambda line: None,
    progress: Callable[[str], Callable[[int, int], None] | None] = lambda label: None,
) -> SearchResult:
    """Run the search (resuming from ``options.out``) and write its outputs there.  ``say`` gets each progress
    line (rungs, each candidate's results, spend, the frontier); ``progress(label)`` may give a callback of the
    questions a candidate has done (``done, total``)."""
    from moa._engine import run_worst_case
    from moa._litellm import LiteLLMProvider
    from moa.eval.qa import read_questions

    if options.eta < 2:
        raise ConfigError(f"--eta must be 2 or more, got {options.eta}")
    if (options.metric == "judge") != (options.judge is not None):
        raise ConfigError("--metric judge needs --judge MODEL (and --judge goes with --metric judge)")
    unrated: list[str] = []
    grader = None
    if options.metric == "judge":
        assert options.judge is not None
        grader = judge_grader(judge_of(options.judge), options.cache, unrated)
        rows = read_prompts(options.data)
    else:
        rows = read_questions(options.data)
    if not rows:
        raise ConfigError(f"{options.data}: no question to search on")
    pricing = LiteLLMProvider()

    def price(recipe: Any) -> float | None:
        return run_worst_case(pricing, recipe, [{"role": "user", "content": "?"}], None)[0]

    space = read_space(options.space, price=price)
    candidates = list(space.candidates)
    for why, number in space.left_out.items():
        say(f"left out: {number} {why} (e.g. {space.examples[why]})")
    baseline_candidate = _baseline(options.baseline) if options.baseline else None
    if baseline_candidate is not None and all(c.id != baseline_candidate.id for c in candidates):
        candidates.append(baseline_candidate)
    if options.budget_usd is not None and not options.allow_unpriced:
        unpriced = [c.label for c in candidates if price(c.recipe) is None]
        if unpriced:
            raise ConfigError(f"--budget: {len(unpriced)} candidate(s) use a model with no known price (e.g. "
                              f"{unpriced[0]}); add --allow-unpriced to count them as free, or use "
                              "--max-calls")  # fmt: skip
    options.out.mkdir(parents=True, exist_ok=True)
    _claim(options, rows, candidates)
    train, held = split(rows, options.holdout, options.seed)
    if options.holdout > 0 and not held:
        say(f"--holdout {options.holdout:g}: {len(rows)} question(s) are too few to hold any out; nothing is held out")
    cache = options.cache
    limits = Limits(
        Budget(options.budget_usd, options.allow_unpriced) if options.budget_usd is not None else None,
        options.max_calls,
        time.monotonic() + options.deadline_s if options.deadline_s else None,
    )
    scores = [Score(c) for c in candidates]
    by_id = {s.candidate.id: s for s in scores}
    sizes = rungs(len(train), options.eta, options.min_items) if options.strategy == "halving" else [len(train)]
    alive, history, final = scores, [], None
    say(f"search {space.name}: {len(candidates)} candidates, {len(train)} search questions"
        f"{f', {len(held)} held out' if held else ''}; rungs of {', '.join(map(str, sizes))} questions")  # fmt: skip
    for number, size in enumerate(sizes, 1):
        keys = [str(row["id"]) for row in train[:size]]
        say(f"rung {number}/{len(sizes)}: {len(alive)} candidates x {size} questions")
        for score in alive:
            folder = options.out / "candidates" / score.candidate.id
            answers = await evaluate(score.candidate, train[:size], folder, cache, limits, options.scoring,
                                     options.concurrency, grader, progress(score.candidate.label))  # fmt: skip
            score.answered.update(answers)
            unit = _unit(scores, keys)
            say(f"  {score.candidate.label}: {100 * score.accuracy(keys):.1f} % on {len(score.on(keys))}, "
                f"{_cost(score.cost(keys, unit), unit)}; paid {limits.paid_calls} calls, "
                f"${limits.spent_usd:.4f}")  # fmt: skip
            if limits.stopped:
                break
        complete = [s for s in alive if s.complete(keys)]
        unit = _unit(scores, keys)
        if complete and len(complete) == len(alive):  # a rung counts when every candidate in it finished it
            final = (keys, complete)
            front = pareto(complete, keys, unit)
            history.append({"rung": number, "questions": size, "candidates": len(alive),
                            "complete": len(complete), "frontier": [s.candidate.label for s in front]})  # fmt: skip
            say("  frontier: " + "; ".join(f"{s.candidate.label} {100 * s.accuracy(keys):.1f} % at "
                                           f"{_cost(s.cost(keys, unit), unit)}" for s in front))  # fmt: skip
        if limits.stopped:
            say(f"stopped: {limits.stopped}")
            break
        if number < len(sizes):
            keep = by_id.get(baseline_candidate.id) if baseline_candidate else _best_single(complete or alive, keys)
            alive = survivors(complete or alive, keys, unit, options.eta, keep)
    if final is None:
        raise ConfigError(f"the search stopped ({limits.stopped}) before every candidate answered the "
                          f"{sizes[0]} question(s) of its first rung: raise the limit, or lower "
                          "--min-items")  # fmt: skip
    keys, complete = final
    unit = _unit(scores, keys)
    base = by_id.get(baseline_candidate.id) if baseline_candidate else _best_single(complete, keys)
    if base is not None and not base.complete(keys):
        base = None
    front = pareto(complete, keys, unit)
    held_keys = [str(row["id"]) for row in held]
    if held:
        for score in {id(s): s for s in [*front, *([base] if base else [])]}.values():
            folder = options.out / "candidates" / score.candidate.id / "holdout"
            score.answered.update(await evaluate(score.candidate, held, folder, cache, limits, options.scoring,
                                                 options.concurrency, grader))  # fmt: skip
    found, baseline = findings(front, base, keys, held_keys, unit, graded=grader is not None)
    if unrated:
        say(f"{len(unrated)} judgment(s) had no rating [[N]] (scored 0), e.g. question {unrated[0]}")
    if limits.failures:
        say(f"{len(limits.failures)} answer(s) failed (counted wrong here, not saved), e.g. {limits.failures[0]}")
    result = SearchResult(
        found, baseline, len(candidates), sum(bool(s.answered) for s in scores), len(keys), limits.paid_calls,
        limits.spent_usd, limits.stopped, history, space.left_out,
    )  # fmt: skip
    result.failures = list(limits.failures)
    result.warning, result.unit = _warning(found, baseline), unit
    result.points = [{"label": s.candidate.label, "id": s.candidate.id, "calls": s.candidate.recipe.calls_per_query,
                      "accuracy": s.accuracy(keys), "cost": s.cost(keys, unit)} for s in complete]  # fmt: skip
    write_outputs(options.out, result, unit)
    return result


def _baseline(reference: str) -> Candidate:
    from moa._loader import load_recipe

    recipe = load_recipe(reference)
    source = recipe.model_dump(mode="json", exclude_defaults=True)
    return Candidate(recipe_id(recipe), f"baseline {recipe.name}", recipe, source)


def _best_single(scores: list[Score], keys: list[str]) -> Score | None:
    """The single-call candidate with the best accuracy (then the lowest cost): "the best single model"."""
    singles = [s for s in scores if s.candidate.recipe.calls_per_query == 1]
    return max(singles, key=lambda s: (s.accuracy(keys), -s.cost(keys, "tokens")), default=None)


def _unit(scores: list[Score], keys: list[str]) -> str:
    """``usd`` when every answer's cost is known, else ``tokens``."""
    answers = [a for s in scores for a in s.on(keys)]
    return "usd" if answers and all(a.cost_usd is not None for a in answers) else "tokens"


def _cost(value: float, unit: str) -> str:
    return f"${value:.5f}/q" if unit == "usd" else f"{value:.0f} tokens/q"


def _warning(found: list[Finding], baseline: Finding | None) -> str | None:
    if baseline is None:
        return None
    better = [f for f in found if f.accuracy > baseline.accuracy and f.label != baseline.label]
    if not better:
        return (f"no candidate beats the best single model ({baseline.label}, {100 * baseline.accuracy:.1f} %) on "
                "these questions: here a mixture does not pay; use the single model")  # fmt: skip
    if all(f.p_value is None or f.p_value >= 0.05 for f in better):
        return (f"no candidate beats the best single model ({baseline.label}) significantly (McNemar p < 0.05) on "
                f"{better[0].questions} questions: more questions would tell")  # fmt: skip
    return None


def _claim(options: SearchOptions, rows: list[dict[str, Any]], candidates: list[Candidate]) -> None:
    """The output folder belongs to one search: the same questions, split and candidates (or a new folder)."""
    identity = {
        "data": hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16],
        "holdout": options.holdout, "seed": options.seed, "scoring": str(options.scoring),
        "metric": options.metric if options.judge is None else f"judge {options.judge}",
        "candidates": sorted(c.id for c in candidates),
    }  # fmt: skip
    path = options.out / "search-identity.json"
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in identity if before.get(k) != identity[k]]
        if changed:
            raise ConfigError(f"{options.out} holds a search made differently ({', '.join(changed)} changed): give "
                              "another --out (the call cache can still be shared with --cache)")  # fmt: skip
        return
    path.write_text(json.dumps(identity, indent=1), encoding="utf-8")
