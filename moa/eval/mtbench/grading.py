"""MT-Bench grading: FastChat's single-answer judge prompts, the ``[[x]]`` rating, the scores.

Judging uses the user-supplied ``judge_prompts.jsonl`` (``single-v1``,
``single-v1-multi-turn``, and the reference-guided ``single-math-v1*`` for
math/reasoning/coding when reference answers are given); the rating is parsed
from ``[[x]]`` and unparsable ratings are counted, not dropped silently.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from moa.eval._common import (
    ITEMS_FILE,
    JUDGMENTS_FILE,
    DataError,
    EvalContext,
    read_jsonl,
    run_in_order,
    trace_record,
    update_summary,
)
from moa.eval._runner import RunStats
from moa.eval._store import Checkpoint, write_jsonl
from moa.recipe import Recipe

from .questions import NEED_REFERENCE, items, read_questions

JUDGMENT_FILE = "model_judgment.jsonl"
#: What grading adds to the folder and to ``summary.json`` (moved aside or dropped when the judge changes).
JUDGE_FILES = ("judgments.jsonl", JUDGMENT_FILE)
JUDGE_SUMMARY_KEYS = (
    "score", "score_name", "score_turn_1", "score_turn_2", "score_by_category", "unparsable_judgments", "judge",
    "judged", "judge_complete", "judge_failures", "judge_cost_usd",
)  # fmt: skip
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_LOOSE = re.compile(r"\[(\d+\.?\d*)\]")


def read_judge_prompts(path: Path) -> dict[str, dict[str, Any]]:
    prompts = {row.get("name"): row for row in read_jsonl(path)}
    for name in ("single-v1", "single-v1-multi-turn"):
        if name not in prompts:
            raise DataError(f"{path}: no `{name}` judge prompt (FastChat judge_prompts.jsonl expected)")
    return prompts  # type: ignore[return-value]


def read_reference_answers(path: Path) -> dict[int, list[str]]:
    """FastChat reference answers (model-answer format) by question id."""
    return {row["question_id"]: row["choices"][0]["turns"] for row in read_jsonl(path)}


def judge_recipe(model: str) -> Recipe:
    agent = {"model": model, "temperature": 0.0, "max_tokens": 2048}
    return Recipe.model_validate({"name": f"judge:{model}", "layers": [{"kind": "propose", "agents": [agent]}]})


def parse_rating(judgment: str) -> float:
    """The ``[[x]]`` rating of a judgment (``[x]`` accepted as a fallback); -1 when there is none."""
    match = _RATING.search(judgment) or _RATING_LOOSE.search(judgment)
    return float(match.group(1)) if match else -1.0


def build_judge_prompt(
    prompts: dict[str, dict[str, Any]],
    question: dict[str, Any],
    answers: list[str],
    turn: int,
    reference: list[str] | None,
) -> tuple[str, str, str]:
    """(prompt name, system prompt, user prompt) for one turn, as FastChat builds them."""
    use_reference = question["category"] in NEED_REFERENCE and reference is not None
    base = "single-math-v1" if use_reference and "single-math-v1" in prompts else "single-v1"
    name = base if turn == 1 else f"{base}-multi-turn"
    prompt = prompts[name]
    values: dict[str, str] = {}
    if turn == 1:
        values = {"question": question["turns"][0], "answer": answers[0]}
        if use_reference and reference:
            values["ref_answer_1"] = reference[0]
    else:
        values = {
            "question_1": question["turns"][0],
            "question_2": question["turns"][1],
            "answer_1": answers[0],
            "answer_2": answers[1],
        }
        if use_reference and reference:
            values.update(ref_answer_1=reference[0], ref_answer_2=reference[1] if len(reference) > 1 else "")
    try:
        user = prompt["prompt_template"].format(**values)
    except (KeyError, IndexError, ValueError) as exc:  # a value moa does not have, or a stray brace
        raise DataError(f"judge prompt {name!r} needs a value moa does not have: {exc}") from exc
    return name, str(prompt.get("system_prompt", "")), user


async def judge(
    out: Path,
    judge_ctx: EvalContext,
    questions_file: Path,
    prompts_file: Path,
    *,
    reference_file: Path | None = None,
    concurrency: int = 8,
    run: str | None = None,
    show_progress: bool | None = None,
) -> tuple[dict[str, Any], RunStats]:
    """Grade every answered turn; write FastChat's judgment JSONL and the scores."""
    prompts = read_judge_prompts(prompts_file)
    references = read_reference_answers(reference_file) if reference_file else {}
    answered = Checkpoint(out / ITEMS_FILE).load()
    judge_model = judge_ctx.recipe.layers[0].call_agents()[0].model
    model_name = _model_id(out) or judge_ctx.recipe.name
    graded = []
    # Only the answers of the questions as they are now: an answer to an edited question is never judged.
    for key, question in sorted(items(read_questions(questions_file)), key=lambda item: item[1]["question_id"]):
        record = answered.get(key)
        if record is None:
            continue
        for turn in range(1, min(2, len(record["answers"])) + 1):
            graded.append((f"{key}:t{turn}", (question, record, turn)))

    def judge_messages(item: tuple[dict[str, Any], dict[str, Any], int]) -> tuple[str, str, list[dict[str, str]]]:
        question, record, turn = item
        name, system, user = build_judge_prompt(
            prompts, question, record["answers"], turn, references.get(question["question_id"])
        )
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return name, user, messages

    async def work(item: tuple[dict[str, Any], dict[str, Any], int]) -> dict[str, Any]:
        question, _, turn = item
        name, user, messages = judge_messages(item)
        result = await judge_ctx.answer(messages)
        return {
            "question_id": question["question_id"],
            "category": question["category"],
            "model": model_name,
            "judge": [judge_model, name],
            "user_prompt": user,
            "judgment": result.output,
            "score": parse_rating(result.output),
            "turn": turn,
            "tstamp": time.time(),
            **trace_record([result]),
        }

    judged, stats = await run_in_order(
        judge_ctx,
        "judge mt-bench",
        graded,
        work,
        out / JUDGMENTS_FILE,
        run=run,
        worst_case=lambda item: judge_ctx.worst_case(judge_messages(item)[2]),
        concurrency=concurrency,
        show_progress=show_progress,
    )
    fastchat = [
        {
            "question_id": j["question_id"],
            "model": model_name,
            "judge": j["judge"],
            "user_prompt": j["user_prompt"],
            "judgment": j["judgment"],
            "score": j["score"],
            "turn": j["turn"],
            "tstamp": j["tstamp"],
        }
        for j in judged
    ]
    write_jsonl(out / JUDGMENT_FILE, fastchat)
    costs = [j.get("cost_usd") for j in judged]
    summary = update_summary(
        out,
        **mtbench_scores(judged),
        judge=judge_model,
        judged=len(judged),
        judge_complete=stats.complete,
        judge_failures=[{"key": key, "error": error} for key, error in stats.errors[:100]],
        judge_cost_usd=None if any(c is None for c in costs) else sum(c or 0.0 for c in costs),
    )
    return summary, stats


def mtbench_scores(judgments: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean rating overall, per turn and per category; ratings of -1 (unparsable) are counted apart."""
    valid = [j for j in judgments if j["score"] >= 0]
    by_turn: dict[int, list[float]] = defaultdict(list)
    by_category: dict[str, list[float]] = defaultdict(list)
    for j in valid:
        by_turn[j["turn"]].append(j["score"])
        by_category[j["category"]].append(j["score"])

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return {
        "score_name": "MT-Bench score",
        "score": mean([j["score"] for j in valid]),
        "score_turn_1": mean(by_turn[1]),
        "score_turn_2": mean(by_turn[2]),
        "score_by_category": {c: mean(v) for c, v in sorted(by_category.items())},
        "unparsable_judgments": len(judgments) - len(valid),
    }


def _model_id(out: Path) -> str | None:

    path = out / "summary.json"
    if path.exists():
        value = json.loads(path.read_text()).get("model_id")
        return str(value) if value else None
    return None
