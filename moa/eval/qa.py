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
from collections.abc import Mapping
from dataclasses import dataclass
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
from moa.eval._store import write_jsonl
from moa.eval.benchmark import EvalOptions, JudgeSetup
from moa.result import LayerResult

RESULTS_FILE = "qa_results.jsonl"
# A number as written in prose: an optional sign (not after a letter or digit: "5-3" is no -3), thousands
# grouped by commas only in threes ("1,2,3" is three numbers), decimals, an exponent; not glued to letters.
_NUMBER = re.compile(
    r"(?<![\w.,])(?:(?<![\w-])[-+])?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?<=\d)(?:[eE][-+]?\d+)?(?![\w]|[.,]\d)"
)


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


MODES = ("last-number", "final-line", "anywhere")
MODES_TEXT = "last-number, final-line, anywhere or regex:PATTERN"


@dataclass(frozen=True)
class Scoring:
    """Which part of an output holds its answer (``moa eval qa --score``).

    Not part of the run's identity: a finished run re-scored another way needs no new call.
    """

    mode: str = "last-number"
    pattern: re.Pattern[str] | None = None  # mode "regex"

    def __post_init__(self) -> None:
        if self.mode not in (*MODES, "regex") or (self.mode == "regex") != (self.pattern is not None):
            raise ValueError(f"no scoring {self.mode!r} with pattern {self.pattern!r}: use Scoring.parse()")

    @classmethod
    def parse(cls, text: str) -> Scoring:
        """``last-number``, ``final-line``, ``anywhere`` or ``regex:PATTERN``; a ``ValueError`` says why not."""
        if text in MODES:
            return cls(text)
        if not text.startswith("regex:"):
            raise ValueError(f"{text!r} is not a scoring mode: use {MODES_TEXT}")
        if not text.removeprefix("regex:"):
            raise ValueError(f"{text!r}: the pattern is empty")
        try:
            return cls("regex", re.compile(text.removeprefix("regex:")))
        except re.error as exc:
            raise ValueError(f"{text!r}: the pattern does not compile: {exc}") from None

    def __str__(self) -> str:
        return f"regex:{self.pattern.pattern}" if self.pattern is not None else self.mode

    def answer(self, output: str) -> str | None:
        """Mode ``regex``: group 1 (without groups, the whole match) of the last match that gives a non-blank one."""
        assert self.pattern is not None
        found = None
        for match in self.pattern.finditer(output):
            text = match.group(1) if self.pattern.groups else match.group(0)
            if text is not None and text.strip():  # `\d*` matches nothing at the end, after the answer
                found = text
        return found


def is_correct(output: str, row: dict[str, Any], scoring: Scoring = Scoring()) -> bool:
    """Whether the output's answer is one of the row's (``answers``) or matches its ``regex``, read as ``scoring`` says.

    ``last-number`` (the default): a numeric answer is the output's *last* number, by value
    (``1,024`` = ``1024`` = ``1024.0``), never part of another one (``5`` is not in ``-5``, ``5.5`` or
    ``5,000``): an answer ends on its result, and a number anywhere would count the question's own
    numbers echoed back, or a chain of thought's intermediate steps, as right.  Other answers match
    as whole words, case-insensitive, and a row's regex is searched, anywhere in the output.
    ``final-line``: the same, in the output's last non-empty line only.  ``anywhere``: a number
    counts wherever it stands.  ``regex:PATTERN``: the answer is what ``Scoring.answer`` finds
    (none: wrong), compared as its one number by value, or else as a word, case-insensitive, with
    surrounding punctuation and quotes ignored; a row's regex is searched in it.
    """
    if scoring.pattern is not None:
        found = scoring.answer(output)
        if found is None:
            return False
        if "regex" in row:
            return re.search(row["regex"], found) is not None
        return any(_is_answer(found, answer) for answer in row["answers"])
    text = _final_line(output) if scoring.mode == "final-line" else output
    if "regex" in row:
        return re.search(row["regex"], text) is not None
    numbers = [_as_number(number) for number in _NUMBER.findall(text)]
    scored = numbers if scoring.mode == "anywhere" else numbers[-1:]
    for answer in row["answers"]:
        value = _as_number(str(answer))
        if value is not None:
            if value in scored:
                return True
        elif re.search(rf"(?<!\w){re.escape(str(answer))}(?!\w)", text, re.IGNORECASE):
            return True
    return False


def finish_reason(record: Mapping[str, Any]) -> str | None:
    """Why the call that wrote an item's output stopped (``length``: cut by ``max_tokens``), from its trace."""
    traces = record.get("traces") or []
    layers = traces[-1].get("layers") if traces else None
    passed = LayerResult.model_validate(layers[-1]).passed_on() if layers else []
    return passed[0].finish_reason if passed else None


def score(record: Mapping[str, Any], row: dict[str, Any], scoring: Scoring) -> bool:
    """An item's output is right, as ``scoring`` reads it; a cut one has no answer (it ends on a step, not a result)."""
    return finish_reason(record) != "length" and is_correct(record["output"], row, scoring)


def _final_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _is_answer(found: str, answer: Any) -> bool:
    value = _as_number(str(answer))
    if value is None:
        return _bare(found).casefold() == _bare(str(answer)).casefold()
    numbers = _NUMBER.findall(found)
    return len(numbers) == 1 and _as_number(numbers[0]) == value


def _bare(text: str) -> str:
    return text.strip().strip(".,;:!?\"'*`").strip()


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


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
    scoring: Scoring = Scoring(),
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
    )
    return summary, stats


def confidence_of(record: Mapping[str, Any]) -> str | None:
    """The confidence of an item's answer (``MoAResult.confidence``), read from its trace."""
    traces = record.get("traces") or []
    last = traces[-1] if traces and isinstance(traces[-1], Mapping) else {}
    found = last.get("confidence")
    return found if found in ("verified", "unverified") else None


def confidence_summary(finished: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For recipes whose answers are checked (``verify``: a validator, an agreement): how many answers were
    verified or not, and how many of each were right (the precision of the check); None when none was."""
    if not any(r["confidence"] for r in finished):
        return None
    found: dict[str, Any] = {}
    for level in ("verified", "unverified"):
        these = [r for r in finished if r["confidence"] == level]
        right = sum(r["correct"] for r in these)
        found[level] = {"answers": len(these), "correct": right,
                        "accuracy": right / len(these) * 100 if these else None}  # fmt: skip
    found["unchecked"] = sum(r["confidence"] is None for r in finished)
    return found


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

    def __init__(self, scoring: Scoring = Scoring()) -> None:
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
