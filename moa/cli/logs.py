"""``moa logs``: recent runs, or one run's whole trace.  Everything shown is escaped, never markup."""

from __future__ import annotations

import argparse
from typing import Any

from moa.cli._common import EXIT_OK, log_arguments, print_columns, visible
from moa.cli.args import positive_int


def add_parser(commands: Any) -> None:
    logs = commands.add_parser("logs", help="list recent runs, or show one: moa logs show ID")
    logs.add_argument("action", nargs="?", choices=["show"], help="show one run")
    logs.add_argument("run_id", nargs="?", type=positive_int, metavar="ID")
    logs.add_argument("--limit", type=positive_int, default=20, help="how many recent runs to list (default 20)")
    logs.add_argument("--json", action="store_true", help="print JSON")
    log_arguments(logs)
    logs.set_defaults(handler=logs_command)


def logs_command(args: argparse.Namespace) -> int:
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
        console.print(
            f"[bold]run {run['id']}[/bold] · {when} · recipe {escape(visible(run['recipe']))} · {run['status']}"
        )
        console.print(Text(visible(f"prompt: {run['prompt'][-1]['content']}")))
        cost = "unknown" if run["cost_usd"] is None else f"${run['cost_usd']:.4f}"
        console.print(
            f"{len(run['calls'])} calls ({run['failed_calls']} failed) · "
            f"{run['prompt_tokens'] + run['completion_tokens']} tokens · {cost}"
            + (f" · {run['latency_s']:.1f} s" if run["latency_s"] else "")
        )
        if run["error"]:
            console.print(f"[red]error:[/red] {escape(visible(run['error']))}")
        for call in run["calls"]:
            state = "ok" if call["error"] is None else f"failed: {call['error']['message']}"
            who = escape(visible(f"{call['name']} ({call['model']})"))
            tokens = call["prompt_tokens"] + call["completion_tokens"]
            console.print(
                f"\n[cyan]layer {call['layer']} · {who}[/cyan] · {escape(visible(state))} · {tokens} tok · "
                f"{call['latency_s']:.1f} s"
            )
            if call["text"]:
                console.print(Text(visible(call["text"])))
        if run["output"]:
            console.print("\n[bold]Answer[/bold]")
            console.print(Text(visible(run["output"])))
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
        prompt = visible(run["prompt"].replace("\n", " "))
        started = time.strftime("%m-%d %H:%M", time.localtime(run["started_at"]))
        tokens = str(run["prompt_tokens"] + run["completion_tokens"])
        short = prompt if len(prompt) <= 50 else prompt[:47] + "..."
        rows.append(
            (
                str(run["id"]),
                started,
                run["status"],
                visible(run["recipe"]),
                str(run["calls"]),
                tokens,
                cost,
                seconds,
                short,
            )
        )
    print_columns(rows)
    return EXIT_OK
