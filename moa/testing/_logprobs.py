"""What the loopback server answers to ``logprobs: true``: the first token's alternatives, and the tokens' logprobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Top alternatives of the first token for requests with ``logprobs: true``: {token: logprob}.
LogprobsFn = Callable[[dict[str, Any], str], dict[str, float]]
#: The logprob of every token (word) of an answer, for requests with ``logprobs: true`` (None: the first token only).
TokenLogprobFn = Callable[[dict[str, Any], str], float]


def default_logprobs(body: dict[str, Any], text: str) -> dict[str, float]:
    first = text.split()[0] if text.split() else text
    return {first: -0.1, "?": -2.4}


def logprobs_content(top: dict[str, float], text: str, each: float | None) -> dict[str, Any]:
    """``choices[0].logprobs``: the first token with its alternatives ``top``; with ``each``, every word of
    ``text`` as a token of that logprob (so that the answer's mean logprob is exactly ``each``)."""
    first = next(iter(top), text)
    alternatives = [{"token": t, "logprob": v, "bytes": None} for t, v in top.items()]
    entry = {"token": first, "logprob": top.get(first, 0.0) if each is None else each, "bytes": None,
             "top_logprobs": alternatives}  # fmt: skip
    rest = text.split()[1:] if each is not None else []
    return {"content": [entry, *({"token": w, "logprob": each, "bytes": None, "top_logprobs": []} for w in rest)]}
