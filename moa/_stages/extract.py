"""Reading the answer out of a candidate, so that votes compare answers, not wordings.

The hard part of self-consistency is extraction (DESIGN: measured facts).  A
chain of thought ends on its answer, so the part after its last ``Answer:``
line (else its short last line) is read.  Numbers are compared by value and
the last one counts (``1,024`` = ``1024.0``, ``3/4`` = ``0.75``, a Unicode
minus is a minus).  A yes/no is the first word when the answer starts with it,
else the last one said; a choice letter is the last one named as the answer.
A phrase is compared without the question's own words, so "The capital of
France is Paris." and "Paris." vote together; a phrase with exactly one
number votes as that number ("$18", "18 dollars", "makes 18").  Text is
Unicode-normalised (NFKC) and case-folded first.  An answer cut by
``max_tokens`` ends on an intermediate number: it is no answer.
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

from moa.result import Candidate

# A number as prose writes it: sign, thousands grouped by commas in
# threes, decimals, exponent, or a fraction a/b.  Units may follow at once ("5km"); letters may not precede.
_GROUP = ","  # typographic thousands spaces are dropped first (numeric())
_NUMBER = re.compile(
    rf"(?<![\w.,/])[-+]?(?:\d{{1,3}}(?:{_GROUP}\d{{3}})+|\d+)?(?:\.\d+)?(?<=\d)(?:[eE][-+]?\d+)?"
    rf"(?:/\d+(?![\d.]))?(?!\d|[.,]\d)"
)
_YESNO = re.compile(r"\b(yes|no)\b")
_CHOICE_NAMED = re.compile(r"\b(?i:answer|option|choice)\s*(?i:is)?\s*[:=]?\s*\(?([A-J])\)?(?![\w+#])")
_CHOICE_ALONE = (re.compile(r"^\s*\(?([A-J])\)?\s*[).:]?\s*$"), re.compile(r"^\s*\(?([A-J])[).:]\s"))
_STOPWORDS = frozenset(
    {
        "a", "an", "the", "is", "are", "was", "were", "be", "it", "its", "it's", "this", "that", "these",
        "those", "of", "to", "in", "on", "at", "for", "by", "with", "as", "and", "or", "so", "has", "have",
        "had", "do", "does", "did", "answer", "final", "my", "i", "think", "believe", "would", "course",
        "certainly", "surely", "clearly", "obviously", "definitely", "probably", "indeed",
    }
)  # fmt: skip
_NEGATIONS = frozenset({"not", "no", "never", "neither", "nor", "none"})
_THOUSANDS = re.compile(rf"(?<=\d){_GROUP}(\d{{3}})(?!\d)")
# Punctuation becomes a space, except hyphens, apostrophes, + and # inside names (C++, C#), and a decimal
# point or comma between digits.
_PUNCT = re.compile(r"(?<!\d)[.,]|[.,](?!\d)|[^\w\s.,'+#-]|(?<![\w+#])[+#]")
# "Answer: X" (or "Final answer = X") at the start of a line.
_MARKED = re.compile(r"(?im)^\W*(?:the\s+)?(?:final\s+)?answer\s*(?:is\s*)?[:=]\s*(.+?)\s*$")
# "... the answer is X." on the last line only.
_SAID = re.compile(r"(?i)\b(?:final\s+)?answer\s+is\s+(.+?)\W*$")


_SPACED_GROUP = re.compile(r"(?<=\d)[\u00a0\u2009\u202f](?=\d{3}(?!\d))")


def numeric(text: str) -> str:
    """NFKC with typographic thousands spaces dropped first (NFKC would make them plain spaces) and a
    Unicode minus as a minus."""
    return unicodedata.normalize("NFKC", _SPACED_GROUP.sub("", text)).replace("\u2212", "-")


def normalise(text: str) -> str:
    """NFKC, a Unicode minus as a minus, case folded, spacing collapsed."""
    return " ".join(numeric(text).casefold().split())


def final_part(text: str) -> str:
    """Where an answer states its result: after its last "Answer:" line, else its last line (when there are
    several and it is short), read after "the answer is" when it says so, else the whole text."""
    marked: list[str] = _MARKED.findall(text)
    if marked:
        return marked[-1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    said = _SAID.search(last)
    if said:
        return said.group(1)
    if len(lines) > 1 and len(last.split()) <= 12:
        return last
    return text


def extract(text: str, how: str, question: str = "", pattern: str | None = None) -> str | None:
    """The answer ``text`` gives, read ``how`` (see ``VoteLayer.extract``); None when it gives none."""
    if how == "number":
        return last_number(final_part(text)) or last_number(text)
    if how == "yesno":
        return yes_or_no(final_part(text))
    if how == "choice":
        return choice(text)
    if how == "regex":
        assert pattern is not None
        found = re.search(pattern, text)
        if found is None:
            return None
        return fold(found.group(1) if found.groups() and found.group(1) is not None else found.group(0)) or None
    if how == "phrase":
        return phrase(final_part(text), question)
    return fold(text) or None


def ran_without_answer(candidate: Candidate) -> bool:
    """A candidate whose program was run (``execute``) and gave no answer: its text is code, not an answer."""
    return candidate.execution is not None and candidate.answer is None


def last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(numeric(text))
    return canonical_number(numbers[-1]) if numbers else None


def canonical_number(text: str) -> str:
    """``1,024``, ``1024.0`` and ``1.024e3`` all become ``1024``; ``3/4`` becomes ``0.75``."""
    text = _THOUSANDS.sub(r"\1", text).lstrip("+")
    if "/" in text:
        numerator, denominator = text.split("/")
        if int(denominator) == 0:
            return text
        value = float(Fraction(numerator) / int(denominator))
    else:
        value = float(text)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def yes_or_no(text: str) -> str | None:
    """A leading yes or no set apart ("No, because...", "Yes."), else the last one said ("No factor
    divides it, so yes")."""
    words = _YESNO.findall(normalise(text))
    if not words:
        return None
    first = re.match(r"\W*(yes|no)(?:\W*$|\s*[,.;:!-])", normalise(text))
    return first.group(1) if first else words[-1]


def choice(text: str) -> str | None:
    """The letter last named as the answer ("Answer: C", "the answer is (C)"), else a letter standing alone."""
    text = unicodedata.normalize("NFKC", text)
    named = _CHOICE_NAMED.findall(text)
    if named:
        return str(named[-1])
    for line in reversed([line for line in text.splitlines() if line.strip()]):
        for alone in _CHOICE_ALONE:
            found = alone.match(line)
            if found:
                return found.group(1)
    return None


def fold(text: str) -> str:
    """Unicode-normalised, case and spacing folded, the final full stop dropped."""
    return normalise(text).rstrip(" .!")


def phrase(text: str, question: str = "") -> str | None:
    """The words of ``text`` that are not the question's own, nor filler (a lone number: that number).

    When the question's own words are all that tells answers apart ("Paris, not Lyon." to "Paris or
    Lyon?"), they are kept: dropping them would leave only "not".
    """
    numbers = _NUMBER.findall(numeric(text))
    if len(numbers) == 1:
        return canonical_number(numbers[0])
    asked = set(_PUNCT.sub(" ", fold(question)).split())
    words = _PUNCT.sub(" ", _THOUSANDS.sub(r"\1", fold(text))).split()
    content = [w for w in words if w not in _STOPWORDS]
    kept = [w for w in content if w not in asked]
    if kept and not set(kept) <= _NEGATIONS:
        return " ".join(kept)
    if content:
        return " ".join(content)
    return " ".join(words) or None
