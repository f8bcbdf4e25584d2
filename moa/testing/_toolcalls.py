"""Scripted function calls for the loopback server: a responder may answer with a dict instead of text.

``{"tool_calls": [{"name": "python", "arguments": {"code": "print(1)"}}], "content": None}``
is sent back as an OpenAI answer whose message calls those functions (``finish_reason:
tool_calls``).  ``arguments`` given as a string go out exactly as written (malformed JSON
included); an ``id`` may be given, else ``call_<request>_<n>``.
"""

from __future__ import annotations

import json
from typing import Any


def tool_message(reply: dict[str, Any], index: int) -> tuple[dict[str, Any], int]:
    """The assistant message a dict reply stands for, and its length in tokens (words, as for text)."""
    calls = []
    words = len(str(reply.get("content") or "").split())
    for number, call in enumerate(reply.get("tool_calls") or []):
        arguments = call.get("arguments", {})
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        words += len(text.split()) + 1
        calls.append(
            {
                "id": call.get("id", f"call_{index}_{number}"),
                "type": "function",
                "function": {"name": call["name"], "arguments": text},
            }
        )
    message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
    if calls:
        message["tool_calls"] = calls
    return message, words


def stream_delta(message: dict[str, Any]) -> dict[str, Any]:
    """The one chunk's delta that streams a dict reply whole."""
    delta = dict(message)
    delta["tool_calls"] = [{"index": n, **call} for n, call in enumerate(message.get("tool_calls", []))]
    return delta
