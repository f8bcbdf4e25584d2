"""``moa eval ...``: argument parsing and the glue between the CLI and the harness."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily: `moa --help` must not load pydantic or litellm
    from moa._budget import Budget
    from moa.eval._common import EvalContext
    from moa.eval._identity import Identity
    from moa.eval._out import OutDir
    from moa.eval._runner import RunStats
    from moa.recipe import CallParams, Recipe

from moa._argtypes import non_negative_float, positive_int

EXIT_OK, EXIT_INCOMPLETE = 0, 1
ITEMS_FILE = "items.jsonl"
JUDGMENTS_FILE = "judgments.jsonl"


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
    alpaca.set_defaults(handler=lambda args: _run(args, "alpacaeval"))

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
    mt.set_defaults(handler=lambda args: _run(args, "mt-bench"))

    qa = sub.add_parser("qa", help="your own questions, scored by answer match, vs a baseline")
    _common(qa)
    qa.add_argument("--data", type=Path, required=True, help="JSONL: id, prompt, answers (list) or regex")
    qa.add_argument("--baseline", metavar="RECIPE", help="also run this recipe and compare (flips, McNemar)")
    qa.set_defaults(handler=lambda args: _run(args, "qa"))

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
    parser.add_argument(
        "--force-new",
        action="store_true",
        help="if --out holds a run made differently (recipe, settings, judge), move its files to "
        "OUT/superseded-*/ and start clean, instead of refusing",
    )


def _budget(args: argparse.Namespace) -> Budget | None:
    from moa._budget import Budget

    return Budget(args.max_cost, allow_unpriced=args.allow_unpriced) if args.max_cost is not None else None


def _rows(args: argparse.Namespace, benchmark: str) -> list[dict[str, Any]]:
    """The benchmark's items (after ``--limit``), read and checked before anything else."""
    from moa.eval import alpaca, mtbench, qa

    if benchmark == "alpacaeval":
        return alpaca.read_eval_set(args.data)[: args.limit]
    if benchmark == "mt-bench":
        return mtbench.read_questions(args.questions)[: args.limit]
    return qa.read_questions(args.data)[: args.limit]


def _keys(benchmark: str, rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(checkpoint keys, keys of every run an item makes) of the rows."""
    from moa.eval import alpaca, mtbench, qa

    if benchmark == "alpacaeval":
        keys = [key for key, _ in alpaca.items(rows)]
        return keys, keys
    if benchmark == "mt-bench":
        return [key for key, _ in mtbench.items(rows)], mtbench.reuse_keys(rows)
    keys = [key for key, _ in qa.items(rows)]
    return keys, keys


def _worst_cases(benchmark: str, ctx: EvalContext, rows: list[dict[str, Any]]) -> list[float | None]:
    """Every item's worst case, by the rule its budget reservation uses (for ``--dry-run``)."""
    from moa.eval import alpaca, mtbench, qa

    if benchmark == "alpacaeval":
        return [alpaca.worst_case(ctx, item) for _, item in alpaca.items(rows)]
    if benchmark == "mt-bench":
        return [mtbench.worst_case(ctx, row) for row in rows]
    return [qa.worst_case(ctx, row) for row in rows]


def _run(args: argparse.Namespace, benchmark: str) -> int:
    """One driver for every benchmark: check everything, claim --out, generate, judge, report."""
    from moa._errors import ConfigError
    from moa._overrides import apply_sets
    from moa.eval._common import EvalContext, check_reuse, load_reuse
    from moa.eval._identity import generation_identity
    from moa.eval._out import OutDir

    budget = _budget(args)
    recipe, overrides = apply_sets(args.recipe, args.sets)
    rows = _rows(args, benchmark)
    if args.reaggregate_from and len(recipe.layers) < 2:
        raise ConfigError(
            f"--reaggregate-from reuses the first layer of {args.reaggregate_from}, so the recipe needs a layer "
            f"after it to run; {recipe.name!r} has only one"
        )
    judge = _judge_setup(args, benchmark, budget)
    reuse, reused = load_reuse(args.reaggregate_from) if args.reaggregate_from else ({}, None)
    ctx = EvalContext(recipe=recipe, overrides=overrides, reuse=reuse, budget=budget)
    if args.dry_run:
        return _dry_run(ctx, benchmark, rows, judge is not None)
    with OutDir(args.out, force_new=args.force_new) as out:
        generation = generation_identity(benchmark, recipe, overrides, reused)
        judge_run = _claim(out, benchmark, generation, judge)
        keys, run_keys = _keys(benchmark, rows)
        if reuse:
            check_reuse(reuse, args.reaggregate_from, _pending(out.path, keys, run_keys, benchmark))
        ctx.preflight()  # the mistakes every item would hit (a missing key or extra) fail here, not per item
        if judge is not None:
            judge[0].preflight()
        return _generate_and_judge(args, benchmark, ctx, judge, generation, judge_run, out, budget)


def _pending(out: Path, keys: list[str], run_keys: list[str], benchmark: str) -> list[str]:
    """The run keys of items not finished yet in ``out`` (only they need reused layers)."""
    from moa.eval._store import Checkpoint

    done = set(Checkpoint(out / ITEMS_FILE).load())
    pending_items = {key for key in keys if key not in done}
    return [key for key in run_keys if key.split("#turn")[0] in pending_items]


def _judge_setup(
    args: argparse.Namespace, benchmark: str, budget: Budget | None
) -> tuple[EvalContext, Recipe, CallParams | None, Path, str] | None:
    """(judge context, judge recipe, --judge-set settings, prompt file, references identity), or None."""
    from moa._errors import ConfigError
    from moa._overrides import apply_sets
    from moa.eval import alpaca, mtbench
    from moa.eval._common import EvalContext
    from moa.eval._identity import file_identity

    if benchmark == "qa" or not args.judge:
        if getattr(args, "lc_data", None):
            raise ConfigError("--lc-data is used when judging: add --judge MODEL --judge-prompt FILE")
        return None
    if benchmark == "alpacaeval":
        if not args.judge_prompt:
            raise ConfigError("--judge needs --judge-prompt (AlpacaEval's alpaca_eval_clf.txt)")
        recipe = alpaca.judge_recipe(args.judge, logprobs=not args.no_logprobs)
        prompt, references = args.judge_prompt, file_identity(args.reference or args.data)
        alpaca.parse_chatml(_read(prompt), str(prompt))  # a bad prompt file fails before any call
        alpaca.read_eval_set(args.reference or args.data)
    else:
        if not args.judge_prompts:
            raise ConfigError("--judge needs --judge-prompts (FastChat's judge_prompts.jsonl)")
        recipe = mtbench.judge_recipe(args.judge)
        prompt, references = args.judge_prompts, file_identity(args.reference_answers)
        mtbench.read_judge_prompts(prompt)
        if args.reference_answers:
            mtbench.read_reference_answers(args.reference_answers)
    judge_recipe, settings = apply_sets(recipe, args.judge_sets, "--judge-set")
    ctx = EvalContext(recipe=judge_recipe, overrides=settings, budget=budget)
    return ctx, judge_recipe, settings, prompt, references


def _read(path: Path) -> str:
    from moa.eval._common import DataError

    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read: {exc}") from None


def _claim(
    out: OutDir,
    benchmark: str,
    generation: Identity,
    judge: tuple[EvalContext, Recipe, CallParams | None, Path, str] | None,
) -> str | None:
    """Check (or, with --force-new, reset) both parts of --out before any call; the judge identity's digest."""
    from moa.eval import alpaca, mtbench
    from moa.eval._identity import judge_identity

    out.read_summary()
    out.claim(generation, ITEMS_FILE, ["*"], [])
    if judge is not None:
        _, judge_recipe, settings, prompt, references = judge
        module = alpaca if benchmark == "alpacaeval" else mtbench
        identity = judge_identity(judge_recipe, settings, prompt, references, generation)
        out.claim(identity, JUDGMENTS_FILE, module.JUDGE_FILES, module.JUDGE_SUMMARY_KEYS)
        return identity.digest
    return None


def _generate_and_judge(
    args: argparse.Namespace,
    benchmark: str,
    ctx: EvalContext,
    judge: tuple[EvalContext, Recipe, CallParams | None, Path, str] | None,
    generation: Identity,
    judge_run: str | None,
    out: OutDir,
    budget: Budget | None,
) -> int:
    from moa import _signals
    from moa.eval import alpaca, mtbench, qa
    from moa.eval._lc import read_lc_data

    folder = out.path
    lc_data = read_lc_data(args.lc_data) if getattr(args, "lc_data", None) else None  # bad: fails before any call
    try:
        if benchmark == "alpacaeval":
            summary, stats = _signals.run(lambda: alpaca.generate(
                ctx, args.data, folder, limit=args.limit, generator=args.generator, concurrency=args.concurrency,
                run=generation.digest,
            ))  # fmt: skip
        elif benchmark == "mt-bench":
            summary, stats = _signals.run(lambda: mtbench.generate(
                ctx, args.questions, folder, limit=args.limit, model_id=args.model_id,
                concurrency=args.concurrency, run=generation.digest,
            ))  # fmt: skip
        else:
            summary, stats = _signals.run(lambda: qa.generate(
                ctx, args.data, folder, limit=args.limit, concurrency=args.concurrency, run=generation.digest,
            ))  # fmt: skip
    except _signals.Terminated:
        print(f"moa: terminated (SIGTERM); finished items are saved in {folder}: run the same command to continue",
              file=sys.stderr)  # fmt: skip
        return _signals.EXIT_TERMINATED
    complete = _report_stats(f"{benchmark} {ctx.recipe.name}", stats, budget)
    if benchmark == "qa":
        _print_accuracy(ctx.recipe.name, summary, stats)
        if args.baseline and complete:
            complete = _baseline(args, folder, budget)
        elif args.baseline:
            print("baseline skipped: the run is incomplete; re-run the same command to finish it first",
                  file=sys.stderr)  # fmt: skip
    if judge is not None:
        if not complete:
            print(f"judging skipped: generation is incomplete ({stats.skipped_done + stats.finished} of "
                  f"{stats.total} items); re-run the same command to finish it, then it is judged",
                  file=sys.stderr)  # fmt: skip
        else:
            try:
                complete = _judge(args, benchmark, judge[0], folder, budget, lc_data, judge_run)
            except _signals.Terminated:
                print(f"moa: terminated (SIGTERM); finished judgments are saved in {folder}", file=sys.stderr)
                return _signals.EXIT_TERMINATED
    outputs = {"alpacaeval": alpaca.OUTPUTS_FILE, "qa": qa.RESULTS_FILE}.get(benchmark)
    written = outputs or f"{summary.get('model_id', 'answers')}.jsonl"
    print(f"wrote {folder / written} and {folder / ITEMS_FILE}")
    return EXIT_OK if complete else EXIT_INCOMPLETE


def _judge(
    args: argparse.Namespace,
    benchmark: str,
    judge_ctx: EvalContext,
    folder: Path,
    budget: Budget | None,
    lc_data: Any,
    run: str | None,
) -> bool:
    from moa import _signals
    from moa.eval import alpaca, mtbench

    if benchmark == "alpacaeval":
        summary, stats = _signals.run(lambda: alpaca.judge(
            folder, judge_ctx, args.judge_prompt, args.reference or args.data, lc_data=lc_data,
            concurrency=args.concurrency, run=run,
        ))  # fmt: skip
        complete = _report_stats("alpacaeval judging", stats, budget)
        lc = summary.get("length_controlled_win_rate")
        lc_text = f"{lc:.2f} [{summary['lc_method']}]" if lc is not None else summary["lc_method"]
        if summary.get("win_rate") is not None:
            print(
                f"win rate {summary['win_rate']:.2f} ± {summary['standard_error']:.2f}; LC win rate {lc_text}; "
                f"judge: {summary['judge_method']}; unparsable: {summary['unparsable_judgments']}"
            )
        if summary.get("lc_warning"):
            print(f"warning: {summary['lc_warning']}", file=sys.stderr)
        return complete
    summary, stats = _signals.run(lambda: mtbench.judge(
        folder, judge_ctx, args.questions, args.judge_prompts, reference_file=args.reference_answers,
        concurrency=args.concurrency, run=run,
    ))  # fmt: skip
    complete = _report_stats("mt-bench judging", stats, budget)
    print(
        f"MT-Bench score {summary['score']}; turn 1 {summary['score_turn_1']}, turn 2 "
        f"{summary['score_turn_2']}; unparsable ratings: {summary['unparsable_judgments']}"
    )
    return complete


def _print_accuracy(name: str, summary: dict[str, Any], stats: RunStats) -> None:
    if summary["score"] is None:
        print(f"{name}: accuracy unknown (no question was tried)")
        return
    failed = f"; {stats.failed} failed, counted wrong" if stats.failed else ""
    missing = f"; {stats.not_started + stats.unsaved} not run" if stats.not_started + stats.unsaved else ""
    print(f"{name}: accuracy {summary['score']:.1f}% ({summary['correct']}/{summary['attempted']}{failed}{missing})")


def _baseline(args: argparse.Namespace, folder: Path, budget: Budget | None) -> bool:
    """Run the --baseline recipe on the same questions (in OUT/baseline) and compare."""
    from moa import _signals
    from moa._overrides import apply_sets
    from moa.eval import qa
    from moa.eval._common import EvalContext
    from moa.eval._identity import generation_identity
    from moa.eval._out import OutDir

    recipe, overrides = apply_sets(args.baseline, args.sets)
    ctx = EvalContext(recipe=recipe, overrides=overrides, budget=budget)
    with OutDir(folder / "baseline", force_new=args.force_new) as out:
        identity = generation_identity("qa", recipe, overrides)
        out.read_summary()
        out.claim(identity, ITEMS_FILE, ["*"], [])
        ctx.preflight()
        try:
            summary, stats = _signals.run(lambda: qa.generate(
                ctx, args.data, out.path, limit=args.limit, concurrency=args.concurrency, run=identity.digest,
            ))  # fmt: skip
        except _signals.Terminated:
            print(f"moa: terminated (SIGTERM); finished items are saved in {out.path}", file=sys.stderr)
            raise SystemExit(_signals.EXIT_TERMINATED) from None
    complete = _report_stats(f"qa baseline {recipe.name}", stats, budget)
    _print_accuracy(f"baseline {recipe.name}", summary, stats)
    comparison = qa.compare(folder, folder / "baseline")
    if comparison["compared"]:
        print(
            f"on the {comparison['compared']} questions both answered: {comparison['accuracy']:.1f}% vs baseline "
            f"{comparison['baseline_accuracy']:.1f}%; right->wrong {len(comparison['right_to_wrong'])}, "
            f"wrong->right {len(comparison['wrong_to_right'])}; exact McNemar p = {comparison['mcnemar_p']:.4g}"
        )
    return complete


def _report_stats(label: str, stats: RunStats, budget: Budget | None) -> bool:
    """Print what a pass did, every failure's whole cause, and why it stopped; return whether it is complete."""
    done = stats.skipped_done + stats.finished
    line = (f"{label}: {done}/{stats.total} done ({stats.finished} now, {stats.skipped_done} from checkpoint), "
            f"{stats.failed} failed, {stats.wall_s:.1f} s, ${stats.cost_usd:.4f}")  # fmt: skip
    if stats.unpriced:
        line += f" (+{stats.unpriced} items with unknown cost)"
    print(line, file=sys.stderr)
    for key, error in stats.errors[:5]:
        cause = error.replace("\n", "\n    ")
        print(f"  item {key} failed: {cause}", file=sys.stderr)
    if len(stats.errors) > 5:
        print(f"  ... and {len(stats.errors) - 5} more failures (all listed in summary.json)", file=sys.stderr)
    if stats.unsaved:
        print(f"moa: {stats.unsaved} finished items could not be saved; they will be asked again when you re-run",
              file=sys.stderr)  # fmt: skip
    if stats.stopped:
        print(f"stopped starting items: {stats.stopped}; {stats.not_started} items not started; fix it and run "
              "the same command to continue", file=sys.stderr)  # fmt: skip
    elif stats.failed:
        print("run the same command to retry the failed items (finished ones are not asked again)", file=sys.stderr)
    return stats.complete


def _dry_run(ctx: EvalContext, benchmark: str, rows: list[dict[str, Any]], judged: bool) -> int:
    """Calls and the worst-case cost, by the same rule the budget reserves with; no call made."""
    recipe = ctx.recipe
    turns = max((len(row["turns"]) for row in rows), default=1) if benchmark == "mt-bench" else 1
    calls = sum(len(row["turns"]) if benchmark == "mt-bench" else 1 for row in rows) * recipe.calls_per_query
    judge_calls = (2 if benchmark == "mt-bench" else 1) * len(rows) if judged else 0
    print(
        f"dry run: {len(rows)} items x {turns} turn(s) x {recipe.calls_per_query} calls = {calls} calls"
        + (f", plus {judge_calls} judge calls (not in the estimate below)" if judge_calls else "")
    )
    worst = _worst_cases(benchmark, ctx, rows)
    if any(w is None for w in worst):
        unpriced = ", ".join(ctx.unpriced_models()) or "some models"
        print(f"generation cost: unknown: no known price for {unpriced}")
    else:
        print(f"generation cost: ${sum(w or 0.0 for w in worst):.4f} at most (every call at its max_tokens, or the "
              "model's own limit where unset: the same worst case --max-cost reserves)")  # fmt: skip
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from moa.eval import report
    from moa.eval._store import write_atomic

    runs = report.load_runs(args.dirs)
    report.print_table(runs)
    write_atomic(args.html, report.render_html(runs))
    print(f"wrote {args.html}")
    return EXIT_OK
