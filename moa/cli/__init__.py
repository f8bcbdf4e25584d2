"""The ``moa`` command: a thin layer over the library, one module per command.  ``main(argv) -> exit code``.

Exit codes: 0 done; 1 the run failed or is incomplete (provider errors, lost
quorum, budget, failed eval items); 2 a user mistake (bad recipe, missing key,
unknown name, bad arguments); 130 interrupted; 143 terminated (SIGTERM).
Only argparse is imported up front, so ``moa --help`` is instant; litellm and
pydantic are imported only by the command that needs them.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from moa.cli import calibrate, logs, recipes, run, search, serve
from moa.cli import eval as eval_command
from moa.cli._common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, error

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "entry", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moa",
        description="Layered Mixture-of-Agents: several LLMs answer, aggregators synthesize.",
        epilog="Examples:\n  moa run 'Why is the sky blue?'\n  moa run - --recipe moa-lite < question.txt\n"
        "  moa recipes list\n  moa logs\n  moa eval qa --recipe local --data evals/qa-sample.jsonl --out runs/qa\n"
        "  moa calibrate --recipe my-cascade.yaml --run runs/dev --data dev.jsonl --out fitted.yaml\n"
        "  moa search --space space.yaml --data dev.jsonl --out runs/search --max-calls 2000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (run, recipes, logs, eval_command, calibrate, search, serve):
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed by argparse
        return int(exit_.code or 0)
    from moa._errors import ConfigError, MoAError

    warnings.formatwarning = _one_line  # moa's warnings (a broken plugin) read as messages, not source lines
    try:
        code: int = args.handler(args)
        return code
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        error(str(exc))
        return EXIT_USAGE
    except MoAError as exc:
        error(str(exc))
        return EXIT_FAILED


def _one_line(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    return f"{message}\n" if str(message).startswith("moa: ") else f"{category.__name__}: {message}\n"


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
