"""MT-Bench: answer both turns, write FastChat's answer JSONL, grade with FastChat's single-answer judge.

Turn 2 sees turn 1's final answer as the assistant turn of the conversation.
Each category's temperature (FastChat's table) overrides the recipe's for
every call of that question.  Judging uses the user-supplied
``judge_prompts.jsonl`` (``single-v1``, ``single-v1-multi-turn``, and the
reference-guided ``single-math-v1*`` for math/reasoning/coding when reference
answers are given); the rating is parsed from ``[[x]]`` and unparsable ratings
are counted, not dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from moa._errors import ConfigError
from moa.eval._common import (
    ITEMS_FILE,
    JUDGMENTS_FILE,
    DataError,
    EvalContext,
    read_jsonl,
    require,
    require_text,
    run_in_order,
    short_id,
    trace_record,
    update_summary,
    write_summary,
)
from moa.eval._identity import file_identity
from moa.eval._runner import RunStats
from moa.eval._store import Checkpoint, write_jsonl
from moa.eval.benchmark import EvalOptions, JudgeSetup
from moa.recipe import CallParams, Recipe

#: FastChat's sampling temperature per category (llm_judge/common.py).
CATEGORY_TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
NEED_REFERENCE = {"math", "reasoning", "coding", "arena-hard-200"}
JUDGMENT_FILE = "model_judgment.jsonl"
#: What grading adds to the folder and to ``summary.json`` (moved aside or dropped when the judge changes).
JUDGE_FILES = ("judgments.jsonl", JUDGMENT_FILE)
JUDGE_SUMMARY_KEYS = (
    "score", "score_name", "score_turn_1", "score_turn_2", "score_by_category", "unparsable_judgments", "judge",
    "judged", "judge_complete", "judge_failures", "judge_cost_usd",
)  # fmt: skip
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_LOOSE = re.compile(r"\[(\d+\.?\d*)\]")


def read_questions(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path)
    seen: dict[int, int] = {}
    for number, row in enumerate(rows, start=1):
        where = f"{path}, line {number}"
        require(row, "question_id", int, where)
        if row["question_id"] in seen:
            raise DataError(
                f"{where}: duplicate question_id {row['question_id']} (first on line {seen[row['question_id']]}): "
                "answers are stored by question_id, so one of the two would be lost"
            )
        seen[row["question_id"]] = number
        require(row, "category", str, where)
        turns = require(row, "turns", list, where)
        if not turns:
            raise DataError(f"{where}: `turns` must be a non-empty list of strings")
        for turn, text in enumerate(turns, start=1):
            require_text(text, f"{where}: turn {turn}")
    return rows


def worst_case(ctx: EvalContext, row: dict[str, Any]) -> float | None:
    """The most answering one question can cost: each turn is a run that sees every earlier answer at its longest."""
    key, total = _key(row), 0.0
    longest = "x" * ctx.answer_chars_max()
    temperature = CallParams(temperature=CATEGORY_TEMPERATURE.get(row["category"], 0.7))
    conversation: list[dict[str, str]] = []
    for turn, question in enumerate(row["turns"]):
        conversation.append({"role": "user", "content": question})
        worst = ctx.worst_case(conversation, key if turn == 0 else f"{key}#turn{turn + 1}", temperature)
        if worst is None:
            return None
        total += worst
        conversation.append({"role": "assistant", "content": longest})
    return total


def _key(row: dict[str, Any]) -> str:
    """The checkpoint key: the id and a digest of the question, so a changed question is answered anew."""
    content = json.dumps([row["category"], row["turns"]], ensure_ascii=False)
    return f"{row['question_id']}:{hashlib.sha1(content.encode()).hexdigest()[:10]}"


def items(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(checkpoint key, row) per question."""
    return [(_key(row), row) for row in rows]


def reuse_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The keys of every turn's run (for ``--reaggregate-from``)."""
    keys = []
    for key, row in items(rows):
        keys += [key if turn == 0 else f"{key}#turn{turn + 1}" for turn in range(len(row["turns"]))]
    return keys


def answer_file(model_id: str) -> str:
    """FastChat's answer file name, ``<model_id>.jsonl``: refused when it would not be a plain file in ``--out``."""
    name = f"{model_id}.jsonl"
    unsafe = (
        not model_id.strip()
        or model_id != model_id.strip()
        or any(c in model_id for c in '/\\:*?"<>|\0')
        or model_id.startswith(".")
        or any(ord(c) < 32 for c in model_id)
        or len(name.encode()) > 255
    )
    if unsafe:
        raise ConfigError(
            f"model id {model_id!r} cannot name the answer file {name!r} inside --out (no path separators, "
            "control characters or leading dot); pass --model-id NAME"
        )
    return name


async def generate(
    ctx: EvalContext,
    questions: Path,
    out: Path,
    *,
    limit: int | None = None,
    model_id: str | None = None,
    concurrency: int = 8,
    run: str | None = None,
    show_progress: bool | None = None,
) -> tuple[dict[str, Any], RunStats]:
    """Answer every question's turns (resumably); write ``<model_id>.jsonl`` and ``summary.json``."""
    rows = read_questions(questions)[:limit]
    name = model_id or ctx.recipe.name
    answers_path = out / answer_file(name)

    async def work(row: dict[str, Any]) -> dict[str, Any]:
        key = _key(row)
        temperature = CATEGORY_TEMPERATURE.get(row["category"], 0.7)
        conversation: list[dict[str, str]] = []
        results, answers = [], []
        for turn, question in enumerate(row["turns"]):
            conversation.append({"role": "user", "content": question})
            result = await ctx.answer(
                list(conversation),
                key if turn == 0 else f"{key}#turn{turn + 1}",
                settings=CallParams(temperature=temperature),
            )
            conversation.append({"role": "assistant", "content": result.output})
            results.append(result)
            answers.append(result.output)
        return {
            "question_id": row["question_id"],
            "category": row["category"],
            "answers": answers,
            "temperature": temperature,
            "answer_id": short_id(),
            "tstamp": time.time(),
            **trace_record(results),
        }

    finished, stats = await run_in_order(
        ctx,
        "mt-bench",
        items(rows),
        work,
        out / ITEMS_FILE,
        run=run,
        worst_case=lambda row: worst_case(ctx, row),
        concurrency=concurrency,
        show_progress=show_progress,
    )
    answers = [
        {
            "question_id": r["question_id"],
            "answer_id": r["answer_id"],
            "model_id": name,
            "choices": [{"index": 0, "turns": r["answers"]}],
            "tstamp": r["tstamp"],
        }
        for r in finished
    ]
    write_jsonl(answers_path, answers)
    summary = write_summary(out, "mt-bench", ctx.recipe, stats, finished, {"model_id": name})
    return summary, stats


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
    except (KeyError, IndexError) as exc:
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
    judge_model = judge_ctx.recipe.layers[0].agents[0].model
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
    import json

    path = out / "summary.json"
    if path.exists():
        value = json.loads(path.read_text()).get("model_id")
        return str(value) if value else None
    return None


class MTBench:
    """MT-Bench (``moa eval mt-bench``): two turns, FastChat's answer file, single-answer grading."""

    name = "mt-bench"
    judge_files: tuple[str, ...] = JUDGE_FILES
    judge_summary_keys: tuple[str, ...] = JUDGE_SUMMARY_KEYS

    def read(self, options: EvalOptions) -> list[dict[str, Any]]:
        return read_questions(options.data)[: options.limit]

    def items(self, rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        return list(items(rows))

    def run_keys(self, rows: list[dict[str, Any]]) -> list[str]:
        return reuse_keys(rows)

    def worst_case(self, ctx: EvalContext, item: Any) -> float | None:
        return worst_case(ctx, item)

    async def generate(self, ctx: EvalContext, options: EvalOptions, run: str) -> tuple[dict[str, Any], RunStats]:
        answer_file(options.name or ctx.recipe.name)  # an unsafe name fails before any call
        return await generate(
            ctx, options.data, options.out, limit=options.limit, model_id=options.name,
            concurrency=options.concurrency, run=run,
        )  # fmt: skip

    def judge_setup(self, options: EvalOptions) -> JudgeSetup | None:
        if options.judge is None:
            return None
        if options.judge_prompt is None:
            raise ConfigError("--judge needs --judge-prompts (FastChat's judge_prompts.jsonl)")
        read_judge_prompts(options.judge_prompt)
        if options.references is not None:
            read_reference_answers(options.references)
        return JudgeSetup(judge_recipe(options.judge), options.judge_prompt, file_identity(options.references))

    async def judge(
        self, ctx: EvalContext, options: EvalOptions, run: str, lc_data: Any
    ) -> tuple[dict[str, Any], RunStats]:
        assert options.judge_prompt is not None
        return await judge(
            options.out, ctx, options.data, options.judge_prompt, reference_file=options.references,
            concurrency=options.concurrency, run=run,
        )  # fmt: skip

    def describe(self, summary: dict[str, Any], stats: RunStats, judged: bool) -> list[str]:
        if not judged:
            return []
        return [
            f"MT-Bench score {summary['score']}; turn 1 {summary['score_turn_1']}, turn 2 "
            f"{summary['score_turn_2']}; unparsable ratings: {summary['unparsable_judgments']}"
        ]

    def output_file(self, summary: dict[str, Any]) -> str:
        return f"{summary.get('model_id', 'answers')}.jsonl"


BENCHMARK = MTBench()
