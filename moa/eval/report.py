"""``moa eval report``: one self-contained HTML page (and a terminal table) comparing runs.

Per run: score, cost, latency and calls per item; per benchmark a cost-vs-score
chart (the plot for picking a recipe); per-category bars for MT-Bench; the
flips against a baseline for QA.  No scripts, no external files: inline SVG.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from moa.eval._common import SUMMARY_FILE, DataError

_COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"]


def load_runs(directories: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for directory in directories:
        path = directory / SUMMARY_FILE
        if not path.exists():
            raise DataError(f"{directory} has no {SUMMARY_FILE}: is it the --out folder of a `moa eval` run?")
        summary = json.loads(path.read_text(encoding="utf-8"))
        summary["directory"] = str(directory)
        runs.append(summary)
    return runs


def fmt(value: Any, digits: int = 2, prefix: str = "", suffix: str = "") -> str:
    if value is None:
        return "unknown" if prefix == "$" else "-"
    if isinstance(value, float):
        return f"{prefix}{value:.{digits}f}{suffix}"
    return f"{prefix}{value}{suffix}"


def table_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for run in runs:
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
    for benchmark in sorted({r.get("benchmark", "?") for r in runs}):
        group = [r for r in runs if r.get("benchmark") == benchmark]
        parts = [f"<h2>{html.escape(benchmark)}</h2>", _html_table(group), _scatter(group)]
        if benchmark == "mt-bench":
            parts.append(_category_bars(group))
        if benchmark == "alpacaeval":
            parts += [_alpaca_notes(r) for r in group]
        if benchmark == "qa":
            parts += [_flips(r) for r in group if r.get("comparison")]
        sections.append("\n".join(p for p in parts if p))
    body = "\n".join(sections)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>moa eval report</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1000px; color: #111; }}
h1 {{ font-size: 1.6rem; }} h2 {{ margin-top: 2.2rem; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; width: 100%; margin: .8rem 0; }}
th, td {{ padding: .35rem .6rem; text-align: right; border-bottom: 1px solid #eee; }}
th:first-child, td:first-child {{ text-align: left; }} th {{ background: #f5f5f5; }}
.note {{ color: #555; font-size: .9rem; }} svg {{ display: block; margin: 1rem 0; }}
</style></head><body>
<h1>moa eval report</h1>
<p class="note">{len(runs)} run(s). Cost per item counts generation only; judge cost is listed apart.</p>
{body}
</body></html>
"""


def _html_table(runs: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in [*HEADERS, "judge cost"])
    rows = []
    for run, cells in zip(runs, table_rows(runs), strict=True):
        cells = [*cells, fmt(run.get("judge_cost_usd"), 4, "$") if run.get("judge") else "-"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _scatter(runs: list[dict[str, Any]]) -> str:
    scored = [r for r in runs if r.get("score") is not None]
    if not scored:
        return '<p class="note">No run has a score yet: no chart.</p>'
    by_cost = all(r.get("cost_per_item_usd") is not None for r in scored)
    x_key, x_label, x_format = (
        ("cost_per_item_usd", "generation cost per item (USD)", "${:.4f}") if by_cost else
        ("calls_per_item", "calls per item (the cost of some runs is unknown)", "{:.1f}")
    )  # fmt: skip
    points: list[tuple[float, float, str]] = [
        (float(r[x_key] or 0.0), float(r["score"]), str(r.get("recipe", "?"))) for r in scored
    ]
    width, height, pad = 760, 360, 56
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = 0.0, max(xs) * 1.5 or 1.0  # room on the right for the labels
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.15 or 1.0

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)

    marks = []
    for i, (x, y, label) in enumerate(points):
        color = _COLORS[i % len(_COLORS)]
        marks.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="6" fill="{color}"/>'
            f'<text x="{sx(x) + 9:.1f}" y="{sy(y) + 4:.1f}" font-size="13">{html.escape(label)} '
            f"({y:.1f})</text>"
        )
    ticks = []
    for k in range(5):
        xv, yv = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        ticks.append(
            f'<text x="{sx(xv):.1f}" y="{height - pad + 18}" font-size="11" text-anchor="middle">'
            f'{x_format.format(xv)}</text><text x="{pad - 8}" y="{sy(yv) + 4:.1f}" font-size="11" '
            f'text-anchor="end">{yv:.1f}</text>'
        )
    names = {str(run.get("score_name", "score")) for run in runs}  # "LC win rate" and "... (approx.)" share an axis
    score_name = html.escape(names.pop() if len(names) == 1 else min(names).split(" (")[0])
    return f"""<svg width="{width}" height="{height}" role="img" aria-label="cost versus score">
<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="#fafafa" stroke="#ccc"/>
{"".join(ticks)}{"".join(marks)}
<text x="{width / 2}" y="{height - 10}" text-anchor="middle" font-size="13">{x_label}</text>
<text x="16" y="{height / 2}" font-size="13" transform="rotate(-90 16 {height / 2})"
 text-anchor="middle">{score_name}</text>
</svg>"""


def _category_bars(runs: list[dict[str, Any]]) -> str:
    categories = sorted({c for r in runs for c in (r.get("score_by_category") or {})})
    if not categories:
        return ""
    width, row_height, bar = 760, 22 * len(runs) + 10, 20
    label_width = 110
    lines = []
    for ci, category in enumerate(categories):
        top = 30 + ci * row_height
        lines.append(f'<text x="0" y="{top + 15}" font-size="13">{html.escape(category)}</text>')
        for ri, run in enumerate(runs):
            value = (run.get("score_by_category") or {}).get(category)
            if value is None:
                continue
            length = value / 10 * (width - label_width - 80)
            y = top + ri * 22
            color = _COLORS[ri % len(_COLORS)]
            lines.append(
                f'<rect x="{label_width}" y="{y}" width="{length:.1f}" height="{bar - 4}" fill="{color}"/>'
                f'<text x="{label_width + length + 6:.1f}" y="{y + 12}" font-size="12">{value:.2f}</text>'
            )
    legend = "".join(
        f'<tspan fill="{_COLORS[i % len(_COLORS)]}">■ {html.escape(r.get("recipe", "?"))}  </tspan>'
        for i, r in enumerate(runs)
    )
    height = 40 + len(categories) * row_height
    return (
        f'<h3>Score by category (1-10)</h3><svg width="{width}" height="{height}">'
        f'<text x="0" y="16" font-size="13">{legend}</text>{"".join(lines)}</svg>'
    )


def _alpaca_notes(run: dict[str, Any]) -> str:
    if run.get("win_rate") is None:
        return ""
    items = [
        f"win rate {fmt(run.get('win_rate'))} ± {fmt(run.get('standard_error'))}",
        f"LC win rate {fmt(run.get('length_controlled_win_rate'))} ({html.escape(str(run.get('lc_method', '-')))})",
        f"judge {html.escape(str(run.get('judge')))}: {html.escape(str(run.get('judge_method')))}",
        f"unparsable judgments: {run.get('unparsable_judgments', 0)}",
    ]
    return f'<p class="note"><b>{html.escape(run.get("recipe", "?"))}</b>: ' + "; ".join(items) + "</p>"


def _flips(run: dict[str, Any]) -> str:
    comparison = run["comparison"]

    def ids(key: str) -> str:
        values = comparison[key]
        return f"{len(values)} ({html.escape(', '.join(map(str, values[:20])))})"

    return (
        f'<p class="note"><b>{html.escape(run.get("recipe", "?"))}</b> vs baseline '
        f"<b>{html.escape(str(comparison.get('baseline')))}</b> on {comparison['compared']} questions: "
        f"accuracy {fmt(run.get('score'))} vs {fmt(comparison.get('baseline_accuracy'))}; "
        f"right→wrong {ids('right_to_wrong')}, wrong→right {ids('wrong_to_right')}; "
        f"exact McNemar p = {comparison['mcnemar_p']:.4g}</p>"
    )
