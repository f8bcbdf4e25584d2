"""Prompts: the user's conversation checked, and the messages each agent receives.

The paper's semantics (Wang et al. 2024, and its reference code):
- layer 1 agents see the user's conversation unchanged;
- every agent of a later layer sees the same conversation, with the previous
  layer's outputs rendered by the layer's template and injected into the
  system message: appended after a blank line when there is one, otherwise as
  a new system message at the front;
- user and assistant turns are never changed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from moa._errors import PromptError

Message = dict[str, Any]
_ROLES = {"system", "user", "assistant"}
#: Characters that show nothing: white space, and Unicode's control and format characters (zero-width ones).
_INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp"}


def is_blank(text: str) -> bool:
    """Whether a text shows nothing at all (spaces, zero-width characters, a BOM, NULs...)."""
    return all(c.isspace() or unicodedata.category(c) in _INVISIBLE for c in text)


def clean_text(text: str) -> str:
    """``text`` with lone surrogates (half of a character cut in two) replaced by U+FFFD, so it can be stored."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _check_unicode(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PromptError(
            f"{where} is not valid text: position {exc.start} holds an undecodable byte or half a character "
            "(was it read with the wrong encoding?)"
        ) from None


def normalize_prompt(prompt: str | Sequence[Mapping[str, Any]]) -> list[Message]:
    """Turn a string or a chat conversation into checked messages (raises ``PromptError``)."""
    if isinstance(prompt, str):
        if is_blank(prompt):
            raise PromptError("the prompt is empty")
        _check_unicode(prompt, "the prompt")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, Sequence) or not prompt:
        raise PromptError("the prompt must be a non-empty string or a non-empty list of messages")
    messages: list[Message] = []
    for index, message in enumerate(prompt):
        if not isinstance(message, Mapping):
            raise PromptError(f"prompt[{index}] is {type(message).__name__}, not a message dict")
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES:
            raise PromptError(f"prompt[{index}].role is {role!r}; expected one of {', '.join(sorted(_ROLES))}")
        if not isinstance(content, str):
            raise PromptError(f"prompt[{index}].content must be a string")
        _check_unicode(content, f"prompt[{index}].content")
        if role == "system" and index != 0:
            raise PromptError(f"prompt[{index}]: a system message may only come first")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise PromptError("the last message of the prompt must be a user message")
    if is_blank(messages[-1]["content"]):
        raise PromptError(f"prompt[{len(messages) - 1}] (the last user message) is empty")
    return messages


def build_messages(
    conversation: Sequence[Message], *, system: str | None = None, references: str | None = None
) -> list[Message]:
    """The messages one agent receives.

    ``system`` (the agent's own system prompt) comes first, then the
    conversation's system message, then the ``references`` block, each joined
    by a blank line into one system message.  Other turns are copied unchanged.
    """
    turns = [dict(message) for message in conversation]
    parts: list[str] = []
    if system:
        parts.append(system)
    if turns and turns[0]["role"] == "system":
        parts.append(turns.pop(0)["content"])
    if references:
        parts.append(references)
    if parts:
        turns.insert(0, {"role": "system", "content": "\n\n".join(parts)})
    return turns
