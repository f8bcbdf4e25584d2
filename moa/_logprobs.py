"""Token logprobs of a provider's answer (OpenAI's ``choices[0].logprobs.content``), as objects or dicts."""

from __future__ import annotations

import math
from typing import Any


def _logprob_entries(choice: Any) -> list[Any]:
    """The per-token entries of a choice's ``logprobs.content`` (an object or a dict), or none."""
    logprobs = getattr(choice, "logprobs", None)
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if isinstance(logprobs, dict):
        content = logprobs.get("content")
    return list(content) if isinstance(content, list | tuple) else []


def mean_logprob(choice: Any) -> float | None:
    """The mean logprob of the answer's tokens (None without any)."""
    values = []
    for entry in _logprob_entries(choice):
        value = entry.get("logprob") if isinstance(entry, dict) else getattr(entry, "logprob", None)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            values.append(float(value))
    return sum(values) / len(values) if values else None


def first_token_logprobs(choice: Any) -> dict[str, float] | None:
    content = _logprob_entries(choice)
    if not content:
        return None
    first = content[0]
    alternatives = first.get("top_logprobs") if isinstance(first, dict) else getattr(first, "top_logprobs", None)
    result: dict[str, float] = {}
    for item in alternatives or []:
        token = item.get("token") if isinstance(item, dict) else getattr(item, "token", None)
        value = item.get("logprob") if isinstance(item, dict) else getattr(item, "logprob", None)
        if isinstance(token, str) and isinstance(value, int | float):
            result.setdefault(token, float(value))
    return result or None
