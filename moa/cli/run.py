"""``moa run``: answer a prompt with a recipe, live, and never lose a paid answer.

The answer is printed before the run log is touched; any failure of the log
is one warning.  Each call is logged as it finishes (not even ``kill -9``
loses it); SIGTERM and Ctrl-C log the run as interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from moa.cli._cache_args import add_cache_arguments, open_cache
from moa.cli._common import EXIT_FAILED, EXIT_OK, error, log_arguments, visible
from moa.cli.args import non_negative_float, positive_float

DEFAULT_RECIPE = "local"
_RUN_HELP = """Answer PROMPT with a recipe and show each layer's agents as they work.

With a terminal: a live view, then the answer streamed as the final aggregator
writes it. With --json, or when stdout is not a terminal: the result as JSON.
Provider recipes read the provider's usual key variable (OPENAI_API_KEY,
TOGETHERAI_API_KEY, ...). Every run is recorded in the run log (see moa logs)."""


def add_parser(commands: Any) -> None:
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
    add_cache_arguments(run, default_on=False)
    log_arguments(run)
    run.add_argument("--no-log", action="store_true", help="do not record this run in the run log")
    run.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    import moa
    from moa._errors import CallbackError, MoAError
    from moa._overrides import apply_sets
    from moa._prompt import normalize_prompt
    from moa.cli import signals as _signals
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

        from moa.cli.live import LiveView

        view = LiveView(recipe, Console(), stream=not args.no_stream)
        on_token = view.on_token if not args.no_stream else None
    elif quiet_stream:

        def on_token(text: str) -> None:
            nonlocal streamed
            streamed = True
            out.write(visible(text))  # a terminal: a model's escape sequences are shown, not obeyed

    def on_event(event: Event) -> None:
        if event.output is not None and event.kind in ("call_finished", "call_failed"):
            seen.append(event.output)
            log.record_call(len(seen) - 1, event.output)
        if view is not None:
            view.on_event(event)
        elif quiet_stream and streamed and event.kind == "call_retried":
            out.write("\n")
            print("moa: the answer's stream broke off; retrying it from the start", file=sys.stderr)

    limits: dict[str, Any] = {"deadline_s": args.deadline, "allow_unpriced": args.allow_unpriced,
                              "cache": open_cache(args)}  # fmt: skip
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
        error(f"terminated (SIGTERM); {len(seen)} finished calls are in the run log" + log.hint())
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
            error(f"could not write the answer to stdout ({out.error}); {log.where()}")
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
            console.print(Text(visible(result.output)))
        except OSError as exc:
            out.error = exc
    log.finish("done", result.calls, result=result)
    if out.error is not None:
        error(f"could not write the answer to stdout ({out.error}); {log.where()}")
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

    def _warn(self, exc: Exception) -> None:
        if self.failure is None:
            if self.run_id is None:
                error(f"warning: {exc}; this run is not logged")
            else:
                error(f"warning: {exc}; run {self.run_id} may be logged without all its calls and stay 'running'")
        self.failure = str(exc)

    def where(self) -> str:
        if self.run_id is not None and self.failure is None:
            return f"it is in the run log: moa logs show {self.run_id}"
        return "it was not logged either"

    def hint(self) -> str:
        return f" (moa logs show {self.run_id})" if self.run_id is not None and self.failure is None else ""
