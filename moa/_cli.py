"""The ``moa`` command: a thin layer over the library.  ``main(argv) -> exit code``.

Exit codes: 0 done; 1 the run failed (provider errors, lost quorum); 2 a user
mistake (bad recipe, missing key, unknown name, bad arguments); 130 interrupted.
Only argparse is imported up front, so ``moa --help`` is instant; litellm is
imported only when a call is made.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moa._argtypes import non_negative_float, positive_float, positive_int

DEFAULT_RECIPE = "local"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moa",
        description="Layered Mixture-of-Agents: several LLMs answer, aggregators synthesize.",
        epilog="Examples:\n  moa run 'Why is the sky blue?'\n  moa run - --recipe moa-lite < question.txt\n"
        "  moa recipes list\n  moa logs\n  moa eval qa --recipe local --data evals/qa-sample.jsonl --out runs/qa",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="answer a prompt with a recipe",
        description=_RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("prompt", metavar="PROMPT", help="the question; '-' reads it from stdin")
    run.add_argument(
        "--recipe",
        "-r",
        default=DEFAULT_RECIPE,
        help=f"built-in name or YAML path (default: {DEFAULT_RECIPE}, the bundled local model)",
    )
    run.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a call setting (temperature=0.2, max_tokens=100, api_base=URL) or a "
        "recipe field by path (layers[0].agents[1].model=openai/gpt-4o); repeatable",
    )
    run.add_argument("--json", action="store_true", help="print the whole result as JSON (no live view)")
    run.add_argument("--quiet", "-q", action="store_true", help="print only the answer")
    run.add_argument("--no-stream", action="store_true", help="do not stream the answer token by token")
    run.add_argument("--max-cost", type=non_negative_float, metavar="USD",
                     help="budget: a call whose worst case does not fit is not started (exit 1)")  # fmt: skip
    run.add_argument("--allow-unpriced", action="store_true",
                     help="under --max-cost, count models with no known price as free, not refuse them")  # fmt: skip
    run.add_argument("--deadline", type=positive_float, metavar="SECONDS", help="stop the whole run after this long")
    _log_arguments(run)
    run.add_argument("--no-log", action="store_true", help="do not record this run in the run log")
    run.set_defaults(handler=_cmd_run)

    recipes = commands.add_parser("recipes", help="list, show and validate recipes")
    recipe_commands = recipes.add_subparsers(dest="recipes_command", metavar="ACTION", required=True)
    listing = recipe_commands.add_parser("list", help="built-in recipes and those in ./recipes/")
    listing.set_defaults(handler=_cmd_recipes_list)
    show = recipe_commands.add_parser("show", help="the plan of a recipe: who gets which prompt")
    show.add_argument("name", metavar="NAME", help="built-in name or YAML path")
    show.set_defaults(handler=_cmd_recipes_show)
    validate = recipe_commands.add_parser("validate", help="check a recipe file (exit 1 if invalid)")
    validate.add_argument("path", metavar="PATH")
    validate.set_defaults(handler=_cmd_recipes_validate)

    schema = commands.add_parser("schema", help="print the JSON schema of recipes (for editors)")
    schema.set_defaults(handler=_cmd_schema)

    logs = commands.add_parser("logs", help="list recent runs, or show one: moa logs show ID")
    logs.add_argument("action", nargs="?", choices=["show"], help="show one run")
    logs.add_argument("run_id", nargs="?", type=positive_int, metavar="ID")
    logs.add_argument("--limit", type=positive_int, default=20, help="how many recent runs to list (default 20)")
    logs.add_argument("--json", action="store_true", help="print JSON")
    _log_arguments(logs)
    logs.set_defaults(handler=_cmd_logs)

    from moa.eval._commands import add_parser as add_eval_parser

    add_eval_parser(commands)
    return parser


_RUN_HELP = """Answer PROMPT with a recipe and show each layer's agents as they work.

With a terminal: a live view, then the answer streamed as the final aggregator
writes it. With --json, or when stdout is not a terminal: the result as JSON.
Provider recipes read the provider's usual key variable (OPENAI_API_KEY,
TOGETHERAI_API_KEY, ...). Every run is recorded in the run log (see moa logs)."""


def _log_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-db",
        type=Path,
        metavar="PATH",
        help="run-log database (default: $MOA_LOG_DB or ~/.local/share/moa/runs.sqlite)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed by argparse
        return int(exit_.code or 0)
    from moa._errors import ConfigError, MoAError

    try:
        code: int = args.handler(args)
        return code
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except MoAError as exc:
        _error(str(exc))
        return EXIT_FAILED


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


def _error(message: str) -> None:
    print(f"moa: {message}", file=sys.stderr)


# ------------------------------------------------------------------- moa run


def _cmd_run(args: argparse.Namespace) -> int:
    import moa
    from moa import _signals
    from moa._errors import CallbackError, MoAError
    from moa._overrides import apply_sets
    from moa._plan import normalize_prompt
    from moa.events import Event
    from moa.result import AgentOutput

    # Everything the user gave is checked before anything is logged or called.
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    recipe, overrides = apply_sets(args.recipe, args.sets)
    conversation = normalize_prompt(prompt)
    interactive = sys.stdout.isatty() and not args.json and not args.quiet
    out = _Stdout()
    log = _SafeLog(args.log_db, enabled=not args.no_log)
    log.start(recipe.name, recipe.model_dump_json(), conversation)
    seen: list[AgentOutput] = []

    view = None
    on_token = None
    # --quiet streams only to a terminal: piped, a stream cut and retried would leave both copies in the file.
    quiet_stream = args.quiet and not args.json and not args.no_stream and sys.stdout.isatty()
    streamed = False
    if interactive:
        from rich.console import Console

        from moa._live import LiveView

        view = LiveView(recipe, Console(), stream=not args.no_stream)
        on_token = view.on_token if not args.no_stream else None
    elif quiet_stream:

        def on_token(text: str) -> None:
            nonlocal streamed
            streamed = True
            out.write(text)

    def on_event(event: Event) -> None:
        if event.output is not None and event.kind in ("call_finished", "call_failed"):
            seen.append(event.output)
            log.record_call(len(seen) - 1, event.output)
        if view is not None:
            view.on_event(event)
        elif quiet_stream and streamed and event.kind == "call_retried":
            out.write("\n")
            print("moa: the answer's stream broke off; retrying it from the start", file=sys.stderr)

    limits: dict[str, Any] = {"deadline_s": args.deadline, "allow_unpriced": args.allow_unpriced}
    if args.max_cost is not None:
        limits["max_cost_usd"] = args.max_cost

    def go() -> Any:
        return _signals.run(
            lambda: moa.run(conversation, recipe, on_event=on_event, on_token=on_token, settings=overrides, **limits)
        )

    try:
        if view is not None:
            with view:
                result = go()
        else:
            result = go()
    except KeyboardInterrupt:
        log.finish("interrupted", seen, error="interrupted by the user")
        raise
    except _signals.Terminated:
        log.finish("interrupted", seen, error="terminated (SIGTERM)")
        _error(f"terminated (SIGTERM); {len(seen)} finished calls are in the run log" + log.hint())
        return _signals.EXIT_TERMINATED
    except MoAError as exc:
        partial = getattr(exc, "partial", None)
        log.finish("failed", partial.calls if partial is not None else seen, error=str(exc))
        if args.json:  # the partial trace and the error, as one JSON document
            data = {"error": {"type": type(exc).__name__, "message": str(exc)}}
            if partial is not None:
                data["partial"] = partial.model_dump(mode="json")
            out.print_json(log.run_id, data)
        if isinstance(exc, CallbackError) and out.error is not None:
            _error(f"could not write the answer to stdout ({out.error}); {log.where()}")
            return EXIT_FAILED
        raise

    # The answer is printed before the log is touched: a broken log must never cost it.
    if args.json or not (interactive or args.quiet):
        out.print_json(log.run_id, result.model_dump(mode="json"))
    elif args.quiet:
        out.write("\n" if quiet_stream else result.output + "\n")
    elif view is not None and not view.streaming:
        from rich.console import Console
        from rich.text import Text

        try:
            console = Console()
            console.print(Text("Answer", style="bold"))
            console.print(Text(result.output))
        except OSError as exc:
            out.error = exc
    log.finish("done", result.calls, result=result)
    if out.error is not None:
        _error(f"could not write the answer to stdout ({out.error}); {log.where()}")
        return EXIT_FAILED
    if interactive and log.run_id is not None:
        print(f"(run {log.run_id} logged: moa logs show {log.run_id})", file=sys.stderr)
    return EXIT_OK


class _Stdout:
    """Writes to stdout that never raise: the first failure (full disk, closed pipe) is kept, later writes skipped."""

    def __init__(self) -> None:
        self.error: OSError | None = None

    def write(self, text: str) -> None:
        if self.error is not None:
            return
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except OSError as exc:
            self.error = exc

    def print_json(self, run_id: int | None, data: dict[str, Any]) -> None:
        import json

        if run_id is not None:
            data = {"run_id": run_id, **data}
        self.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class _SafeLog:
    """The run log as the CLI uses it: any failure is one warning on stderr, never a lost answer."""

    def __init__(self, path: Path | None, *, enabled: bool = True) -> None:
        from moa._runlog import RunLog

        self.log = RunLog(path) if enabled else None
        self.run_id: int | None = None
        self.failure: str | None = None

    def start(self, recipe: str, recipe_json: str, prompt: Any) -> None:
        from moa._runlog import RunLogError

        if self.log is None:
            return
        try:
            self.run_id = self.log.start(recipe, recipe_json, prompt)
        except RunLogError as exc:
            self._warn(exc)

    def record_call(self, position: int, call: Any) -> None:
        from moa._runlog import RunLogError

        if self.log is None or self.run_id is None or self.failure is not None:
            return
        try:
            self.log.record_call(self.run_id, position, call)
        except RunLogError as exc:
            self._warn(exc)

    def finish(self, status: str, calls: Any, **kwargs: Any) -> None:
        from moa._runlog import RunLogError

        if self.log is None or self.run_id is None:
            return
        try:
            self.log.finish(self.run_id, status, calls, **kwargs)
        except RunLogError as exc:
            self._warn(exc)

    def where(self) -> str:
        if self.run_id is not None and self.failure is None:
            return f"it is in the run log: moa logs show {self.run_id}"
        return "it was not logged either"

    def hint(self) -> str:
        return f" (moa logs show {self.run_id})" if self.run_id is not None and self.failure is None else ""

    def _warn(self, exc: Exception) -> None:
        if self.failure is None:
            _error(f"warning: {exc}; this run is not logged")
        self.failure = str(exc)


# --------------------------------------------------------------- moa recipes


def _cmd_recipes_list(args: argparse.Namespace) -> int:
    from moa._errors import ConfigError, RecipeError
    from moa._loader import builtin_recipes, load_recipe

    sources: list[tuple[str, str]] = [(name, "built-in") for name in builtin_recipes()]
    local_dir = Path.cwd() / "recipes"
    if local_dir.is_dir() and local_dir.resolve() != _builtin_dir():
        sources += [(str(p), str(p.relative_to(Path.cwd()))) for p in sorted(local_dir.glob("*.y*ml"))]
    rows = [("recipe", "layers", "calls/query", "models", "source")]
    for source, origin in sources:
        try:
            recipe = load_recipe(source)
        except ConfigError as exc:  # one bad file (recipe or template) is listed as such, not fatal
            reason = exc.problems[0][1] if isinstance(exc, RecipeError) else str(exc)
            rows.append((Path(source).stem, "-", "-", f"invalid: {reason.splitlines()[0]}", origin))
            continue
        models = _short_models(recipe.models)
        rows.append((recipe.name, str(len(recipe.layers)), str(recipe.calls_per_query), models, origin))
    _print_columns(rows)
    return EXIT_OK


def _print_columns(rows: Sequence[Sequence[str]]) -> None:
    """Plain aligned columns, one line per row, never wrapped (readable when piped too)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _builtin_dir() -> Path:
    from moa._resources import data_dir

    return data_dir("recipes").resolve()


def _short_models(models: Sequence[str], limit: int = 2) -> str:
    shown = [m.rsplit("/", 1)[-1] for m in models[:limit]]
    return ", ".join(shown) + (f" +{len(models) - limit} more" if len(models) > limit else "")


def _cmd_recipes_show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from moa._loader import load_recipe
    from moa._plan import plan

    recipe = load_recipe(args.name)
    console = Console(highlight=False)
    # Names, descriptions, models and prompts are the user's text: escaped, never read as markup.
    console.print(f"[bold]{escape(recipe.name)}[/bold]: {escape(recipe.description)}")
    console.print(f"{len(recipe.layers)} layers, {recipe.calls_per_query} calls per query\n")
    previous = 0
    for layer_plan, layer in zip(plan(recipe), recipe.layers, strict=True):
        console.print(
            f"[bold cyan]Layer {layer_plan.index}[/bold cyan] · {layer.kind} · {layer_plan.calls} calls"
            + (f" · quorum {layer.min_success}" if layer.min_success else "")
        )
        for agent in layer.agents:
            settings = {
                **recipe.defaults.model_dump(exclude_none=True, exclude={"extra"}),
                **agent.model_dump(exclude_none=True, exclude={"model", "name", "system", "n", "extra"}),
            }
            shown = " ".join(f"{k}={v}" for k, v in settings.items() if k != "api_key_env")
            times = f" x {agent.n}" if agent.n > 1 else ""
            model = f"{agent.model}  " if agent.label != agent.model else ""
            console.print(f"  - {escape(agent.label)}{times}  [dim]{escape(model + shown)}[/dim]", soft_wrap=True)
            if agent.system:
                console.print(f"    system prompt: {escape(repr(agent.system))}")
        if layer_plan.index == 1:
            console.print("  each gets: the conversation unchanged (after its own system prompt, if any)")
        elif layer.kind == "aggregate_seq":
            console.print(
                f"  folds the {previous} previous outputs {layer.effective_window} at a time; each step's "
                "system message carries the synthesis so far and the next outputs"
            )
        else:
            console.print(
                f"  each gets: the conversation, with the previous layer's {previous} outputs rendered "
                f"by {escape(str(layer_plan.template))} appended to the system message; user turns unchanged"
            )
        previous = 1 if layer.kind == "aggregate_seq" else layer_plan.calls
        console.print()
    return EXIT_OK


def _cmd_recipes_validate(args: argparse.Namespace) -> int:
    from moa._errors import RecipeError
    from moa._loader import load_recipe

    try:
        recipe = load_recipe(Path(args.path))
    except RecipeError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    shape = f"{len(recipe.layers)} layers, {recipe.calls_per_query} calls"
    print(f"ok: {args.path}: recipe {recipe.name!r}, {shape}")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    import json

    from moa.recipe import Recipe

    print(json.dumps(Recipe.model_json_schema(), indent=2))
    return EXIT_OK


# ------------------------------------------------------------------ moa logs


def _cmd_logs(args: argparse.Namespace) -> int:
    import json
    import time

    from rich.console import Console
    from rich.markup import escape
    from rich.text import Text

    from moa._errors import ConfigError
    from moa._runlog import RunLog

    log = RunLog(args.log_db)
    console = Console(highlight=False, soft_wrap=True)
    if args.action == "show":
        if args.run_id is None:
            raise ConfigError("moa logs show needs a run ID (see: moa logs)")
        run = log.get(args.run_id)
        if run is None:
            raise ConfigError(f"no run {args.run_id} in {log.path}")
        if args.json:
            print(json.dumps(run, indent=2, ensure_ascii=False))
            return EXIT_OK
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["started_at"]))
        # Everything from the log is the user's or a model's text: escaped, never read as markup.
        console.print(f"[bold]run {run['id']}[/bold] · {when} · recipe {escape(run['recipe'])} · {run['status']}")
        console.print(Text(f"prompt: {run['prompt'][-1]['content']}"))
        cost = "unknown" if run["cost_usd"] is None else f"${run['cost_usd']:.4f}"
        console.print(
            f"{len(run['calls'])} calls ({run['failed_calls']} failed) · "
            f"{run['prompt_tokens'] + run['completion_tokens']} tokens · {cost}"
            + (f" · {run['latency_s']:.1f} s" if run["latency_s"] else "")
        )
        if run["error"]:
            console.print(f"[red]error:[/red] {escape(run['error'])}")
        for call in run["calls"]:
            state = "ok" if call["error"] is None else f"failed: {call['error']['message']}"
            console.print(
                f"\n[cyan]layer {call['layer']} · {escape(call['name'])} ({escape(call['model'])})[/cyan] · "
                f"{escape(state)} · {call['prompt_tokens'] + call['completion_tokens']} tok · "
                f"{call['latency_s']:.1f} s"
            )
            if call["text"]:
                console.print(Text(call["text"]))
        if run["output"]:
            console.print("\n[bold]Answer[/bold]")
            console.print(Text(run["output"]))
        return EXIT_OK
    runs = log.recent(args.limit)
    if args.json:
        print(json.dumps(runs, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not runs:
        console.print(Text(f"no runs logged yet in {log.path}"))
        return EXIT_OK
    rows = [("id", "started", "status", "recipe", "calls", "tokens", "cost", "seconds", "prompt")]
    for run in runs:
        cost = "?" if run["cost_usd"] is None else f"${run['cost_usd']:.4f}"
        seconds = f"{run['latency_s']:.1f}" if run["latency_s"] else "-"
        prompt = run["prompt"].replace("\n", " ")
        started = time.strftime("%m-%d %H:%M", time.localtime(run["started_at"]))
        tokens = str(run["prompt_tokens"] + run["completion_tokens"])
        short = prompt if len(prompt) <= 50 else prompt[:47] + "..."
        rows.append(
            (
                str(run["id"]),
                started,
                run["status"],
                run["recipe"],
                str(run["calls"]),
                tokens,
                cost,
                seconds,
                short,
            )
        )
    _print_columns(rows)
    return EXIT_OK
