"""``moa eval ...``: the arguments, and one driver for every benchmark (``moa.eval.Benchmark``).

The driver checks everything before any call (inputs, the judge's files, the
run identity of ``--out``, keys and extras), then generates, then judges, and
reports what happened: every failure's cause, why items stopped, exit 1 when
the run is incomplete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily: `moa --help` must not load pydantic or litellm
    from moa._call import Budget
    from moa.eval import Benchmark, EvalContext, EvalOptions, RunStats
    from moa.eval.qa import QA, Scoring

from moa.cli._cache_args import add_cache_arguments, open_cache
from moa.cli._common import error
from moa.cli._ray_args import PER_WORKER, add_ray_arguments, with_ray
from moa.cli.args import non_negative_float, positive_int

EXIT_OK, EXIT_INCOMPLETE = 0, 1
ITEMS_FILE = "items.jsonl"
JUDGMENTS_FILE = "judgments.jsonl"
_DATA = {"alpacaeval": "data", "mt-bench": "questions", "qa": "data"}


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
    qa.add_argument(
        "--score",
        type=_scoring,
        metavar="MODE",
        help="which part of an output is scored (both sides of --baseline alike; not part of the run, so a "
        "finished run is re-scored with no new call): last-number (default: a numeric answer must be the "
        "last number; a word or the row's regex counts anywhere), final-line (the same, in the last "
        "non-empty line only), anywhere (a number anywhere), regex:PATTERN (the answer is group 1, or the "
        "whole match, of PATTERN's last match, compared by value or as a word; no match is wrong). An "
        "output cut by max_tokens is always wrong",
    )
    qa.set_defaults(handler=lambda args: _run(args, "qa"))

    report = sub.add_parser("report", help="HTML report and table comparing eval runs")
    report.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="--out folders of eval runs")
    report.add_argument("--html", type=Path, default=Path("moa-report.html"), help="where to write the page")
    report.set_defaults(handler=_cmd_report)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", "-r", required=True, help="built-in name or YAML path")
    parser.add_argument("--out", type=Path, required=True, help="folder for outputs, traces and checkpoints")
    parser.add_argument("--limit", type=positive_int, help="only the first N items")
    parser.add_argument("--concurrency", type=positive_int, help=f"items in flight (8; --ray: {PER_WORKER} a worker)")
    add_ray_arguments(parser)
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
    parser.add_argument("--reaggregate-from", type=Path, metavar="DIR",
                        help="reuse the proposer layer of an earlier run's traces: no new proposer calls")  # fmt: skip
    add_cache_arguments(parser, default_on=True)
    parser.add_argument(
        "--force-new",
        action="store_true",
        help="if --out holds a run made differently (recipe, settings, judge), move its files to "
        "OUT/superseded-*/ and start clean, instead of refusing",
    )


def _scoring(text: str) -> Scoring:
    from moa.eval.qa import Scoring

    try:
        return Scoring.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _qa(args: argparse.Namespace) -> QA:
    """The qa benchmark scoring as ``--score`` says (its default when not given)."""
    from moa.eval.qa import QA, Scoring

    return QA(args.score or Scoring())


def _budget(args: argparse.Namespace) -> Budget | None:
    from moa._call import Budget

    return Budget(args.max_cost, allow_unpriced=args.allow_unpriced) if args.max_cost is not None else None


def _options(args: argparse.Namespace, benchmark: str) -> EvalOptions:
    """The command's arguments as the harness's options (the names differ per benchmark, the meaning not)."""
    from moa.eval import EvalOptions

    alpaca = benchmark == "alpacaeval"
    return EvalOptions(
        data=getattr(args, _DATA[benchmark]),
        out=args.out,
        limit=args.limit,
        concurrency=args.concurrency or 8,
        name=getattr(args, "generator" if alpaca else "model_id", None),
        judge=getattr(args, "judge", None),
        judge_prompt=getattr(args, "judge_prompt" if alpaca else "judge_prompts", None),
        references=getattr(args, "reference" if alpaca else "reference_answers", None),
        lc_data=getattr(args, "lc_data", None),
        logprobs=not getattr(args, "no_logprobs", False),
    )


@with_ray
def _run(args: argparse.Namespace, name: str) -> int:
    """One driver for every benchmark: check everything, claim --out, generate, judge, report."""
    from moa._errors import ConfigError
    from moa._overrides import apply_sets
    from moa.eval import BENCHMARKS, EvalContext
    from moa.eval._common import check_reuse, load_reuse
    from moa.eval._identity import generation_identity, judge_identity
    from moa.eval._lc import check_installed as check_lc_installed
    from moa.eval._lc import read_lc_data
    from moa.eval._out import OutDir
    from moa.eval._store import Checkpoint

    benchmark, options, budget = _qa(args) if name == "qa" else BENCHMARKS[name], _options(args, name), _budget(args)
    recipe, overrides = apply_sets(args.recipe, args.sets)
    rows = benchmark.read(options)
    if args.reaggregate_from and len(recipe.layers) < 2:
        raise ConfigError(
            f"--reaggregate-from reuses the first layer of {args.reaggregate_from}, so the recipe needs a layer "
            f"after it to run; {recipe.name!r} has only one"
        )
    judge = benchmark.judge_setup(options)
    if judge is not None and name == "alpacaeval":
        check_lc_installed()  # the LC win rate is fitted after judging: a missing extra fails now, not then
    if options.lc_data and judge is None:
        raise ConfigError("--lc-data is used when judging: add --judge MODEL --judge-prompt FILE")
    lc_data = read_lc_data(options.lc_data) if options.lc_data else None  # a bad file fails before any call
    judge_ctx, cache = None, open_cache(args, options.out)
    if judge is not None:
        judge_recipe, judge_settings = apply_sets(judge.recipe, args.judge_sets, "--judge-set")
        judge_ctx = EvalContext(recipe=judge_recipe, overrides=judge_settings, budget=budget, cache=cache)
    reuse, reused = load_reuse(args.reaggregate_from) if args.reaggregate_from else ({}, None)
    ctx = EvalContext(recipe=recipe, overrides=overrides, reuse=reuse, budget=budget, cache=cache)
    if args.dry_run:
        return _dry_run(ctx, benchmark, rows, judge is not None)
    with OutDir(options.out, force_new=args.force_new) as out:
        out.read_summary()
        generation = generation_identity(name, recipe, overrides, reused)
        out.claim(generation, ITEMS_FILE, ["*"], [])
        judge_run = None
        if judge is not None and judge_ctx is not None:
            identity = judge_identity(judge_ctx.recipe, judge_ctx.overrides, judge.prompt_file, judge.references,
                                      generation)  # fmt: skip
            out.claim(identity, JUDGMENTS_FILE, benchmark.judge_files, benchmark.judge_summary_keys)
            judge_run = identity.digest
        if args.reaggregate_from:
            done = set(Checkpoint(out.path / ITEMS_FILE).load())
            pending = [key for key in benchmark.run_keys(rows) if key.split("#turn")[0] not in done]
            check_reuse(reuse, args.reaggregate_from, pending)
        ctx.preflight()  # the mistakes every item would hit (a missing key or extra) fail here, not per item
        if judge_ctx is not None:
            judge_ctx.preflight()
        return _generate_and_judge(args, benchmark, options, ctx, generation.digest, judge_ctx, judge_run, lc_data)


def _generate_and_judge(
    args: argparse.Namespace,
    benchmark: Benchmark,
    options: EvalOptions,
    ctx: EvalContext,
    run: str,
    judge_ctx: EvalContext | None,
    judge_run: str | None,
    lc_data: object,
) -> int:
    from moa.cli import signals
    from moa.eval._control import control_lines
    from moa.eval._store import OutputError

    try:
        summary, stats = signals.run(lambda: benchmark.generate(ctx, options, run))
    except signals.Terminated:
        return _terminated(options.out)
    except OutputError as exc:
        error(f"{exc}; every finished item is saved in {options.out / ITEMS_FILE}: fix it and run the same "
              "command to write the files again (no finished item is asked again)")  # fmt: skip
        return EXIT_INCOMPLETE
    complete = _report_stats(f"{benchmark.name} {ctx.recipe.name}", stats, ctx.budget)
    for line in [*benchmark.describe(summary, stats, judged=False), *control_lines(ctx.recipe.name, summary)]:
        print(line)
    if getattr(args, "baseline", None):
        if complete:
            complete = _baseline(args, options, ctx.budget)
        else:
            print("baseline skipped: the run is incomplete; re-run the same command to finish it first",
                  file=sys.stderr)  # fmt: skip
    if judge_ctx is not None and judge_run is not None:
        if not complete:
            print(f"judging skipped: generation is incomplete ({stats.skipped_done + stats.finished} of "
                  f"{stats.total} items); re-run the same command to finish it, then it is judged",
                  file=sys.stderr)  # fmt: skip
        else:
            try:
                summary, stats = signals.run(lambda: benchmark.judge(judge_ctx, options, judge_run, lc_data))
            except signals.Terminated:
                return _terminated(options.out)
            complete = _report_stats(f"{benchmark.name} judging", stats, ctx.budget)
            for line in benchmark.describe(summary, stats, judged=True):
                print(line)
            if complete and summary.get("score") is None:
                print("moa: no score: not one judgment could be parsed (see the judgments file); check the judge "
                      "model and prompt", file=sys.stderr)  # fmt: skip
                complete = False
            if summary.get("lc_warning"):
                print(f"warning: {summary['lc_warning']}", file=sys.stderr)
    print(f"wrote {options.out / benchmark.output_file(summary)} and {options.out / ITEMS_FILE}")
    return EXIT_OK if complete else EXIT_INCOMPLETE


def _terminated(out: Path) -> int:
    from moa.cli import signals

    print(f"moa: terminated (SIGTERM); finished items are saved in {out}: run the same command to continue",
          file=sys.stderr)  # fmt: skip
    return signals.EXIT_TERMINATED


def _baseline(args: argparse.Namespace, options: EvalOptions, budget: Budget | None) -> bool:
    """Run the --baseline recipe on the same questions (in OUT/baseline) and compare."""
    from dataclasses import replace

    from moa._overrides import apply_sets
    from moa.cli import signals
    from moa.eval import EvalContext, qa
    from moa.eval._identity import generation_identity
    from moa.eval._out import OutDir

    recipe, overrides = apply_sets(args.baseline, args.sets)
    ctx = EvalContext(recipe=recipe, overrides=overrides, budget=budget, cache=open_cache(args, options.out))
    benchmark = _qa(args)  # the same scoring as the run it is compared with
    folder = options.out / "baseline"
    with OutDir(folder, force_new=args.force_new) as out:
        identity = generation_identity("qa", recipe, overrides)
        out.read_summary()
        out.claim(identity, ITEMS_FILE, ["*"], [])
        ctx.preflight()
        try:
            summary, stats = signals.run(lambda: benchmark.generate(ctx, replace(options, out=folder),
                                                                    identity.digest))  # fmt: skip
        except signals.Terminated:
            raise SystemExit(_terminated(folder)) from None
    complete = _report_stats(f"qa baseline {recipe.name}", stats, budget)
    for line in benchmark.describe(summary, stats, judged=False):
        print(f"baseline {line}")
    comparison = qa.compare(options.out, folder)
    if comparison["compared"]:
        print(
            f"on the {comparison['compared']} questions both answered, scored by {comparison['scoring']}: "
            f"{comparison['accuracy']:.1f}% vs baseline "
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
    for key, failure in stats.errors[:5]:
        cause = failure.replace("\n", "\n    ")
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


def _dry_run(ctx: EvalContext, benchmark: Benchmark, rows: list[dict[str, Any]], judged: bool) -> int:
    """Calls and the worst-case cost, by the same rule the budget reserves with; no call made."""
    recipe = ctx.recipe
    runs = len(benchmark.run_keys(rows))
    turns = max(1, runs // max(1, len(rows)))
    calls = runs * recipe.calls_per_query
    most = "at most " if any(layer.calls_vary for layer in recipe.layers) else ""
    judge_calls = runs if judged else 0
    print(
        f"dry run: {len(rows)} items x {turns} turn(s) x {most}{recipe.calls_per_query} calls = {most}{calls} calls"
        + (f", plus {judge_calls} judge calls (not in the estimate below)" if judge_calls else "")
    )
    worst = [benchmark.worst_case(ctx, item) for _, item in benchmark.items(rows)]
    if any(w is None for w in worst):
        unpriced = ", ".join(ctx.unpriced_models()) or "some models"
        print(f"generation cost: unknown: no known price for {unpriced}")
    else:
        print(f"generation cost: ${sum(w or 0.0 for w in worst):.6f} at most (every call at its max_tokens, or the "
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
