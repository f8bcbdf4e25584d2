"""What a search found, with its evidence: the frontier's recipes, intervals, significance, held-out scores."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moa.eval._calibrate import _interval
from moa.eval._stats import mcnemar_exact
from moa.eval._store import write_atomic, write_json

from .run import Score


@dataclass
class Finding:
    """One recipe on the frontier (or the baseline): its scores on the search questions and held out."""

    label: str
    id: str
    recipe: str  # the recipe's name
    calls_per_query: int
    questions: int
    accuracy: float
    accuracy_ci: tuple[float, float]  # 95 % Wilson interval
    cost: float  # mean per question, in `unit`
    cost_ci: tuple[float, float]  # 95 % bootstrap interval
    latency_s: float
    right_to_wrong: int | None = None  # against the baseline, on the same questions
    wrong_to_right: int | None = None
    p_value: float | None = None  # McNemar's exact test against the baseline
    held_out_accuracy: float | None = None
    held_out_cost: float | None = None
    held_out_questions: int = 0
    yaml: str | None = None  # where its recipe is written
    source: dict[str, Any] | None = None  # the recipe, as a mapping


@dataclass
class SearchResult:
    frontier: list[Finding]
    baseline: Finding | None
    candidates: int
    evaluated: int  # candidates that answered at least one question
    questions: int  # the search questions the final comparison is on
    paid_calls: int
    spent_usd: float
    stopped: str | None
    rungs: list[dict[str, Any]] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)
    warning: str | None = None
    unit: str = "tokens"  # of the costs: `usd` when every answer's cost is known
    #: Every candidate of the final comparison: label, id, calls, accuracy and cost (the report's chart).
    points: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # answers that failed (not saved: the same command retries)


def findings(front: Sequence[Score], base: Score | None, keys: list[str], held: list[str], unit: str,
             graded: bool = False) -> tuple[list[Finding], Finding | None]:  # fmt: skip
    """The frontier's findings (cheapest first) and the baseline's, each compared with the baseline (``graded``:
    scores are a judge's ratings from 0 to 1, compared by a paired bootstrap, not right/wrong by McNemar)."""
    baseline = _finding(base, keys, held, unit, None, graded) if base is not None else None
    return [_finding(s, keys, held, unit, base, graded) for s in front], baseline


def _finding(score: Score, keys: list[str], held: list[str], unit: str, base: Score | None,
             graded: bool) -> Finding:  # fmt: skip
    answers = score.on(keys)
    right = sum(a.correct for a in answers)
    mean = score.accuracy(keys)
    costs = [(a.cost_usd or 0.0) if unit == "usd" else float(a.tokens) for a in answers]
    found = Finding(
        label=score.candidate.label,
        id=score.candidate.id,
        recipe=score.candidate.recipe.name,
        calls_per_query=score.candidate.recipe.calls_per_query,
        questions=len(answers),
        accuracy=mean,
        accuracy_ci=bootstrap_mean([a.score for a in answers]) if graded else wilson(right, len(answers)),
        cost=score.cost(keys, unit),
        cost_ci=bootstrap_mean(costs),
        latency_s=score.latency(keys),
        source=score.candidate.source,
    )
    if base is not None and base is not score:
        both = [k for k in keys if k in base.answered and k in score.answered]
        if graded:
            found.p_value = paired_bootstrap_p([score.answered[k].score - base.answered[k].score for k in both])
        else:
            pairs = [(base.answered[k].correct, score.answered[k].correct) for k in both]
            found.right_to_wrong = sum(b and not s for b, s in pairs)
            found.wrong_to_right = sum(s and not b for b, s in pairs)
            found.p_value = mcnemar_exact(found.right_to_wrong, found.wrong_to_right)
    if held and score.complete(held):
        found.held_out_accuracy = score.accuracy(held)
        found.held_out_cost = score.cost(held, unit)
        found.held_out_questions = len(held)
    return found


def wilson(right: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_bootstrap_p(differences: list[float], draws: int = 2000, seed: int = 0) -> float:
    """Two-sided bootstrap p-value that the mean paired difference is 0 (the share of resampled means on the
    other side of 0 from the observed one, doubled, at most 1)."""
    if not differences or not any(differences):
        return 1.0
    generator = random.Random(seed)
    observed = sum(differences) / len(differences)
    means = [sum(differences[generator.randrange(len(differences))] for _ in differences) / len(differences)
             for _ in range(draws)]  # fmt: skip
    other_side = sum(m <= 0 for m in means) if observed > 0 else sum(m >= 0 for m in means)
    return min(1.0, 2 * (other_side + 1) / (draws + 1))


def bootstrap_mean(values: list[float], draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """A 95 % bootstrap interval of the mean (the calibration's interval rule)."""
    if not values:
        return (math.nan, math.nan)
    generator = random.Random(seed)
    return _interval([sum(values[generator.randrange(len(values))] for _ in values) / len(values)
                      for _ in range(draws)])  # fmt: skip


def write_outputs(out: Path, result: SearchResult, unit: str) -> None:
    """``frontier.json``, ``search.json`` (everything), and each frontier recipe's YAML in ``recipes/``."""
    import yaml

    folder = out / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    for finding in result.frontier:
        path = folder / f"{_file_name(finding)}.yaml"
        finding.yaml = str(path)
        recipe = finding.source or {"name": finding.recipe}
        header = (f"# found by moa search: {finding.label}\n# accuracy {100 * finding.accuracy:.1f} % on "
                  f"{finding.questions} questions, {finding.cost:.6g} {unit} per question\n")  # fmt: skip
        write_atomic(path, header + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
    data = {
        "unit": unit,
        "frontier": [asdict(f) for f in result.frontier],
        "baseline": asdict(result.baseline) if result.baseline else None,
        "warning": result.warning,
    }
    write_json(out / "frontier.json", data)
    write_json(out / "search.json", {**data, "candidates": result.candidates, "evaluated": result.evaluated,
                                     "questions": result.questions, "paid_calls": result.paid_calls,
                                     "spent_usd": result.spent_usd, "stopped": result.stopped,
                                     "rungs": result.rungs, "left_out": result.left_out,
                                     "points": result.points, "failures": result.failures})  # fmt: skip


def _file_name(finding: Finding) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", finding.recipe).strip("-") or "recipe"
    return f"{name}-{finding.id[:6]}" if not name.endswith(finding.id[:6]) else name


def table(result: SearchResult, unit: str) -> list[str]:
    """The frontier as lines for the terminal."""
    per = "USD/q" if unit == "usd" else "tokens/q"
    lines = [f"{'calls':>5} {'accuracy (95% CI)':>18} {per:>10} {'p vs base':>9} {'held out':>8}  recipe"]
    base = result.baseline
    rows = [*result.frontier, *([base] if base is not None and base.id not in {f.id for f in result.frontier} else [])]
    for f in rows:
        accuracy = f"{100 * f.accuracy:.1f} ({100 * f.accuracy_ci[0]:.0f}-{100 * f.accuracy_ci[1]:.0f})"
        p = "base" if base is not None and f.id == base.id else ("-" if f.p_value is None else f"{f.p_value:.3g}")
        held = "-" if f.held_out_accuracy is None else f"{100 * f.held_out_accuracy:.1f}"
        lines.append(f"{f.calls_per_query:>5} {accuracy:>18} {f.cost:>10.4g} {p:>9} {held:>8}  {f.label}")
    return lines
