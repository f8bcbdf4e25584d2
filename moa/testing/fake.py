"""An in-process provider that records every request and answers from a script."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from moa._errors import ProviderError
from moa._provider import Completion, Request, TokenCallback
from moa.testing._embeddings import word_vector

Reply = str | Completion | ProviderError
Responder = Callable[[Request, int], Reply]


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the fake received it (``index`` counts from 0 across all calls)."""

    index: int
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    api_key: str | None

    @property
    def system(self) -> str | None:
        first = self.messages[0] if self.messages else None
        return first["content"] if first and first["role"] == "system" else None


def _default_reply(request: Request, index: int) -> Reply:
    last = request.messages[-1]["content"]
    return f"{request.model} answer #{index} to: {last}"


class FakeProvider:
    """Answers every request with ``responder(request, index)``.

    The responder returns text, a ``Completion``, or a ``ProviderError`` to
    raise.  ``replies`` maps a model to a list of replies consumed in order
    (the last one repeats) and wins over the responder for that model.
    ``delay_s`` makes each call await that long (with the real loop clock).
    An embedding request gets each text's hashed bag of words (``moa.testing._embeddings``) unless a reply
    is a ``Completion`` or an error.  ``price_usd`` is every call's worst-case cost for budgets; give replies a
    ``Completion`` with ``cost_usd`` for what they really cost.
    Token counts of plain-text replies are word counts.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        replies: Mapping[str, list[Reply]] | None = None,
        delay_s: float = 0.0,
        price_usd: float | None = None,
    ) -> None:
        self.responder = responder or _default_reply
        self.replies = {model: list(items) for model, items in (replies or {}).items()}
        self.delay_s = delay_s
        self.price_usd = price_usd
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def complete(self, request: Request, on_token: TokenCallback | None = None) -> Completion:
        index = len(self.requests)
        self.requests.append(
            RecordedRequest(
                index=index,
                model=request.model,
                messages=[dict(m) for m in request.messages],
                params=dict(request.params),
                api_key=request.api_key,
            )
        )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            reply = self._reply(request, index)
        finally:
            self.in_flight -= 1
        if isinstance(reply, ProviderError):
            raise reply
        if request.embed and isinstance(reply, str):  # an embedding request: each text's hashed bag of words
            vectors = tuple(tuple(word_vector(str(m["content"]))) for m in request.messages)
            return Completion("", prompt_tokens=sum(len(str(m["content"]).split()) for m in request.messages),
                              embeddings=vectors)  # fmt: skip
        if isinstance(reply, str):
            prompt_words = sum(len(str(m["content"]).split()) for m in request.messages)
            reply = Completion(reply, prompt_tokens=prompt_words, completion_tokens=len(reply.split()))
        if on_token is not None:
            for piece in re.findall(r"\S+\s*|\s+", reply.text):
                on_token(piece)
        return reply

    def worst_case_cost(self, model: str, params: Mapping[str, Any], prompt_tokens: int) -> float | None:
        """``price_usd`` (the budget's view of every call); None (unpriced) when it is not set."""
        return self.price_usd

    def max_output_tokens(self, model: str) -> int:
        return 4096

    def _reply(self, request: Request, index: int) -> Reply:
        queue = self.replies.get(request.model)
        if queue:
            return queue.pop(0) if len(queue) > 1 else queue[0]
        return self.responder(request, index)

    def to_model(self, model: str) -> list[RecordedRequest]:
        """The requests sent to one model, in order."""
        return [r for r in self.requests if r.model == model]
