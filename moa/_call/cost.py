"""Cost: the one rule for a call's worst case, and the one rule for totals.

- A prompt counts ~3 characters a token (English averages ~4: this errs high),
  plus 16 characters per message for the chat format; outputs of earlier calls
  embedded in it (an aggregator's references) count their own token counts.
  Text that tokenizers split finer than that (one-letter words, digits, symbols,
  CJK: each a token or more) counts at least one token per letter run, group of
  up to three digits, and other character.
- A call's output counts its ``max_tokens``, or the model's own output limit
  when unset.
- Prices come from the provider (``Pricing``); a model without a price makes
  the worst case unknown (None).
- A total over calls is unknown when any call's cost is unknown: a partial sum
  is never shown as a total.

Budgets (per call and per run), ``--dry-run``, ``moa.plan`` and eval
summaries all use these functions, so "fits" and "costs" mean the same
everywhere.  A run's worst case (every call succeeding, every answer at its
limit) is the sum of its stages' worst cases (``moa._stages``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

CHARS_PER_TOKEN = 3
MESSAGE_OVERHEAD_CHARS = 16
# The fewest tokens a text can take: a run of ASCII letters, up to three digits, or any other character
# that is not a space (a symbol, a CJK character, an accented letter) is at least one token.
_PIECE = re.compile(r"[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]")


def text_tokens(text: str) -> int:
    """A high estimate of a text's tokens: ~3 characters a token, or its pieces when they are more."""
    return max(-(-len(text) // CHARS_PER_TOKEN), len(_PIECE.findall(text)))


@runtime_checkable
class Pricing(Protocol):
    """A provider that can price calls before making them (budgets and ``--dry-run`` need it)."""

    def worst_case_cost(self, model: str, params: Mapping[str, Any], prompt_tokens: int) -> float | None:
        """The most a call can cost with this many prompt tokens; None when the model has no known price."""
        ...

    def max_output_tokens(self, model: str) -> int:
        """The model's own output limit (the worst case of a call without ``max_tokens``)."""
        ...


def pricing_of(provider: object) -> Pricing | None:
    """The provider's pricing, when it can price calls."""
    return provider if isinstance(provider, Pricing) else None


def prompt_tokens(messages: Sequence[Mapping[str, Any]], embedded: Sequence[tuple[int, int]] = ()) -> int:
    """Estimated prompt tokens of ``messages``; ``embedded`` holds (characters, tokens) of outputs quoted in them.

    The function calls of an assistant message count their id, name and arguments, plus
    ``TOOL_CALL_OVERHEAD_CHARS`` each for their JSON frame.
    """
    texts = [message_text(m) for m in messages]
    chars = sum(len(text) + MESSAGE_OVERHEAD_CHARS + _framing(m) for text, m in zip(texts, messages, strict=True))
    chars -= sum(c for c, _ in embedded)
    by_chars = max(0, chars) // CHARS_PER_TOKEN + 1 + sum(t for _, t in embedded)
    overhead = (len(messages) * MESSAGE_OVERHEAD_CHARS + sum(map(_framing, messages))) // CHARS_PER_TOKEN
    by_pieces = sum(len(_PIECE.findall(text)) for text in texts) + overhead + 1
    return max(by_chars, by_pieces)


#: What the JSON frame of one function call in an assistant message counts, beside its id, name and arguments.
TOOL_CALL_OVERHEAD_CHARS = 48


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message as the estimate counts it: its content, then each function call's id, name and
    arguments; a function's result, the id of its call, then its content."""
    text = str(message.get("content", ""))
    if message.get("tool_call_id") is not None:  # a function's result names the call it answers
        return f"{message['tool_call_id']} {text}"
    calls = message.get("tool_calls")
    if not calls:
        return text
    parts = [] if message.get("content") is None else [text]
    for call in calls:
        function = call.get("function") or {}
        parts += [str(call.get("id", "")), str(function.get("name", "")), str(function.get("arguments", ""))]
    return " ".join(parts)


def _framing(message: Mapping[str, Any]) -> int:
    return TOOL_CALL_OVERHEAD_CHARS * len(message.get("tool_calls") or ())


def tools_tokens(params: Mapping[str, Any]) -> int:
    """Estimated prompt tokens of the function definitions a request offers (``tools``): 0 without them."""
    tools = params.get("tools")
    return text_tokens(json.dumps(tools, sort_keys=True)) if tools else 0


def output_tokens(pricing: Pricing, model: str, params: Mapping[str, Any]) -> int:
    """The most tokens one answer can have: ``max_tokens``, else the model's own limit."""
    limit = params.get("max_tokens")
    return int(limit) if limit else pricing.max_output_tokens(model)


def embedded(texts_and_tokens: Iterable[tuple[str | None, int]]) -> list[tuple[int, int]]:
    """(characters, tokens) of outputs quoted in a prompt; an output without a token count counts its characters."""
    result = []
    for text, tokens in texts_and_tokens:
        chars = len(text or "")
        result.append((chars, tokens or text_tokens(text or "")))
    return result


def total(costs: Iterable[float | None]) -> float | None:
    """The sum of costs; None (unknown) when any is unknown."""
    result = 0.0
    for cost in costs:
        if cost is None:
            return None
        result += cost
    return result
