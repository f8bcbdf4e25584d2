"""``moa eval report``: the autoescaped page, its matplotlib charts (orientation, escaping, ids), the table."""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from moa._errors import ConfigError
from moa.eval import report
from moa.eval._common import DataError

HOSTILE = ["<script>alert(1)</script>", "{{ 7*7 }}", "</svg>"]
#: Every element the page may hold: HTML for the text, SVG for matplotlib's charts. No script, no link, no image.
ALLOWED = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "b", "table", "tr", "th", "td",
    "svg", "defs", "g", "path", "use", "text", "clippath", "rect",
}  # fmt: skip


def run(recipe: str, benchmark: str = "qa", **fields: Any) -> dict[str, Any]:
    base = {"recipe": recipe, "benchmark": benchmark, "finished": 4, "items": 4, "failed": 0, "calls_per_item": 4.0}
    return {**base, **fields}


class Page(HTMLParser):
    """Every start tag with its attributes, and the text of each element (unescaped by the parser)."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.texts.append(data)


def svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.S)


def point(svg: str, gid: str) -> tuple[float, float]:
    """The (x, y) where matplotlib drew the one marker of the scatter whose gid is ``gid``."""
    group = re.search(rf'<g id="{gid}">(.*?)</g>\s*</g>', svg, flags=re.S)
    assert group, f"no scatter {gid}"
    (x, y), *others = re.findall(r'<use [^>]*x="([-\d.]+)" y="([-\d.]+)"', group.group(1))
    assert not others
    return float(x), float(y)


def texts(svg: str) -> list[str]:
    return [t for t in Page(svg).texts if t.strip()]


def test_user_text_is_escaped_everywhere_and_the_page_holds_no_script() -> None:
    runs = [
        run(HOSTILE[0], score=75.0, score_name="accuracy", cost_per_item_usd=0.002,
            comparison={"baseline": HOSTILE[2], "compared": 4, "baseline_accuracy": 50.0,
                        "right_to_wrong": ["<b>q1</b>"], "wrong_to_right": ["{{ q3 }}"], "mcnemar_p": 0.625}),
        run(HOSTILE[1], score=50.0, score_name="accuracy", cost_per_item_usd=0.001),
        run(HOSTILE[2], "mt-bench", score=7.0, score_name="MT-Bench score", judge="<i>judge</i>",
            judge_cost_usd=0.01, score_by_category={"<script>x</script>": 7.0, "{{ 6*7 }}": 6.0}),
        run("a", "alpacaeval", score=55.0, score_name="LC win rate (approx.)", win_rate=51.0, standard_error=1.5,
            length_controlled_win_rate=55.0, lc_method="APPROXIMATION: <b>", judge="j</p>", judge_method="x<y"),
    ]  # fmt: skip
    page = report.render_html(runs)
    assert "<script" not in page.lower() and "<i>" not in page and "<b>q1" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;/svg&gt;" in page and "{{ 7*7 }}" in page
    assert "49" not in re.sub(r"<svg\b.*?</svg>", "", page, flags=re.S)  # nothing the user wrote was evaluated
    parsed = Page(page)
    assert {tag for tag, _ in parsed.tags} <= ALLOWED
    for tag, attrs in parsed.tags:
        assert not any(name.startswith("on") for name in attrs), tag  # no event handler
        for name, value in attrs.items():  # nothing is fetched: references stay inside the page
            assert not (name.endswith("href") or name == "src") or (value or "").startswith("#"), (tag, name)
    shown = "".join(parsed.texts)
    for name in [*HOSTILE, "<b>q1</b>", "{{ q3 }}", "<script>x</script>", "{{ 6*7 }}", "j</p>"]:
        assert name in shown  # escaped, so the browser shows exactly what the user wrote
    charts = svgs(page)
    assert len(charts) == 4 and page.count("<svg") == page.count("</svg>") == 4  # `</svg>` closed nothing
    # In the charts too: the scatter's labels and the category names are escaped SVG text.
    assert "<script>alert(1)</script> (75.0)" in texts(charts[3]) and "</svg> (7.0)" in texts(charts[1])
    assert {"<script>x</script>", "{{ 6*7 }}"} <= set(texts(charts[1]) + texts(charts[2]))


def test_the_scatter_puts_cost_on_x_and_score_on_y() -> None:
    cheap_good = run("cheap-good", score=80.0, score_name="accuracy", cost_per_item_usd=0.001, calls_per_item=9.0)
    dear_bad = run("dear-bad", score=40.0, score_name="accuracy", cost_per_item_usd=0.004, calls_per_item=1.0)
    (chart,) = svgs(report.render_html([cheap_good, dear_bad]))
    (x_good, y_good), (x_bad, y_bad) = point(chart, "chart0-run0"), point(chart, "chart0-run1")
    assert y_good < y_bad  # the higher score is higher on the page (SVG y grows downwards)
    assert x_good < x_bad  # the cheaper run is further left
    assert x_bad / x_good > 2  # ...in proportion: $0.004 is 4x $0.001 from an origin at 0 (plus the margin)
    shown = texts(chart)
    assert "generation cost per item (USD)" in shown and "accuracy" in shown and "$0.0010" in shown
    assert "cheap-good (80.0)" in shown and "dear-bad (40.0)" in shown


def test_an_unknown_cost_puts_calls_per_item_on_x() -> None:
    unknown = run("unpriced", score=80.0, score_name="accuracy", cost_per_item_usd=None, calls_per_item=9.0)
    priced = run("priced", score=40.0, score_name="accuracy", cost_per_item_usd=0.004, calls_per_item=1.0)
    page = report.render_html([unknown, priced])
    (chart,) = svgs(page)
    assert point(chart, "chart0-run0")[0] > point(chart, "chart0-run1")[0]  # 9 calls right of 1 call
    assert "calls per item (the cost of some runs is unknown)" in texts(chart)
    assert "<td>unknown</td>" in page and "<td>$0.00400</td>" in page


def test_lc_labels_say_approximation_and_runs_without_a_score_draw_no_chart(monkeypatch: pytest.MonkeyPatch) -> None:
    approx = run(
        "a",
        "alpacaeval",
        score=55.0,
        score_name="LC win rate (approx.)",
        win_rate=51.0,
        standard_error=1.5,
        length_controlled_win_rate=55.0,
        lc_method="APPROXIMATION: GLM without it",
        judge="gpt-4o",
        judge_method="logprobs",
        unparsable_judgments=2,
        judge_cost_usd=None,
    )
    exact = {**approx, "recipe": "b", "score_name": "LC win rate", "lc_method": "exact: AlpacaEval"}
    page = report.render_html([approx, exact])
    assert "<td>55.00 LC win rate (approx.)</td>" in page and "<td>55.00 LC win rate</td>" in page
    assert "LC win rate 55.00 (APPROXIMATION: GLM without it)" in page and "unparsable judgments: 2" in page
    assert "win rate 51.00 ± 1.50" in page and "judge gpt-4o: logprobs" in page and "<td>unknown</td>" in page
    assert "LC win rate" in texts(svgs(page)[0])  # the shared axis drops "(approx.)"
    assert "LC win rate (approx.)" in texts(svgs(report.render_html([approx]))[0])
    # No score, no chart; and then matplotlib is not even needed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    page = report.render_html([run("pending", score=None), run("unparsable", score=float("nan"))])
    assert "No run has a score yet: no chart." in page and "<svg" not in page and "<td>nan</td>" in page


def test_without_matplotlib_the_error_names_the_eval_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(ConfigError, match=r"matplotlib.*pip install 'moa-pipeline\[eval\]'"):
        report.render_html([run("a", score=1.0)])


def test_mt_bench_bars_and_qa_flips() -> None:
    first = run("first", "mt-bench", score=7.5, score_by_category={"writing": 8.0, "math": 6.5, "coding": 7.25})
    second = run("second", "mt-bench", score=6.0, score_by_category={"writing": 7.0, "math": 5.0})
    qa = run("moa", score=75.0, comparison={"baseline": "solo", "compared": 4, "baseline_accuracy": 50.0,
             "right_to_wrong": ["q1"], "wrong_to_right": ["q3", "q4", 7], "mcnemar_p": 0.625})  # fmt: skip
    page = report.render_html([first, second, qa])
    assert "<h3>Score by category (1-10)</h3>" in page
    bars = texts(svgs(page)[1])
    assert {"coding", "math", "writing", "first", "second", "score (1-10)"} <= set(bars)
    assert {"8.00", "6.50", "7.25", "7.00", "5.00"} <= set(bars)  # each bar's value
    assert (
        "<b>moa</b> vs baseline <b>solo</b> on 4 questions: accuracy 75.00 vs 50.00; "
        "right→wrong 1 (q1), wrong→right 3 (q3, q4, 7); exact McNemar p = 0.625"
    ) in page


def test_charts_are_inline_svg_with_ids_of_their_own_and_the_page_is_deterministic() -> None:
    runs = [
        run("a", "mt-bench", score=7.0, cost_per_item_usd=0.01, score_by_category={"math": 7.0}),
        run("b", score=50.0, cost_per_item_usd=0.01),
        run("c", "alpacaeval", score=50.0, cost_per_item_usd=0.01),
    ]
    page = report.render_html(runs)
    assert page == report.render_html(runs)  # no date, no random id
    assert "<?xml" not in page and "DOCTYPE svg" not in page and "<metadata" not in page
    ids = re.findall(r'\bid="([^"]+)"', "".join(svgs(page)))
    referenced = set(re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', page))
    for clip, marker in referenced:
        assert ids.count(clip or marker) == 1  # defined once on the page: no chart borrows another's
    assert {"chart0-run0", "chart1-run0", "chart2-run0"} <= set(ids)
    assert "$\\frac$ (1.0)" in texts(svgs(report.render_html([run("$\\frac$", score=1.0)]))[0])  # no mathtext


def test_load_runs_fmt_and_the_terminal_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "qa"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(run("[b]x[/b]", score=75.0, cost_per_item_usd=None)))
    (loaded,) = report.load_runs([folder])
    assert loaded["directory"] == str(folder) and loaded["recipe"] == "[b]x[/b]"
    with pytest.raises(DataError, match=r"has no summary\.json"):
        report.load_runs([tmp_path])
    assert report.table_rows([loaded]) == [["[b]x[/b]", "qa", "4/4", "75.00", "unknown", "-", "4.0", "0"]]
    assert report.HEADERS[0] == "recipe" and len(report.HEADERS) == 8
    assert (report.fmt(None, prefix="$"), report.fmt(None), report.fmt(1.23456, 3), report.fmt(3, suffix=" s")) == (
        "unknown", "-", "1.235", "3 s"
    )  # fmt: skip
    report.print_table([loaded])
    assert "[b]x[/b]" in capsys.readouterr().out  # the recipe name is text, not rich markup
