"""Reading the answer out of a candidate, so that votes compare answers, not wordings.

The hard part of self-consistency is extraction (DESIGN: measured facts):
a chain of thought ends on its answer, so the part after its last "Answer:"
(else its short last line) is read; numbers are compared by value and the
last one counts; a phrase is compared without the question's own words, so
"The capital of France is Paris." and "Paris." vote together.  An answer cut
by ``max_tokens`` ends on an intermediate number: it is no answer.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"(?<![\w.,])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?<=\d)(?:[eE][-+]?\d+)?(?![\w]|[.,]\d)")
_YESNO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_CHOICE = (
    re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-J])\)?(?![\w])", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-J])[).:](?:\s|$)"),
    re.compile(r"\(([A-J])\)"),
    re.compile(r"^\s*([A-J])\s*$"),
)
_STOPWORDS = frozenset(
    {
        "a", "an", "the", "is", "are", "was", "were", "be", "it", "its", "it's", "this", "that", "these",
        "those", "of", "to", "in", "on", "at", "for", "by", "with", "as", "and", "or", "so", "has", "have",
        "had", "do", "does", "did", "answer", "final", "my", "i", "think", "believe", "would", "course",
        "certainly", "surely", "clearly", "obviously", "definitely", "probably", "indeed",
    }
)  # fmt: skip
_THOUSANDS = re.compile(r"(?<=\d),(\d{3})(?!\d)")
# Punctuation becomes a space, except hyphens, apostrophes and a decimal point or comma between digits.
_PUNCT = re.compile(r"(?<!\d)[.,]|[.,](?!\d)|[^\w\s.,'-]")


_MARKED = re.compile(r"(?im)^.*?\b(?:final answer|answer)\b\s*(?:is\b|:|=)\s*(.+?)\s*$")


def final_part(text: str) -> str:
    """Where an answer states its result: after its last "Answer:" (or "the answer is"), else its last
    line when it is short and there are several, else the whole text."""
    marked: list[str] = _MARKED.findall(text)
    if marked:
        return marked[-1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1 and len(lines[-1].split()) <= 12:
        return lines[-1]
    return text


def extract(text: str, how: str, question: str = "", pattern: str | None = None) -> str | None:
    """The answer ``text`` gives, read ``how`` (see ``VoteLayer.extract``); None when it gives none."""
    if how == "number":
        numbers = _NUMBER.findall(final_part(text)) or _NUMBER.findall(text)
        return canonical_number(numbers[-1]) if numbers else None
    if how == "yesno":
        found = _YESNO.search(text)
        return found.group(1).lower() if found else None
    if how == "choice":
        for choice in _CHOICE:
            found = choice.search(text.strip())
            if found:
                return found.group(1).upper()
        return None
    if how == "regex":
        assert pattern is not None
        found = re.search(pattern, text)
        if found is None:
            return None
        return fold(found.group(1) if found.groups() and found.group(1) is not None else found.group(0)) or None
    if how == "phrase":
        return phrase(final_part(text), question)
    return fold(text) or None


def canonical_number(text: str) -> str:
    """``1,024``, ``1024.0`` and ``1.024e3`` all become ``1024``."""
    value = float(text.replace(",", ""))
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def fold(text: str) -> str:
    """Case, spacing and the final full stop folded away."""
    return " ".join(text.casefold().split()).rstrip(" .!")


def phrase(text: str, question: str = "") -> str | None:
    """The words of ``text`` that are not the question's own, nor filler, case and punctuation folded."""
    asked = set(_PUNCT.sub(" ", fold(question)).split())
    words = _PUNCT.sub(" ", _THOUSANDS.sub(r"\1", fold(text))).split()
    kept = [w for w in words if w not in asked and w not in _STOPWORDS]
    if kept:
        return " ".join(kept)
    whole = " ".join(words)
    return whole or None
