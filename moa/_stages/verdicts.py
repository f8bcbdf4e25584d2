"""One-token verdicts of a judge model: yes/no, or A/B, read from logprobs when there are any.

A small judge's text is a poor signal (DESIGN: measured facts), its first
token's probability a better one; both are folded for case and spaces.  A
verdict that cannot be read is ``None``: no information, never a guess.
"""

from __future__ import annotations

import math

from moa.recipe.selection import VERDICT_SETTINGS as VERDICT
from moa.result import AgentOutput

#: Every verdict call is one token at temperature 0 (``VERDICT``), with its alternatives when the provider
#: gives them.
LOGPROBS = {"logprobs": True, "top_logprobs": 5, "drop_params": True}


def params(logprobs: bool) -> dict[str, object]:
    return {**VERDICT, **(LOGPROBS if logprobs else {})}


def probability(output: AgentOutput, first: str, second: str) -> float | None:
    """P(``first``) against ``second`` in the judge's first token (1.0 / 0.0 from its text); None if unreadable."""
    if not output.ok:
        return None
    top = output.top_logprobs or {}
    mass = {first: 0.0, second: 0.0}
    for token, logprob in top.items():
        folded = token.strip().casefold()
        if folded in mass:
            mass[folded] += math.exp(logprob)
    if mass[first] + mass[second] > 0:
        return mass[first] / (mass[first] + mass[second])
    words = (output.text or "").casefold().split()
    word = words[0].strip(".,:;!\"'()*") if words else ""
    return 1.0 if word == first else 0.0 if word == second else None
