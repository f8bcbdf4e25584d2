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

import time
from pathlib import Path
from typing import Any

from moa._errors import ConfigError
from moa.eval._common import (
    ITEMS_FILE,
    EvalContext,
    run_in_order,
    short_id,
    trace_record,
    write_summary,
)
from moa.eval._identity import file_identity
from moa.eval._runner import RunStats
from moa.eval._store import write_jsonl
from moa.eval.benchmark import EvalOptions, JudgeSetup
from moa.recipe import CallParams

from .grading import (
    JUDGE_FILES,
    JUDGE_SUMMARY_KEYS,
    JUDGMENT_FILE,
    build_judge_prompt,
    judge,
    judge_recipe,
    mtbench_scores,
    parse_rating,
    read_judge_prompts,
    read_reference_answers,
)
from .questions import (
    CATEGORY_TEMPERATURE,
    NEED_REFERENCE,
    _key,
    answer_file,
    items,
    read_questions,
    reuse_keys,
    worst_case,
)

__all__ = [
    "BENCHMARK",
    "CATEGORY_TEMPERATURE",
    "JUDGE_FILES",
    "JUDGE_SUMMARY_KEYS",
    "JUDGMENT_FILE",
    "NEED_REFERENCE",
    "MTBench",
    "answer_file",
    "build_judge_prompt",
    "generate",
    "judge",
    "judge_recipe",
    "items",
    "mtbench_scores",
    "parse_rating",
    "read_judge_prompts",
    "read_questions",
    "read_reference_answers",
    "reuse_keys",
    "worst_case",
]


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
    summary = write_summary(out, "mt-bench", ctx.recipe, stats, finished, {"model_id": name}, ctx.cache)
    return summary, stats


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

        def shown(value: float | None) -> str:
            return "unknown" if value is None else f"{value:.2f}"

        return [
            f"MT-Bench score {shown(summary['score'])}; turn 1 {shown(summary['score_turn_1'])}, turn 2 "
            f"{shown(summary['score_turn_2'])}; unparsable ratings: {summary['unparsable_judgments']}"
        ]

    def output_file(self, summary: dict[str, Any]) -> str:
        return f"{summary.get('model_id', 'answers')}.jsonl"


BENCHMARK = MTBench()
