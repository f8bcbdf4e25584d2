"""What every command shares: exit codes, the one way errors are printed, common arguments."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from moa._secrets import redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def error(message: str) -> None:
    """Print one ``moa: ...`` line (or a few, for a multi-cause error) to stderr, secrets scrubbed."""
    print(f"moa: {redact(message)}", file=sys.stderr)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """Text for a terminal: control characters (escape sequences that retitle, clear or recolour it) shown as
    ``\\x1b`` and so on, never sent raw; newlines and tabs kept."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def log_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-db",
        type=Path,
        metavar="PATH",
        help="run-log database (default: $MOA_LOG_DB or ~/.local/share/moa/runs.sqlite)",
    )


def print_columns(rows: Sequence[Sequence[str]]) -> None:
    """Plain aligned columns, one line per row, never wrapped (readable when piped too)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rows = [[visible(cell) for cell in row] for row in rows]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
