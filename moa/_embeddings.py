"""Embedding requests through litellm: the settings one takes, and the vectors that come back.

An embedding request is a ``Request`` with ``embed=True`` whose messages each
hold one text; it goes through the same call pipeline as a chat completion
(limits, budget, retries, trace) and comes back as a ``Completion`` with no
text and one vector per text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from moa._errors import BadResponseError
from moa._provider import Completion, Request

#: Settings of a chat completion that an embedding endpoint does not take (a recipe's defaults may set them).
CHAT_ONLY = frozenset(
    {
        "temperature", "max_tokens", "max_completion_tokens", "top_p", "stop", "seed", "n", "logprobs",
        "top_logprobs", "tools", "tool_choice", "parallel_tool_calls", "response_format", "presence_penalty",
        "frequency_penalty", "stream", "stream_options",
    }
)  # fmt: skip


def texts(request: Request) -> list[str]:
    """The texts an embedding request embeds, in order."""
    return [str(message.get("content") or "") for message in request.messages]


class _NoRetries(int):
    """0 that is true: litellm's OpenAI embedding reads ``max_retries or DEFAULT_MAX_RETRIES`` (litellm 1.102),
    so a plain 0 would let the OpenAI client retry twice on its own; retries are moa's (``moa._call.retry``)."""

    def __bool__(self) -> bool:
        return True


def embedding_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """litellm keyword arguments of an embedding call: the call's settings without the chat-only ones, and no
    retries of the provider's client."""
    found = {name: value for name, value in kwargs.items() if name not in CHAT_ONLY}
    if found.get("max_retries") == 0:
        found["max_retries"] = _NoRetries(0)
    return found


def embedding_completion(response: Any, request: Request, cost: float | None) -> Completion:
    """The vectors of an embedding response, in the order of the texts, checked: one flat list of finite
    numbers per text, all of one length."""
    data = _get(response, "data") or []
    wanted = len(request.messages)
    if len(data) != wanted:
        raise BadResponseError(f"{len(data)} embedding(s) came back for {wanted} text(s)", model=request.model)
    ordered = sorted(data, key=lambda item: _get(item, "index") or 0)
    vectors = []
    for item in ordered:
        vector = _get(item, "embedding")
        if not isinstance(vector, list) or not vector or not all(_number(v) for v in vector):
            raise BadResponseError(
                "an embedding is not one list of numbers (a server that returns a vector per token needs pooling: "
                "llama.cpp's --pooling mean)",
                model=request.model,
            )
        vectors.append(tuple(float(v) for v in vector))
    if len({len(v) for v in vectors}) > 1:
        raise BadResponseError("the embeddings have different lengths", model=request.model)
    usage = _get(response, "usage")
    tokens = _get(usage, "prompt_tokens") if usage is not None else None
    return Completion("", prompt_tokens=int(tokens or 0), cost_usd=cost, embeddings=tuple(vectors))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _get(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)
