"""How ``moa eval qa`` scores an output: which part holds the answer (``--score``), a cut output, and the
confidence of checked answers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from moa.result import LayerResult

# A number as written in prose: an optional sign (not after a letter or digit: "5-3" is no -3), thousands
# grouped by commas only in threes ("1,2,3" is three numbers), decimals, an exponent; not glued to letters.
_NUMBER = re.compile(
    r"(?<![\w.,])(?:(?<![\w-])[-+])?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?<=\d)(?:[eE][-+]?\d+)?(?![\w]|[.,]\d)"
)


MODES = ("last-number", "final-line", "anywhere")
MODES_TEXT = "last-number, final-line, anywhere or regex:PATTERN"


@dataclass(frozen=True)
class Scoring:
    """Which part of an output holds its answer (``moa eval qa --score``).

    Not part of the run's identity: a finished run re-scored another way needs no new call.
    """

    mode: str = "last-number"
    pattern: re.Pattern[str] | None = None  # mode "regex"

    def __post_init__(self) -> None:
        if self.mode not in (*MODES, "regex") or (self.mode == "regex") != (self.pattern is not None):
            raise ValueError(f"no scoring {self.mode!r} with pattern {self.pattern!r}: use Scoring.parse()")

    @classmethod
    def parse(cls, text: str) -> Scoring:
        """``last-number``, ``final-line``, ``anywhere`` or ``regex:PATTERN``; a ``ValueError`` says why not."""
        if text in MODES:
            return cls(text)
        if not text.startswith("regex:"):
            raise ValueError(f"{text!r} is not a scoring mode: use {MODES_TEXT}")
        if not text.removeprefix("regex:"):
            raise ValueError(f"{text!r}: the pattern is empty")
        try:
            return cls("regex", re.compile(text.removeprefix("regex:")))
        except re.error as exc:
            raise ValueError(f"{text!r}: the pattern does not compile: {exc}") from None

    def __str__(self) -> str:
        return f"regex:{self.pattern.pattern}" if self.pattern is not None else self.mode

    def answer(self, output: str) -> str | None:
        """Mode ``regex``: group 1 (without groups, the whole match) of the last match that gives a non-blank one."""
        assert self.pattern is not None
        found = None
        for match in self.pattern.finditer(output):
            text = match.group(1) if self.pattern.groups else match.group(0)
            if text is not None and text.strip():  # `\d*` matches nothing at the end, after the answer
                found = text
        return found


#: Today's rule: a numeric answer is the output's last number.
DEFAULT_SCORING = Scoring()


def is_correct(output: str, row: dict[str, Any], scoring: Scoring = DEFAULT_SCORING) -> bool:
    """Whether the output's answer is one of the row's (``answers``) or matches its ``regex``, read as ``scoring`` says.

    ``last-number`` (the default): a numeric answer is the output's *last* number, by value
    (``1,024`` = ``1024`` = ``1024.0``), never part of another one (``5`` is not in ``-5``, ``5.5`` or
    ``5,000``): an answer ends on its result, and a number anywhere would count the question's own
    numbers echoed back, or a chain of thought's intermediate steps, as right.  Other answers match
    as whole words, case-insensitive, and a row's regex is searched, anywhere in the output.
    ``final-line``: the same, in the output's last non-empty line only.  ``anywhere``: a number
    counts wherever it stands.  ``regex:PATTERN``: the answer is what ``Scoring.answer`` finds
    (none: wrong), compared as its one number by value, or else as a word, case-insensitive, with
    surrounding punctuation and quotes ignored; a row's regex is searched in it.
    """
    if scoring.pattern is not None:
        found = scoring.answer(output)
        if found is None:
            return False
        if "regex" in row:
            return re.search(row["regex"], found) is not None
        return any(_is_answer(found, answer) for answer in row["answers"])
    text = _final_line(output) if scoring.mode == "final-line" else output
    if "regex" in row:
        return re.search(row["regex"], text) is not None
    numbers = [_as_number(number) for number in _NUMBER.findall(text)]
    scored = numbers if scoring.mode == "anywhere" else numbers[-1:]
    for answer in row["answers"]:
        value = _as_number(str(answer))
        if value is not None:
            if value in scored:
                return True
        elif re.search(rf"(?<!\w){re.escape(str(answer))}(?!\w)", text, re.IGNORECASE):
            return True
    return False


def finish_reason(record: Mapping[str, Any]) -> str | None:
    """Why the call that wrote an item's output stopped (``length``: cut by ``max_tokens``), from its trace."""
    traces = record.get("traces") or []
    layers = traces[-1].get("layers") if traces else None
    passed = LayerResult.model_validate(layers[-1]).passed_on() if layers else []
    return passed[0].finish_reason if passed else None


def score(record: Mapping[str, Any], row: dict[str, Any], scoring: Scoring) -> bool:
    """An item's output is right, as ``scoring`` reads it; a cut one has no answer (it ends on a step, not a result)."""
    return finish_reason(record) != "length" and is_correct(record["output"], row, scoring)


def _final_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _is_answer(found: str, answer: Any) -> bool:
    value = _as_number(str(answer))
    if value is None:
        return _bare(found).casefold() == _bare(str(answer)).casefold()
    numbers = _NUMBER.findall(found)
    return len(numbers) == 1 and _as_number(numbers[0]) == value


def _bare(text: str) -> str:
    return text.strip().strip(".,;:!?\"'*`").strip()


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def confidence_of(record: Mapping[str, Any]) -> str | None:
    """The confidence of an item's answer (``MoAResult.confidence``), read from its trace."""
    traces = record.get("traces") or []
    last = traces[-1] if traces and isinstance(traces[-1], Mapping) else {}
    found = last.get("confidence")
    return found if found in ("verified", "unverified") else None


def confidence_summary(finished: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For recipes whose answers are checked (``verify``: a validator, an agreement): how many answers were
    verified or not, and how many of each were right (the precision of the check); None when none was."""
    if not any(r["confidence"] for r in finished):
        return None
    found: dict[str, Any] = {}
    for level in ("verified", "unverified"):
        these = [r for r in finished if r["confidence"] == level]
        right = sum(r["correct"] for r in these)
        found[level] = {"answers": len(these), "correct": right,
                        "accuracy": right / len(these) * 100 if these else None}  # fmt: skip
    found["unchecked"] = sum(r["confidence"] is None for r in finished)
    return found
