"""``moa eval report``: one self-contained HTML page (and a terminal table) comparing runs.

Per run: score, cost, latency and calls per item; per benchmark a cost-vs-score
chart (the plot for picking a recipe); per-category bars for MT-Bench; the
flips against a baseline for QA.  The page is ``report.html.j2``, rendered with
autoescaping (every recipe name, category, judge and id is the user's text); the
charts are drawn by matplotlib and inlined as SVG: no scripts, no external files.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup

from moa._errors import ConfigError
from moa.eval._common import SUMMARY_FILE, DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"]
_NEEDS_EXTRA = "the report's charts are drawn by matplotlib: it needs the eval extra: pip install 'moa-pipeline[eval]'"
TEMPLATE = "report.html.j2"


def load_runs(directories: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for directory in directories:
        path = directory / SUMMARY_FILE
        if not path.exists() and (directory / "search.json").exists():
            runs.append(_search_run(directory))
            continue
        if not path.exists():
            raise DataError(f"{directory} has no {SUMMARY_FILE}: is it the --out folder of a `moa eval` run (or of "
                            "`moa search`)?")  # fmt: skip
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path} cannot be read: {exc}") from None
        if not isinstance(summary, dict):
            raise DataError(f"{path} is not a moa summary (a JSON object expected)")
        summary["directory"] = str(directory)
        runs.append(summary)
    return runs


def fmt(value: Any, digits: int = 2, prefix: str = "", suffix: str = "") -> str:
    if value is None:
        return "unknown" if prefix == "$" else "-"
    if isinstance(value, float):
        return f"{prefix}{value:.{digits}f}{suffix}"
    return f"{prefix}{value}{suffix}"


def _search_run(directory: Path) -> dict[str, Any]:
    """A `moa search` folder as the report shows it: its frontier's points as rows, every candidate on the chart."""
    path = directory / "search.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} cannot be read: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("frontier"), list):
        raise DataError(f"{path} is not a moa search result")
    return {"benchmark": "search", "directory": str(directory), "search": data}


def table_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for run in runs:
        if "search" in run:
            rows += _search_rows(run)
            continue
        rows.append(
            [
                run.get("recipe", "?"),
                run.get("benchmark", "?"),
                f"{run.get('finished', 0)}/{run.get('items', 0)}",
                f"{fmt(run.get('score'))} {run.get('score_name', '')}".strip(),
                fmt(run.get("cost_per_item_usd"), 5, "$"),
                fmt(run.get("latency_per_item_s"), 2, suffix=" s"),
                fmt(run.get("calls_per_item"), 1),
                str(run.get("failed", 0)),
            ]
        )
    return rows


def _search_rows(run: dict[str, Any]) -> list[list[str]]:
    data = run["search"]
    usd = data.get("unit") == "usd"
    rows = []
    for point in data["frontier"]:
        cost = fmt(point.get("cost"), 5, "$") if usd else f"{fmt(point.get('cost'), 0)} tokens"
        rows.append([str(point.get("label")), "search (frontier)", str(point.get("questions")),
                     f"{fmt(100 * point['accuracy'], 1)} accuracy", cost, fmt(point.get("latency_s"), 2, suffix=" s"),
                     str(point.get("calls_per_query")), "-"])  # fmt: skip
    return rows


HEADERS = ["recipe", "benchmark", "items", "score", "cost/item", "latency/item", "calls/item", "failed"]


def print_table(runs: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="moa eval report")
    for header in HEADERS:
        table.add_column(header)
    for row in table_rows(runs):
        table.add_row(*(Text(cell) for cell in row))  # recipe names are the user's text, not markup
    Console().print(table)


def render_html(runs: list[dict[str, Any]]) -> str:
    sections = []
    for number, benchmark in enumerate(sorted({str(r.get("benchmark", "?")) for r in runs})):
        group = [r for r in runs if str(r.get("benchmark", "?")) == benchmark]
        judge_costs = [fmt(r.get("judge_cost_usd"), 4, "$") if r.get("judge") else "-" for r in group]
        if benchmark == "search":
            judge_costs = ["-"] * len(table_rows(group))
        sections.append(
            {
                "benchmark": benchmark,
                "rows": [[*cells, cost] for cells, cost in zip(table_rows(group), judge_costs, strict=True)],
                "scatter": _frontier(group[0]["search"], f"chart{number}")
                if benchmark == "search" and len(group) == 1
                else _scatter([r for r in group if "search" not in r], f"chart{number}"),
                "bars": _category_bars(group, f"bars{number}") if benchmark == "mt-bench" else None,
                "alpaca": [_alpaca_note(r) for r in group if r.get("win_rate") is not None]
                if benchmark == "alpacaeval"
                else [],
                "flips": [_flips(r) for r in group if r.get("comparison")] if benchmark == "qa" else [],
            }
        )
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("moa.eval", "."),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    page = environment.get_template(TEMPLATE).render(
        run_count=len(runs), headers=[*HEADERS, "judge cost"], sections=sections
    )
    return page


def _alpaca_note(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "recipe": run.get("recipe", "?"),
        "win_rate": fmt(run.get("win_rate")),
        "standard_error": fmt(run.get("standard_error")),
        "lc": fmt(run.get("length_controlled_win_rate")),
        "lc_method": str(run.get("lc_method", "-")),
        "judge": str(run.get("judge")),
        "judge_method": str(run.get("judge_method")),
        "unparsable": run.get("unparsable_judgments", 0),
    }


def _flips(run: dict[str, Any]) -> dict[str, Any]:
    comparison = run["comparison"]
    return {
        "recipe": run.get("recipe", "?"),
        "baseline": str(comparison.get("baseline")),
        "compared": comparison["compared"],
        "accuracy": fmt(run.get("score")),
        "baseline_accuracy": fmt(comparison.get("baseline_accuracy")),
        "right_to_wrong": [str(v) for v in comparison["right_to_wrong"]],
        "wrong_to_right": [str(v) for v in comparison["wrong_to_right"]],
        "mcnemar_p": f"{comparison['mcnemar_p']:.4g}",
    }


# ------------------------------------------------------------------ charts (matplotlib, inline SVG)


def _scatter(runs: list[dict[str, Any]], chart: str) -> Markup | None:
    """Score (y) against generation cost per item (x), or calls per item when some cost is unknown."""
    scored = [r for r in runs if isinstance(r.get("score"), int | float) and math.isfinite(r["score"])]
    if not scored:  # (AlpacaEval's win rate of a run whose every judgment was unparsable is NaN)
        return None
    by_cost = all(r.get("cost_per_item_usd") is not None for r in scored)
    x_key, x_label, x_format = (
        ("cost_per_item_usd", "generation cost per item (USD)", "${x:.4f}") if by_cost else
        ("calls_per_item", "calls per item (the cost of some runs is unknown)", "{x:.1f}")
    )  # fmt: skip
    names = {str(run.get("score_name", "score")) for run in runs}  # "LC win rate" and "... (approx.)" share an axis
    score_name = names.pop() if len(names) == 1 else min(names).split(" (")[0]
    xs = [float(r.get(x_key) or 0.0) for r in scored]
    ys = [float(r["score"]) for r in scored]
    with _charting(chart) as figure:
        from matplotlib.ticker import StrMethodFormatter

        axes = figure.add_subplot()
        for i, (run, x, y) in enumerate(zip(scored, xs, ys, strict=True)):
            axes.scatter([x], [y], s=50, color=_COLORS[i % len(_COLORS)], zorder=3, gid=f"{chart}-run{i}")
            label = f"{run.get('recipe', '?')} ({y:.1f})"
            axes.annotate(label, (x, y), xytext=(7, 3), textcoords="offset points", fontsize=9)
        bottom = min(0.0, *ys)
        axes.set_xlim(0.0, max(xs) * 1.5 or 1.0)  # room on the right for the labels
        axes.set_ylim(bottom, max(max(ys) * 1.15, bottom + 1.0))
        axes.xaxis.set_major_formatter(StrMethodFormatter(x_format))
        axes.set_xlabel(x_label)
        axes.set_ylabel(score_name)
        axes.grid(alpha=0.3)
        return _svg(figure, "cost versus score")


def _frontier(data: dict[str, Any], chart: str) -> Markup | None:
    """Every candidate of a search's final comparison (accuracy against cost per question), the frontier joined."""
    points = [p for p in data.get("points") or [] if isinstance(p.get("accuracy"), int | float)]
    if not points:
        return None
    usd = data.get("unit") == "usd"
    on_frontier = {str(p.get("id")) for p in data["frontier"]}
    with _charting(chart) as figure:
        axes = figure.add_subplot()
        for i, point in enumerate(points):
            x, y = float(point.get("cost") or 0.0), 100 * float(point["accuracy"])
            front = str(point.get("id")) in on_frontier
            axes.scatter([x], [y], s=60 if front else 30, color=_COLORS[0] if front else "#9ca3af", zorder=3,
                         gid=f"{chart}-point{i}")  # fmt: skip
            if front:
                axes.annotate(str(point.get("label"))[:60], (x, y), xytext=(7, 3), textcoords="offset points",
                              fontsize=8)  # fmt: skip
        line = sorted((float(p.get("cost") or 0.0), 100 * float(p["accuracy"])) for p in data["frontier"])
        axes.step([x for x, _ in line], [y for _, y in line], where="post", color=_COLORS[0], alpha=0.5)
        axes.set_xlabel("cost per question (USD)" if usd else "tokens per question (some models unpriced)")
        axes.set_ylabel("accuracy (%)")
        axes.set_ylim(0, 105)
        axes.grid(alpha=0.3)
        return _svg(figure, "search frontier: accuracy versus cost")


def _category_bars(runs: list[dict[str, Any]], chart: str) -> Markup | None:
    """MT-Bench's score per category: one bar per run in each category (categories top to bottom)."""
    categories = sorted({str(c) for r in runs for c in (r.get("score_by_category") or {})})
    if not categories:
        return None
    step = 0.8 / len(runs)
    values = [float(v) for r in runs for v in (r.get("score_by_category") or {}).values() if v is not None]
    with _charting(chart, height=0.9 + len(categories) * (0.2 * len(runs) + 0.2)) as figure:
        from matplotlib.patches import Patch

        axes = figure.add_subplot()
        for ri, run in enumerate(runs):
            scores = {str(k): v for k, v in (run.get("score_by_category") or {}).items() if v is not None}
            at = [ci + ri * step for ci, c in enumerate(categories) if c in scores]
            bars = axes.barh(at, [float(scores[c]) for c in categories if c in scores], height=step * 0.9,
                             color=_COLORS[ri % len(_COLORS)])  # fmt: skip
            axes.bar_label(bars, fmt="%.2f", padding=3, fontsize=8)
        axes.set_yticks([ci + step * (len(runs) - 1) / 2 for ci in range(len(categories))], categories)
        axes.invert_yaxis()
        axes.set_xlim(min(0.0, *values), 10.9)
        axes.set_xlabel("score (1-10)")
        handles = [Patch(color=_COLORS[i % len(_COLORS)]) for i in range(len(runs))]
        figure.legend(handles, [str(r.get("recipe", "?")) for r in runs], loc="outside upper center",
                      ncols=min(len(runs), 4), fontsize=9, frameon=False)  # fmt: skip
        return _svg(figure, "score by category")


@contextlib.contextmanager
def _charting(chart: str, height: float = 3.6) -> Iterator[Figure]:
    """A matplotlib figure on the Agg canvas (no pyplot, no global backend), with the report's settings.

    Text is SVG text (``svg.fonttype: none``), escaped by matplotlib's SVG writer and not
    parsed as mathtext (a ``$`` in a recipe name is a dollar); ids are salted per chart, so
    that the charts of one page never share a marker or clip-path id.
    """
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(_NEEDS_EXTRA) from None
    settings = matplotlib.rc_context(
        {"svg.fonttype": "none", "svg.hashsalt": chart, "text.parse_math": False, "font.size": 10}
    )
    with settings, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        figure = Figure(figsize=(7.6, height), layout="constrained")
        FigureCanvasAgg(figure)
        yield figure


def _svg(figure: Figure, label: str) -> Markup:
    """The figure as inline SVG: no XML prolog or DOCTYPE, no metadata (the one trusted HTML of the page)."""
    out = io.StringIO()
    figure.savefig(out, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = out.getvalue()
    svg = text[text.index("<svg") :].replace("<svg ", f'<svg role="img" aria-label="{label}" ', 1)
    return Markup(svg)  # matplotlib escaped every text in it
