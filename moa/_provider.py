"""The minimal provider interface every call goes through, and the data it carries.

A provider turns one ``Request`` into one ``Completion`` or raises a
``ProviderError``.  Retries, limits and events are separate thin layers
(``_retry``, ``_limits``, ``_engine``) wrapped around any provider, so the
in-process fake in ``moa.testing`` exercises them exactly as litellm does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

#: Called with each piece of text as a streamed answer arrives.
TokenCallback = Callable[[str], None]


@dataclass(frozen=True)
class Request:
    """One call: model, messages and keyword arguments.  The key never shows in ``repr``."""

    model: str
    messages: Sequence[Mapping[str, Any]]
    params: Mapping[str, Any] = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)
    #: An embedding request: each message's ``content`` is one text to embed (``Completion.embeddings``).
    embed: bool = False


@dataclass(frozen=True)
class ToolRequest:
    """A function call the model asked for: its id, the function's name and its arguments as the model wrote
    them (JSON text, not yet parsed: malformed JSON is the tool loop's to report back to the model)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Completion:
    """What came back: the text, exact token counts when the provider gave them, and the cost.

    ``cost_usd`` is None when the model's price is unknown.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    #: Top alternatives of the first generated token, {token: logprob}, when requested
    #: with ``logprobs=True, top_logprobs=k`` (the AlpacaEval judge reads them).
    top_logprobs: dict[str, float] | None = None
    #: Why the provider stopped (``stop``, ``length``...), when it said.
    finish_reason: str | None = None
    #: The mean logprob of the answer's tokens, when the request asked for ``logprobs`` and the provider gave them.
    mean_logprob: float | None = None
    #: The functions the model asked to call (only when the request offered ``tools``); ``text`` may then be empty.
    tool_calls: tuple[ToolRequest, ...] = ()
    #: An embedding request's vectors, one per text in order (``text`` is then empty).
    embeddings: tuple[tuple[float, ...], ...] = ()


class Provider(Protocol):
    """Anything that can complete a request."""

    async def complete(self, request: Request, on_token: TokenCallback | None = None) -> Completion:
        """Answer one request; stream text to ``on_token`` when it is given."""
        ...


@runtime_checkable
class Preflight(Protocol):
    """A provider that can refuse unreachable models before any call (missing key or extra)."""

    def preflight(self, calls: Sequence[tuple[str, Mapping[str, Any], bool]]) -> None:
        """Raise a ``ConfigError`` if a planned (model, params, has_key) call cannot be made."""
        ...


def provider_of(model: str) -> str:
    """The provider a model string belongs to: its prefix before ``/``.

    Bare names of well-known families map to their provider (``gpt-4o`` ->
    ``openai``, ``claude-3-5-sonnet`` -> ``anthropic``); any other bare name is
    its own group.
    """
    if model.startswith("local:"):
        return "local"  # a user's GGUF file: the local provider, like the bundled models
    if "/" in model:
        return model.split("/", 1)[0]
    for prefix, provider in _BARE_PREFIXES:
        if model.startswith(prefix):
            return provider
    return model


_BARE_PREFIXES = (
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("chatgpt", "openai"),
    ("claude", "anthropic"),
    ("gemini", "gemini"),
)
