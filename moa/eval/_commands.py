"""``moa eval ...``: argument parsing and the glue between the CLI and the harness."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily: `moa --help` must not load pydantic or litellm
    from moa._budget import Budget
    from moa.eval._common import EvalContext
    from moa.eval._runner import RunStats

from moa._argtypes import non_negative_float, positive_int

EXIT_OK = 0
ITEMS_FILE = "items.jsonl"


def add_parser(commands: Any) -> None:
    evals = commands.add_parser(
        "eval",
        help="AlpacaEval 2.0, MT-Bench, your own QA set; report",
        description="Resumable benchmark runs: re-run the same command to continue.",
    )
    sub = evals.add_subparsers(dest="eval_command", metavar="BENCHMARK", required=True)

    alpaca = sub.add_parser("alpacaeval", help="generate AlpacaEval outputs, optionally judge them")
    _common(alpaca)
    alpaca.add_argument(
        "--data",
        type=Path,
        required=True,
        help="eval set: JSON list with `instruction`, `dataset` (the official gpt4_1106_preview outputs file)",
    )
    alpaca.add_argument("--generator", help="name written as `generator` (default: the recipe's name)")
    alpaca.add_argument("--judge", metavar="MODEL", help="litellm judge model; judging runs after generation")
    alpaca.add_argument(
        "--judge-prompt",
        type=Path,
        metavar="FILE",
        help="judge prompt file in AlpacaEval's chatml format (alpaca_eval_clf.txt)",
    )
    alpaca.add_argument(
        "--reference",
        type=Path,
        metavar="FILE",
        help="reference outputs (default: --data, which holds them in the official file)",
    )
    alpaca.add_argument(
        "--lc-data",
        "--instruction-difficulty",
        dest="lc_data",
        type=Path,
        metavar="CSV",
        help="AlpacaEval's df_gamed.csv: the exact length-controlled win rate (its gamed baselines and "
        "instruction difficulty); instruction_difficulty.csv alone gives a labelled approximation",
    )
    alpaca.add_argument("--no-logprobs", action="store_true", help="the judge gives no logprobs: parse its text")
    alpaca.set_defaults(handler=_cmd_alpacaeval)

    mt = sub.add_parser("mt-bench", help="answer MT-Bench's two turns, optionally grade them")
    _common(mt)
    mt.add_argument("--questions", type=Path, required=True, help="FastChat question.jsonl")
    mt.add_argument("--model-id", help="model_id in the answer file (default: the recipe's name)")
    mt.add_argument("--judge", metavar="MODEL", help="litellm judge model; grading runs after generation")
    mt.add_argument("--judge-prompts", type=Path, metavar="FILE", help="FastChat judge_prompts.jsonl")
    mt.add_argument(
        "--reference-answers",
        type=Path,
        metavar="FILE",
        help="FastChat reference answers (gpt-4.jsonl) for math/reasoning/coding",
    )
    mt.set_defaults(handler=_cmd_mtbench)

    qa = sub.add_parser("qa", help="your own questions, scored by answer match, vs a baseline")
    _common(qa)
    qa.add_argument("--data", type=Path, required=True, help="JSONL: id, prompt, answers (list) or regex")
    qa.add_argument("--baseline", metavar="RECIPE", help="also run this recipe and compare (flips, McNemar)")
    qa.set_defaults(handler=_cmd_qa)

    report = sub.add_parser("report", help="HTML report and table comparing eval runs")
    report.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="--out folders of eval runs")
    report.add_argument("--html", type=Path, default=Path("moa-report.html"), help="where to write the page")
    report.set_defaults(handler=_cmd_report)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", "-r", required=True, help="built-in name or YAML path")
    parser.add_argument("--out", type=Path, required=True, help="folder for outputs, traces and checkpoints")
    parser.add_argument("--limit", type=positive_int, help="only the first N items")
    parser.add_argument("--concurrency", type=positive_int, default=8, help="items in flight at once (default 8)")
    parser.add_argument("--max-cost", type=non_negative_float, metavar="USD",
                        help="budget for every call of the run, judge included: a call whose worst case does not "
                        "fit is not started, items in flight finish, and the run can be resumed later")  # fmt: skip
    parser.add_argument("--allow-unpriced", action="store_true",
                        help="under --max-cost, count models with no known price as free, not refuse them")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the number of calls and a cost estimate")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a call setting or recipe field (as in `moa run`)",
    )
    parser.add_argument(
        "--judge-set",
        dest="judge_sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="call settings for the judge (e.g. api_base=URL)",
    )
    parser.add_argument(
        "--reaggregate-from",
        type=Path,
        metavar="DIR",
        help="reuse the proposer layer of an earlier run's traces: no new proposer calls",
    )


def _budget(args: argparse.Namespace) -> Budget | None:
    from moa._budget import Budget

    return Budget(args.max_cost, allow_unpriced=args.allow_unpriced) if args.max_cost is not None else None


def _context(args: argparse.Namespace, recipe_source: str | None = None, budget: Budget | None = None) -> EvalContext:
    from moa._overrides import apply_sets
    from moa.eval._common import EvalContext, load_reuse

    recipe, overrides = apply_sets(recipe_source or args.recipe, args.sets)
    reuse = load_reuse(args.reaggregate_from) if getattr(args, "reaggregate_from", None) else {}
    return EvalContext(recipe=recipe, overrides=overrides, reuse=reuse, budget=budget)


def _judge_context(args: argparse.Namespace, recipe: Any, budget: Budget | None) -> EvalContext:
    from moa._overrides import apply_sets
    from moa.eval._common import EvalContext

    judge_recipe, overrides = apply_sets(recipe, args.judge_sets, "--judge-set")
    return EvalContext(recipe=judge_recipe, overrides=overrides, budget=budget)


def _report_stats(label: str, stats: RunStats, budget: Budget | None) -> None:
    done = stats.skipped_done + stats.finished
    line = (f"{label}: {done}/{stats.total} done ({stats.finished} now, {stats.skipped_done} from checkpoint), "
            f"{stats.failed} failed, {stats.wall_s:.1f} s, ${stats.cost_usd:.4f}")  # fmt: skip
    if stats.unpriced:
        line += f" (+{stats.unpriced} items with unknown cost)"
    print(line, file=sys.stderr)
    for error in stats.errors[:5]:
        print(f"  failed {error.splitlines()[0]}", file=sys.stderr)
    if budget is not None and budget.exhausted:
        print(f"stopped: --max-cost ${budget.max_cost_usd:g} reached (spent ${budget.spent_usd:.4f}); "
              f"{stats.not_started} items not started; run the same command with a higher --max-cost "
              "to continue", file=sys.stderr)  # fmt: skip


def _dry_run(ctx: EvalContext, prompts: list[str], turns: int = 1, judge_calls: int = 0) -> int:
    from moa._litellm import litellm_module

    recipe = ctx.recipe
    calls = len(prompts) * turns * recipe.calls_per_query
    litellm = litellm_module()
    total, unknown = 0.0, set()
    assumed = 1024
    for prompt in prompts:
        prompt_tokens = len(prompt) // 4 + 8
        previous = 0
        for layer in recipe.layers:
            for agent in layer.agents:
                max_tokens = agent.max_tokens or recipe.defaults.max_tokens or assumed
                tokens_in = prompt_tokens + previous
                try:
                    cost_in, cost_out = litellm.cost_per_token(
                        model=agent.model,
                        prompt_tokens=tokens_in * turns,
                        completion_tokens=max_tokens * turns,
                    )
                    total += (cost_in + cost_out) * agent.n
                except Exception:
                    unknown.add(agent.model)
            previous = sum((a.max_tokens or recipe.defaults.max_tokens or assumed) * a.n for a in layer.agents)
    print(
        f"dry run: {len(prompts)} items x {turns} turn(s) x {recipe.calls_per_query} calls = {calls} calls"
        + (f", plus {judge_calls} judge calls" if judge_calls else "")
    )
    estimate = f"${total:.4f} at most (every answer at max_tokens; {assumed} assumed where unset)"
    print(f"generation cost estimate: {estimate}" + (f"; unpriced: {', '.join(sorted(unknown))}" if unknown else ""))
    return EXIT_OK


def _cmd_alpacaeval(args: argparse.Namespace) -> int:
    import asyncio

    from moa._errors import ConfigError
    from moa.eval import alpaca
    from moa.eval._lc import read_lc_data

    budget = _budget(args)
    ctx = _context(args, budget=budget)
    if args.dry_run:
        rows = alpaca.read_eval_set(args.data)[: args.limit]
        return _dry_run(ctx, [r["instruction"] for r in rows], judge_calls=len(rows) if args.judge else 0)
    if args.judge and not args.judge_prompt:
        raise ConfigError("--judge needs --judge-prompt (AlpacaEval's alpaca_eval_clf.txt)")
    if args.lc_data and not args.judge:
        raise ConfigError("--lc-data is used when judging: add --judge MODEL --judge-prompt FILE")
    lc_data = read_lc_data(args.lc_data) if args.lc_data else None  # a bad file fails before any call
    summary, stats = asyncio.run(
        alpaca.generate(
            ctx,
            args.data,
            args.out,
            limit=args.limit,
            generator=args.generator,
            concurrency=args.concurrency,
        )
    )
    _report_stats("alpacaeval generation", stats, budget)
    if args.judge and summary["complete"] and not (budget and budget.exhausted):
        judge_ctx = _judge_context(args, alpaca.judge_recipe(args.judge, logprobs=not args.no_logprobs), budget)
        summary, stats = asyncio.run(
            alpaca.judge(
                args.out,
                judge_ctx,
                args.judge_prompt,
                args.reference or args.data,
                lc_data=lc_data,
                concurrency=args.concurrency,
            )
        )
        _report_stats("alpacaeval judging", stats, budget)
        lc = summary.get("length_controlled_win_rate")
        lc_text = f"{lc:.2f} [{summary['lc_method']}]" if lc is not None else summary["lc_method"]
        print(
            f"win rate {summary['win_rate']:.2f} ± {summary['standard_error']:.2f}; LC win rate {lc_text}; "
            f"judge: {summary['judge_method']}; unparsable: {summary['unparsable_judgments']}"
        )
        if summary.get("lc_warning"):
            print(f"warning: {summary['lc_warning']}", file=sys.stderr)
    print(f"wrote {args.out / alpaca.OUTPUTS_FILE} and {args.out / ITEMS_FILE}")
    return EXIT_OK


def _cmd_mtbench(args: argparse.Namespace) -> int:
    import asyncio

    from moa._errors import ConfigError
    from moa.eval import mtbench

    budget = _budget(args)
    ctx = _context(args, budget=budget)
    if args.dry_run:
        rows = mtbench.read_questions(args.questions)[: args.limit]
        turns = max(len(r["turns"]) for r in rows) if rows else 2
        return _dry_run(ctx, [r["turns"][0] for r in rows], turns=turns, judge_calls=2 * len(rows) if args.judge else 0)
    if args.judge and not args.judge_prompts:
        raise ConfigError("--judge needs --judge-prompts (FastChat's judge_prompts.jsonl)")
    summary, stats = asyncio.run(
        mtbench.generate(
            ctx,
            args.questions,
            args.out,
            limit=args.limit,
            model_id=args.model_id,
            concurrency=args.concurrency,
        )
    )
    _report_stats("mt-bench generation", stats, budget)
    if args.judge and summary["complete"] and not (budget and budget.exhausted):
        judge_ctx = _judge_context(args, mtbench.judge_recipe(args.judge), budget)
        summary, stats = asyncio.run(
            mtbench.judge(
                args.out,
                judge_ctx,
                args.questions,
                args.judge_prompts,
                reference_file=args.reference_answers,
                concurrency=args.concurrency,
            )
        )
        _report_stats("mt-bench judging", stats, budget)
        print(
            f"MT-Bench score {summary['score']}; turn 1 {summary['score_turn_1']}, turn 2 "
            f"{summary['score_turn_2']}; unparsable ratings: {summary['unparsable_judgments']}"
        )
    print(f"wrote {args.out / (summary.get('model_id', 'answers') + '.jsonl')} and {args.out / ITEMS_FILE}")
    return EXIT_OK


def _cmd_qa(args: argparse.Namespace) -> int:
    import asyncio

    from moa.eval import qa

    budget = _budget(args)
    ctx = _context(args, budget=budget)
    if args.dry_run:
        rows = qa.read_questions(args.data)[: args.limit]
        return _dry_run(ctx, [r["prompt"] for r in rows])
    summary, stats = asyncio.run(qa.generate(ctx, args.data, args.out, limit=args.limit, concurrency=args.concurrency))
    _report_stats(f"qa {ctx.recipe.name}", stats, budget)
    accuracy = "no item finished" if summary["score"] is None else f"{summary['score']:.1f}%"
    print(f"{ctx.recipe.name}: accuracy {accuracy} ({summary['correct']}/{summary['finished']})")
    if args.baseline:
        base_ctx = _context(args, args.baseline, budget=budget)
        base_out = args.out / "baseline"
        base_summary, stats = asyncio.run(
            qa.generate(base_ctx, args.data, base_out, limit=args.limit, concurrency=args.concurrency)
        )
        _report_stats(f"qa baseline {base_ctx.recipe.name}", stats, budget)
        comparison = qa.compare(args.out, base_out)
        print(
            f"baseline {base_ctx.recipe.name}: accuracy {base_summary['score']:.1f}%; "
            f"right->wrong {len(comparison['right_to_wrong'])}, wrong->right "
            f"{len(comparison['wrong_to_right'])}; exact McNemar p = {comparison['mcnemar_p']:.4g}"
        )
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from moa.eval import report
    from moa.eval._store import write_atomic

    runs = report.load_runs(args.dirs)
    report.print_table(runs)
    write_atomic(args.html, report.render_html(runs))
    print(f"wrote {args.html}")
    return EXIT_OK
