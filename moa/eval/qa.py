"""Your own question set, scored without a judge, and compared with a baseline recipe.

Input: JSONL, one object per line: ``id``, ``prompt``, and either ``answers``
(a list; an answer counts when it appears as a whole word, or as the same
number, in the output) or ``regex`` (a Python regular expression searched in
the output).  With a baseline (say the best single model), the report lists
the questions that flipped right->wrong and wrong->right, and the exact
McNemar p-value of the difference: small models and weak aggregators often
make MoA worse than its best member, and this is how to find out cheaply.
"""

from __future__ import annotations

import hashlib
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
    run_in_order,
    trace_record,
    update_summary,
    write_summary,
)
from moa.eval._runner import RunStats
from moa.eval._store import write_jsonl

RESULTS_FILE = "qa_results.jsonl"
_NUMBER = re.compile(r"[-+]?\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?")


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
        require(row, "prompt", str, where)
        has_answers, has_regex = "answers" in row, "regex" in row
        if has_answers == has_regex:
            raise DataError(f"{where}: give exactly one of `answers` (a list) or `regex`")
        if has_answers:
            answers = require(row, "answers", list, where)
            if not answers or not all(isinstance(a, str | int | float) for a in answers):
                raise DataError(f"{where}: `answers` must be a non-empty list of strings or numbers")
        else:
            try:
                re.compile(require(row, "regex", str, where))
            except re.error as exc:
                raise DataError(f"{where}: `regex` does not compile: {exc}") from exc
    return rows


def is_correct(output: str, row: dict[str, Any]) -> bool:
    """Whole-word (case-insensitive) or same-number match of any answer, or a regex search."""
    if "regex" in row:
        return re.search(row["regex"], output) is not None
    numbers = {_as_number(m) for m in _NUMBER.findall(output)}
    for answer in row["answers"]:
        value = _as_number(str(answer))
        if value is not None and value in numbers:
            return True
        if re.search(rf"(?<!\w){re.escape(str(answer))}(?!\w)", output, re.IGNORECASE):
            return True
    return False


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _key(row: dict[str, Any]) -> str:
    return f"{row['id']}:{hashlib.sha1(row['prompt'].encode()).hexdigest()[:10]}"


async def generate(
    ctx: EvalContext,
    data: Path,
    out: Path,
    *,
    limit: int | None = None,
    concurrency: int = 8,
    show_progress: bool | None = None,
) -> tuple[dict[str, Any], RunStats]:
    """Answer and score every question (resumably); write ``qa_results.jsonl`` and ``summary.json``."""
    rows = read_questions(data)[:limit]
    items = [(_key(row), row) for row in rows]

    async def work(row: dict[str, Any]) -> dict[str, Any]:
        result = await ctx.answer(row["prompt"], _key(row))
        return {
            "id": row["id"],
            "prompt": row["prompt"],
            "output": result.output,
            "correct": is_correct(result.output, row),
            **trace_record([result]),
        }

    finished, stats = await run_in_order(
        ctx,
        f"qa {ctx.recipe.name}",
        items,
        work,
        out / ITEMS_FILE,
        concurrency=concurrency,
        show_progress=show_progress,
    )
    write_jsonl(out / RESULTS_FILE, [{k: v for k, v in r.items() if k != "traces"} for r in finished])
    correct = sum(r["correct"] for r in finished)
    summary = write_summary(
        out,
        "qa",
        ctx.recipe,
        stats,
        finished,
        {
            "score_name": "accuracy",
            "score": correct / len(finished) * 100 if finished else None,
            "correct": correct,
        },
    )
    return summary, stats


def compare(out: Path, baseline_out: Path) -> dict[str, Any]:
    """Flips and the exact McNemar p-value between a run and its baseline, on the questions both answered."""
    mine = {r["id"]: r["correct"] for r in read_jsonl(out / RESULTS_FILE)}
    base = {r["id"]: r["correct"] for r in read_jsonl(baseline_out / RESULTS_FILE)}
    shared = [qid for qid in mine if qid in base]
    right_to_wrong = [qid for qid in shared if base[qid] and not mine[qid]]
    wrong_to_right = [qid for qid in shared if not base[qid] and mine[qid]]
    baseline_summary = read_jsonl_summary(baseline_out)
    comparison = {
        "baseline": baseline_summary.get("recipe"),
        "baseline_accuracy": sum(base[q] for q in shared) / len(shared) * 100 if shared else None,
        "compared": len(shared),
        "right_to_wrong": right_to_wrong,
        "wrong_to_right": wrong_to_right,
        "mcnemar_p": _stats.mcnemar_exact(len(right_to_wrong), len(wrong_to_right)),
    }
    update_summary(out, comparison=comparison)
    return comparison


def read_jsonl_summary(out: Path) -> dict[str, Any]:
    import json

    path = out / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}
