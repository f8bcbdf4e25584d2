"""AlpacaEval 2.0: generate the official model-outputs file, then judge it pairwise.

Generation reads the official eval set (a JSON list of objects with
``instruction`` and ``dataset``, e.g. ``gpt4_1106_preview.model_outputs.json``)
and writes ``model_outputs.json`` (``instruction, output, generator, dataset``)
in input order.  Judging follows the weighted annotator
(``weighted_alpaca_eval_gpt4_turbo``): a user-supplied chatml prompt file, one
output token, logprobs over ``m``/``M``, preference = expectation, the
official per-instruction output-order coin, then AlpacaEval's win rate and
standard error, and a length-controlled win rate.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

from moa._errors import ConfigError
from moa.eval import _lc, _stats
from moa.eval._common import (
    ITEMS_FILE,
    JUDGMENTS_FILE,
    DataError,
    EvalContext,
    read_json,
    require_text,
    run_in_order,
    trace_record,
    update_summary,
    write_summary,
)
from moa.eval._identity import file_identity
from moa.eval._runner import RunStats
from moa.eval._store import write_json
from moa.eval.benchmark import EvalOptions, JudgeSetup, read_text
from moa.recipe import Recipe

OUTPUTS_FILE = "model_outputs.json"
ANNOTATIONS_FILE = "annotations.json"
#: What judging adds to the folder and to ``summary.json`` (moved aside or dropped when the judge changes).
JUDGE_FILES = ("judgments.jsonl", ANNOTATIONS_FILE)
JUDGE_SUMMARY_KEYS = (
    "win_rate", "standard_error", "discrete_win_rate", "n_wins", "n_wins_base", "n_draws", "n_total",
    "unparsable_judgments", "judge_method", "length_controlled_win_rate", "lc_method", "lc_exact", "lc_C",
    "lc_weights", "lc_warning", "score", "score_name", "judge", "judged", "judge_complete", "judge_failures",
    "judge_cost_usd",
)  # fmt: skip
_PLACEHOLDER = re.compile(r"\{(instruction|output_1|output_2)\}")
_CHATML = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)\n?<\|im_end\|>", re.DOTALL)


def read_eval_set(path: Path) -> list[dict[str, Any]]:
    rows = read_json(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of objects with `instruction` (AlpacaEval format)")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}[{index}]: expected an object")
        require_text(row.get("instruction"), f"{path}[{index}]: field `instruction`")
    return rows


def _key(index: int, instruction: str) -> str:
    return f"{index}:{hashlib.sha1(instruction.encode()).hexdigest()[:10]}"


def worst_case(ctx: EvalContext, item: tuple[int, dict[str, Any]]) -> float | None:
    """The most answering one instruction can cost (what its budget reservation holds)."""
    index, row = item
    return ctx.worst_case(row["instruction"], _key(index, row["instruction"]))


def items(rows: list[dict[str, Any]]) -> list[tuple[str, tuple[int, dict[str, Any]]]]:
    """(checkpoint key, (index, row)) per instruction."""
    return [(_key(i, row["instruction"]), (i, row)) for i, row in enumerate(rows)]


async def generate(
    ctx: EvalContext,
    data: Path,
    out: Path,
    *,
    limit: int | None = None,
    generator: str | None = None,
    concurrency: int = 8,
    run: str | None = None,
    show_progress: bool | None = None,
) -> tuple[dict[str, Any], RunStats]:
    """Answer every instruction (resumably) and write ``model_outputs.json`` and ``summary.json``."""
    rows = read_eval_set(data)[:limit]
    name = generator or ctx.recipe.name

    async def work(item: tuple[int, dict[str, Any]]) -> dict[str, Any]:
        index, row = item
        result = await ctx.answer(row["instruction"], _key(index, row["instruction"]))
        return {
            "index": index,
            "instruction": row["instruction"],
            "dataset": row.get("dataset"),
            "output": result.output,
            **trace_record([result]),
        }

    finished, stats = await run_in_order(
        ctx,
        "alpacaeval",
        items(rows),
        work,
        out / ITEMS_FILE,
        run=run,
        worst_case=lambda item: worst_case(ctx, item),
        concurrency=concurrency,
        show_progress=show_progress,
    )
    outputs = [
        {"instruction": r["instruction"], "output": r["output"], "generator": name, "dataset": r["dataset"]}
        for r in finished
    ]
    write_json(out / OUTPUTS_FILE, outputs)
    summary = write_summary(out, "alpacaeval", ctx.recipe, stats, finished, {"generator": name}, ctx.cache)
    return summary, stats


def parse_chatml(text: str, source: str) -> list[dict[str, str]]:
    """The judge prompt file (``<|im_start|>role ... <|im_end|>`` blocks) as chat messages."""
    messages = [{"role": role, "content": content} for role, content in _CHATML.findall(text)]
    if not messages:
        raise DataError(f"{source}: no <|im_start|>role ... <|im_end|> blocks found (AlpacaEval chatml format)")
    joined = "".join(m["content"] for m in messages)
    for placeholder in ("{instruction}", "{output_1}", "{output_2}"):
        if placeholder not in joined:
            raise DataError(f"{source}: the judge prompt has no {placeholder} placeholder")
    return messages


def judge_recipe(model: str, *, logprobs: bool = True) -> Recipe:
    """One call to the judge: temperature 1, one token, top-5 logprobs (the weighted annotator)."""
    # drop_params: a provider that cannot return logprobs gets the call without them (text fallback).
    extra = {"logprobs": True, "top_logprobs": 5, "drop_params": True} if logprobs else {}
    agent = {"model": model, "temperature": 1.0, "max_tokens": 1, "extra": extra}
    return Recipe.model_validate({"name": f"judge:{model}", "layers": [{"kind": "propose", "agents": [agent]}]})


async def judge(
    out: Path,
    judge_ctx: EvalContext,
    prompt_file: Path,
    reference_file: Path,
    *,
    lc_data: _lc.LCData | None = None,
    concurrency: int = 8,
    run: str | None = None,
    show_progress: bool | None = None,
) -> tuple[dict[str, Any], RunStats]:
    """Judge ``model_outputs.json`` against the reference outputs; write annotations and metrics."""
    template = parse_chatml(read_text(prompt_file), str(prompt_file))
    outputs = read_eval_set(out / OUTPUTS_FILE)
    references = {row["instruction"]: row for row in read_eval_set(reference_file)}
    index_of = {row["instruction"]: i for i, row in enumerate(read_eval_set(reference_file))}
    pairs = []
    for row in outputs:
        reference = references.get(row["instruction"])
        if reference is None or not isinstance(reference.get("output"), str):
            raise DataError(f"{reference_file}: no reference `output` for instruction {row['instruction'][:60]!r}")
        pairs.append((row, reference))

    def key(row: dict[str, Any], reference: dict[str, Any]) -> str:
        text = "\x00".join((row["instruction"], row["output"], reference["output"]))
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def judge_messages(row: dict[str, Any], reference: dict[str, Any]) -> list[dict[str, str]]:
        switched = _stats.is_switched(row["instruction"])
        first, second = (row["output"], reference["output"]) if switched else (reference["output"], row["output"])
        values = {"instruction": row["instruction"], "output_1": first, "output_2": second}
        # One pass over the template only: braces inside the instruction or the outputs stay as they are.
        return [
            {"role": m["role"], "content": _PLACEHOLDER.sub(lambda match: values[match.group(1)], m["content"])}
            for m in template
        ]

    async def work(pair: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
        row, reference = pair
        switched = _stats.is_switched(row["instruction"])
        result = await judge_ctx.answer(judge_messages(row, reference))
        call = result.layers[0].outputs[0]
        preference, method = None, "unparsable"
        if call.top_logprobs:
            preference = _stats.preference_from_logprobs(call.top_logprobs, switched)
            method = "logprobs" if preference is not None else method
        if preference is None:
            preference = _stats.preference_from_text(result.output, switched)
            method = "text" if preference is not None else method
        return {
            "index": index_of.get(row["instruction"]),
            "instruction": row["instruction"],
            "output_1": reference["output"],
            "generator_1": reference.get("generator", "reference"),
            "output_2": row["output"],
            "generator_2": row.get("generator"),
            "dataset": row.get("dataset"),
            "annotator": judge_ctx.recipe.layers[0].call_agents()[0].model,
            "preference": preference,
            "is_switched_outputs": switched,
            "method": method,
            "raw_completion": result.output,
            "top_logprobs": call.top_logprobs,
            **trace_record([result]),
        }

    judged = [(key(row, ref), (row, ref)) for row, ref in pairs]
    annotations, stats = await run_in_order(
        judge_ctx,
        "judge alpacaeval",
        judged,
        work,
        out / JUDGMENTS_FILE,
        run=run,
        worst_case=lambda pair: judge_ctx.worst_case(judge_messages(*pair)),
        concurrency=concurrency,
        show_progress=show_progress,
    )
    write_json(
        out / ANNOTATIONS_FILE, [{k: v for k, v in a.items() if k not in ("traces", "run")} for a in annotations]
    )
    metrics = alpaca_metrics(annotations, lc_data)
    judge_cost = [a.get("cost_usd") for a in annotations]
    summary = update_summary(
        out,
        **metrics,
        judge=judge_ctx.recipe.layers[0].call_agents()[0].model,
        judged=len(annotations),
        judge_complete=stats.complete,
        judge_failures=[{"key": key, "error": error} for key, error in stats.errors[:100]],
        judge_cost_usd=None if any(c is None for c in judge_cost) else sum(c or 0.0 for c in judge_cost),
    )
    return summary, stats


def alpaca_metrics(annotations: list[dict[str, Any]], lc_data: _lc.LCData | None) -> dict[str, Any]:
    """Win rate, standard error and the length-controlled win rate of judged pairs."""
    preferences = [a["preference"] for a in annotations]
    rate = _stats.win_rate(preferences)
    methods = [a["method"] for a in annotations]
    valid = [a for a in annotations if a["preference"] is not None]
    metrics: dict[str, Any] = {
        "score_name": "LC win rate",
        "win_rate": rate.win_rate,
        "standard_error": rate.standard_error,
        "discrete_win_rate": rate.discrete_win_rate,
        "n_wins": rate.n_wins,
        "n_wins_base": rate.n_wins_base,
        "n_draws": rate.n_draws,
        "n_total": rate.n_total,
        "unparsable_judgments": methods.count("unparsable"),
        "judge_method": _judge_method(methods, len(valid)),
    }
    lc = _lc.length_controlled_win_rate(
        preferences,
        [len(a["output_2"]) for a in annotations],
        [len(a["output_1"]) for a in annotations],
        [a.get("index") for a in annotations],
        lc_data,
    )
    metrics["length_controlled_win_rate"] = lc.win_rate if lc else None
    metrics["lc_method"] = lc.method if lc else "needs 2 or more judged pairs"
    metrics["lc_exact"] = bool(lc and lc.exact)
    metrics["lc_C"] = lc.C if lc else None
    metrics["lc_weights"] = lc.weights if lc else None
    metrics["lc_warning"] = (
        f"the LC win rate ({lc.win_rate:.1f}) is far from the raw one ({rate.win_rate:.1f}): the GLM may have failed"
        if lc and _lc.is_extreme_change(rate.win_rate, lc.win_rate)
        else None
    )
    metrics["score"] = lc.win_rate if lc else rate.win_rate
    metrics["score_name"] = "LC win rate" if lc and lc.exact else "LC win rate (approx.)" if lc else "win rate"
    # No parsable judgment: the means are of nothing, so they are unknown (None), never NaN.
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}


def _judge_method(methods: list[str], valid: int) -> str:
    if not valid:
        return "no parsable judgment"
    if methods.count("logprobs") == valid:
        return "logprobs"
    return f"text verdicts for {methods.count('text')} of {valid} (no usable logprobs)"


class AlpacaEval:
    """AlpacaEval 2.0 (``moa eval alpacaeval``): the official outputs file, judged pairwise."""

    name = "alpacaeval"
    judge_files: tuple[str, ...] = JUDGE_FILES
    judge_summary_keys: tuple[str, ...] = JUDGE_SUMMARY_KEYS

    def read(self, options: EvalOptions) -> list[dict[str, Any]]:
        return read_eval_set(options.data)[: options.limit]

    def items(self, rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        return list(items(rows))

    def run_keys(self, rows: list[dict[str, Any]]) -> list[str]:
        return [key for key, _ in items(rows)]

    def worst_case(self, ctx: EvalContext, item: Any) -> float | None:
        return worst_case(ctx, item)

    async def generate(self, ctx: EvalContext, options: EvalOptions, run: str) -> tuple[dict[str, Any], RunStats]:
        return await generate(
            ctx, options.data, options.out, limit=options.limit, generator=options.name,
            concurrency=options.concurrency, run=run,
        )  # fmt: skip

    def judge_setup(self, options: EvalOptions) -> JudgeSetup | None:
        if options.judge is None:
            return None
        if options.judge_prompt is None:
            raise ConfigError("--judge needs --judge-prompt (AlpacaEval's alpaca_eval_clf.txt)")
        references = options.references or options.data
        parse_chatml(read_text(options.judge_prompt), str(options.judge_prompt))  # a bad file fails before any call
        read_eval_set(references)
        return JudgeSetup(judge_recipe(options.judge, logprobs=options.logprobs), options.judge_prompt,
                          file_identity(references))  # fmt: skip

    async def judge(
        self, ctx: EvalContext, options: EvalOptions, run: str, lc_data: Any
    ) -> tuple[dict[str, Any], RunStats]:
        assert options.judge_prompt is not None
        return await judge(
            options.out, ctx, options.judge_prompt, options.references or options.data, lc_data=lc_data,
            concurrency=options.concurrency, run=run,
        )  # fmt: skip

    def describe(self, summary: dict[str, Any], stats: RunStats, judged: bool) -> list[str]:
        if not judged or summary.get("win_rate") is None:
            return []
        lc = summary.get("length_controlled_win_rate")
        lc_text = f"{lc:.2f} [{summary['lc_method']}]" if lc is not None else summary["lc_method"]
        error = summary.get("standard_error")
        spread = f" ± {error:.2f}" if error is not None else " (one judgment: no standard error)"
        return [
            f"win rate {summary['win_rate']:.2f}{spread}; LC win rate {lc_text}; "
            f"judge: {summary['judge_method']}; unparsable: {summary['unparsable_judgments']}"
        ]

    def output_file(self, summary: dict[str, Any]) -> str:
        return OUTPUTS_FILE


BENCHMARK = AlpacaEval()
