"""Your own question set, scored without a judge, and compared with a baseline recipe.

Input: JSONL, one object per line: ``id``, ``prompt``, and either ``answers``
(a list; an answer counts when it appears as a whole word, or as the same
number, in the output) or ``regex`` (a Python regular expression searched in
the output).  ``Scoring`` says which part of the output is read (``--score``);
an output cut by ``max_tokens`` has no answer.  With a baseline (say the best
single model), both scored alike, the report lists the questions that flipped
right->wrong and wrong->right, and the exact McNemar p-value of the
difference: small models and weak aggregators often make MoA worse than its
best member, and this is how to find out cheaply.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

from moa.eval import _stats
from moa.eval._common import (
    ITEMS_FILE,
    DataError,
    EvalContext,
    read_jsonl,
    require,
    require_text,
    run_in_order,
    trace_record,
    update_summary,
    write_summary,
)
from moa.eval._runner import RunStats
from moa.eval._scoring import DEFAULT_SCORING, confidence_of, confidence_summary, finish_reason, score
from moa.eval._scoring import MODES as MODES
from moa.eval._scoring import MODES_TEXT as MODES_TEXT
from moa.eval._scoring import Scoring as Scoring  # the QA scoring API, re-exported
from moa.eval._scoring import is_correct as is_correct
from moa.eval._store import write_jsonl
from moa.eval.benchmark import EvalOptions, JudgeSetup

RESULTS_FILE = "qa_results.jsonl"


def read_questions(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path)
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        where = f"{path}, line {number}"
        if not isinstance(row.get("id"), str | int):
            raise DataError(f"{where}: field `id` must be a string or number")
        if str(row["id"]) in seen:
            raise DataError(f"{where}: duplicate id {row['id']!r}")
        seen.add(str(row["id"]))
        require_text(row.get("prompt"), f"{where}: field `prompt`")
        has_answers, has_regex = "answers" in row, "regex" in row
        if has_answers == has_regex:
            raise DataError(f"{where}: give exactly one of `answers` (a list) or `regex`")
        if has_answers:
            answers = require(row, "answers", list, where)
            if not answers or not all(_good_answer(a) for a in answers):
                raise DataError(
                    f"{where}: `answers` must be a non-empty list of non-blank strings or finite numbers "
                    "(a blank answer would match any output)"
                )
        else:
            pattern = require(row, "regex", str, where)
            if not pattern:
                raise DataError(f"{where}: `regex` is empty: it would match any output")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise DataError(f"{where}: `regex` does not compile: {exc}") from exc
    return rows


def _good_answer(answer: Any) -> bool:
    if isinstance(answer, bool):
        return False
    if isinstance(answer, int | float):
        return math.isfinite(answer)
    return isinstance(answer, str) and bool(answer.strip())


def _key(row: dict[str, Any]) -> str:
    return f"{row['id']}:{hashlib.sha1(row['prompt'].encode()).hexdigest()[:10]}"


def worst_case(ctx: EvalContext, row: dict[str, Any]) -> float | None:
    """The most answering one question can cost (what its budget reservation holds)."""
    return ctx.worst_case(row["prompt"], _key(row))


def items(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(checkpoint key, row) per question."""
    return [(_key(row), row) for row in rows]


async def generate(
    ctx: EvalContext,
    data: Path,
    out: Path,
    *,
    limit: int | None = None,
    concurrency: int = 8,
    run: str | None = None,
    show_progress: bool | None = None,
    scoring: Scoring = DEFAULT_SCORING,
) -> tuple[dict[str, Any], RunStats]:
    """Answer and score every question (resumably); write ``qa_results.jsonl`` and ``summary.json``.

    Accuracy counts every question that was tried: a question whose run failed,
    or whose output was cut by ``max_tokens``, counts as wrong (it is in the
    denominator); questions not started (budget, full disk) are left out and the
    summary says the run is incomplete.  Each answer is scored against the data
    file as it is now, and as ``scoring`` says, so a corrected answer key or
    another scoring re-scores finished items without a new call.
    """
    rows = read_questions(data)[:limit]

    async def work(row: dict[str, Any]) -> dict[str, Any]:
        result = await ctx.answer(row["prompt"], _key(row))
        record = {"id": row["id"], "prompt": row["prompt"], "output": result.output, **trace_record([result])}
        return {**record, "correct": score(record, row, scoring)}

    finished, stats = await run_in_order(
        ctx,
        f"qa {ctx.recipe.name}",
        items(rows),
        work,
        out / ITEMS_FILE,
        run=run,
        worst_case=lambda row: worst_case(ctx, row),
        concurrency=concurrency,
        show_progress=show_progress,
    )
    by_key = {_key(row): row for row in rows}
    for record in finished:
        record["correct"] = score(record, by_key[record["key"]], scoring)
        record["finish_reason"] = finish_reason(record)
        record["confidence"] = confidence_of(record)
    write_jsonl(out / RESULTS_FILE, [{k: v for k, v in r.items() if k not in ("traces", "run")} for r in finished])
    correct = sum(r["correct"] for r in finished)
    attempted = len(finished) + stats.failed
    summary = write_summary(
        out,
        "qa",
        ctx.recipe,
        stats,
        finished,
        {
            "score_name": f"accuracy ({scoring})",
            "score": correct / attempted * 100 if attempted else None,
            "correct": correct,
            "attempted": attempted,
            "scoring": str(scoring),
            "cut": sum(r["finish_reason"] == "length" for r in finished),
            "confidence": confidence_summary(finished),
            "score_note": "correct / questions tried; a question whose run failed, or whose output was cut by "
            "max_tokens, counts as wrong",
        },
        ctx.cache,
    )
    return summary, stats


def compare(out: Path, baseline_out: Path) -> dict[str, Any]:
    """Flips and the exact McNemar p-value between a run and its baseline, on the questions both answered.

    Both must have been scored the same way (``moa eval qa`` scores both sides with its ``--score``).
    """
    scorings = read_summary(out).get("scoring"), read_summary(baseline_out).get("scoring")
    if scorings[0] != scorings[1]:
        raise DataError(f"{out} was scored by {scorings[0]} and its baseline {baseline_out} by {scorings[1]}: "
                        "score both the same way to compare them")  # fmt: skip
    mine = {r["id"]: r["correct"] for r in read_jsonl(out / RESULTS_FILE)}
    base = {r["id"]: r["correct"] for r in read_jsonl(baseline_out / RESULTS_FILE)}
    shared = [qid for qid in mine if qid in base]
    right_to_wrong = [qid for qid in shared if base[qid] and not mine[qid]]
    wrong_to_right = [qid for qid in shared if not base[qid] and mine[qid]]
    comparison = {
        "baseline": read_summary(baseline_out).get("recipe"),
        "scoring": scorings[0],
        "accuracy": sum(mine[q] for q in shared) / len(shared) * 100 if shared else None,
        "baseline_accuracy": sum(base[q] for q in shared) / len(shared) * 100 if shared else None,
        "compared": len(shared),
        "only_one_answered": len(set(mine) ^ set(base)),
        "right_to_wrong": right_to_wrong,
        "wrong_to_right": wrong_to_right,
        "mcnemar_p": _stats.mcnemar_exact(len(right_to_wrong), len(wrong_to_right)),
    }
    update_summary(out, comparison=comparison)
    return comparison


def read_summary(out: Path) -> dict[str, Any]:
    import json

    path = out / "summary.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class QA:
    """Your own question set: scored by answer match, no judge (``moa eval qa``), as ``scoring`` says."""

    name = "qa"
    judge_files: tuple[str, ...] = ()
    judge_summary_keys: tuple[str, ...] = ()

    def __init__(self, scoring: Scoring = DEFAULT_SCORING) -> None:
        self.scoring = scoring

    def read(self, options: EvalOptions) -> list[dict[str, Any]]:
        return read_questions(options.data)[: options.limit]

    def items(self, rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        return list(items(rows))

    def run_keys(self, rows: list[dict[str, Any]]) -> list[str]:
        return [key for key, _ in items(rows)]

    def worst_case(self, ctx: EvalContext, item: Any) -> float | None:
        return worst_case(ctx, item)

    async def generate(self, ctx: EvalContext, options: EvalOptions, run: str) -> tuple[dict[str, Any], RunStats]:
        return await generate(
            ctx, options.data, options.out, limit=options.limit, concurrency=options.concurrency, run=run,
            scoring=self.scoring,
        )  # fmt: skip

    def judge_setup(self, options: EvalOptions) -> JudgeSetup | None:
        return None

    async def judge(
        self, ctx: EvalContext, options: EvalOptions, run: str, lc_data: Any
    ) -> tuple[dict[str, Any], RunStats]:
        raise NotImplementedError("qa has no judge")

    def describe(self, summary: dict[str, Any], stats: RunStats, judged: bool) -> list[str]:
        name = summary.get("recipe", "?")
        if summary["score"] is None:
            return [f"{name}: accuracy unknown (no question was tried)"]
        cut = f"; {summary['cut']} cut by max_tokens, counted wrong" if summary.get("cut") else ""
        failed = f"; {stats.failed} failed, counted wrong" if stats.failed else ""
        missing = stats.not_started + stats.unsaved
        tail = f"; {missing} not run" if missing else ""
        counts = f"{summary['correct']}/{summary['attempted']}{cut}{failed}{tail}"
        lines = [f"{name}: accuracy {summary['score']:.1f}% ({counts}), scored by {summary.get('scoring', '?')}"]
        checked = summary.get("confidence")
        if checked:
            parts = []
            for level in ("verified", "unverified"):
                found = checked[level]
                right = f", {found['accuracy']:.1f}%" if found["accuracy"] is not None else ""
                parts.append(f"{found['answers']} {level} ({found['correct']} right{right})")
            lines.append(f"{name}: answers {', '.join(parts)}")
        return lines

    def output_file(self, summary: dict[str, Any]) -> str:
        return RESULTS_FILE


BENCHMARK = QA()
