"""argparse types for the command line's numbers: finite, in range, or a one-line usage error.

``float("nan")``, ``inf``, 0 and negative values are refused where they would
switch a limit off or hang (``--max-cost nan``, ``--deadline 0``, ``--concurrency 0``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(text: str, kind: type[float] | type[int]) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (seconds of a deadline)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of 0 or more (dollars of a budget: 0 allows only free models)."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return value


#: The largest whole number the command line takes (a SQLite integer, a list index): beyond it, a mistake.
MAX_INT = 2**62


def positive_int(text: str) -> int:
    """A whole number from 1 to ``MAX_INT`` (items, concurrency, rows, run ids)."""
    value = int(_number(text, int))
    if not 1 <= value <= MAX_INT:
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 1 and {MAX_INT}")
    return value


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(_number(text, int))
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: must be between {low} and {high}")
        return value

    return parse
