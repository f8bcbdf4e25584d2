"""Entry point of the local model's server process: ``python -m moa._llama_server ARGS``.

It runs ``llama_cpp.server`` with the same arguments, after one change: on CPUs
with AMX, llama.cpp repacks the weights for its AMX kernels, and that kernel
crashed the server with a segmentation fault on the first request here
(llama-cpp-python 0.3.36, SmolLM2's Q4_1 weights, a Xeon with amx_int8). The
plain CPU kernels answer correctly, so the "extra buffer types" that hold
repacked weights are switched off on such CPUs.  ``MOA_LLAMA_EXTRA_BUFFERS=1``
turns them back on; ``=0`` turns them off everywhere.

A second change lets models call functions in the format they were trained on. Models such as
Qwen2.5 carry a chat template that lists the tools and asks for each call as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; llama.cpp's server renders that
template but hands those calls back as plain text (without the tags: they are special tokens),
and its own ``chatml-function-calling`` format is no way round it (llama-cpp-python 0.3.36: its
grammar lets a reply that chose to answer hold nothing but a function name). For a template that
asks for ``<tool_call>``, the handler here turns those blocks into OpenAI ``tool_calls``
(``finish_reason: "tool_calls"``), renders earlier calls' arguments as the objects the template
expects, and with ``tool_choice: "none"`` leaves the tools out of the prompt, so that the model
answers. Other templates, streams and a forced ``tool_choice`` are served as before.

A third: a server started with ``--embedding True`` pools each text's token vectors into one (their mean),
as an embeddings endpoint is expected to; llama.cpp's default for a chat model is no pooling at all.

This module runs only in the child process; moa itself never imports llama_cpp.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _cpu_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return "amx_tile" in flags


def extra_buffers_wanted() -> bool:
    """Whether llama.cpp may repack weights into its extra buffer types (AMX and others)."""
    choice = os.environ.get("MOA_LLAMA_EXTRA_BUFFERS", "").strip()
    if choice in ("0", "1"):
        return choice == "1"
    return not _cpu_has_amx()


_TOOL_CALL_TAG = re.compile(r"</?tool_call>")
_TRIPLE_QUOTED = re.compile(r'"""(.*?)"""', re.DOTALL)


def parse_tool_calls(text: str, names: set[str]) -> tuple[list[dict[str, Any]], str]:
    """The calls in ``text`` of functions in ``names``, and the text outside them.

    A call is a JSON object ``{"name": ..., "arguments": ...}`` at the start of a line, inside
    ``<tool_call>`` tags or not: llama.cpp leaves special tokens, which these tags are for
    Qwen2.5, out of the text. Only objects naming an offered function count, so an answer
    that is JSON stays an answer; arguments that are not an object pass on as written.  Small
    models often quote a program the Python way, between three double quotes: such a string is read
    as the JSON string it means, and a last call that lacks its closing braces is read closed.
    """
    text = _TOOL_CALL_TAG.sub("\n", text)
    text = _TRIPLE_QUOTED.sub(lambda quoted: json.dumps(quoted.group(1)), text)
    decoder = json.JSONDecoder()
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    end = 0
    for start in (m.start(1) for m in re.finditer(r"(?m)^[ \t]*(\{)", text)):
        if start < end:
            continue
        call, stop = _json_object_at(decoder, text, start)
        if not isinstance(call, dict) or call.get("name") not in names:
            continue
        arguments = call.get("arguments", {})
        arguments = arguments if isinstance(arguments, str) else json.dumps(arguments)
        calls.append({"name": call["name"], "arguments": arguments})
        kept.append(text[end:start])
        end = stop
    kept.append(text[end:])
    return calls, "".join(kept).strip()


def _json_object_at(decoder: json.JSONDecoder, text: str, start: int) -> tuple[Any, int]:
    """The JSON value that starts at ``start``, and where it ends; a last one that lacks its closing braces
    (a small model's slip) is read closed.  ``(None, start)`` when there is none."""
    try:
        return decoder.raw_decode(text, start)
    except ValueError:
        pass
    for closing in ("}", "}}"):
        try:
            return decoder.raw_decode(text[start:].rstrip() + closing)[0], len(text)
        except ValueError:
            continue
    return None, start


def _arguments_as_objects(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant message whose tool calls' JSON-string arguments are objects, as chat templates expect."""
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        function = dict(call.get("function") or {})
        with contextlib.suppress(TypeError, ValueError):  # not JSON: passed on as it is
            function["arguments"] = json.loads(function.get("arguments") or "{}")
        calls.append({**call, "function": function})
    return {**message, "tool_calls": calls}


def with_tool_calls(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler``, a chat template's, with ``<tool_call>`` blocks in its replies turned into tool calls."""

    def handle(*, llama: Any, messages: list[dict[str, Any]], tools: Any = None, tool_choice: Any = None,
               stream: bool = False, **kwargs: Any) -> Any:  # fmt: skip
        if not tools or stream or isinstance(tool_choice, dict):
            return handler(llama=llama, messages=messages, tools=tools, tool_choice=tool_choice, stream=stream,
                           **kwargs)  # fmt: skip
        messages = [_arguments_as_objects(dict(message)) for message in messages]
        if tool_choice == "none":
            return handler(llama=llama, messages=messages, stream=False, **kwargs)
        reply = handler(llama=llama, messages=messages, tools=tools, stream=False, **kwargs)
        choice = reply["choices"][0]
        names = {tool.get("function", {}).get("name") for tool in tools}
        calls, text = parse_tool_calls(choice["message"].get("content") or "", names)
        if calls:
            choice["message"]["content"] = text or None
            choice["message"]["tool_calls"] = [
                {"id": f"call_{index}_{reply['id']}", "type": "function", "function": call}
                for index, call in enumerate(calls)
            ]
            choice["finish_reason"] = "tool_calls"
        return reply

    return handle


def template_tool_calls() -> None:
    """Chat templates that ask for ``<tool_call>`` blocks get handlers that return them as tool calls."""
    from llama_cpp import llama_chat_format

    plain = llama_chat_format.Jinja2ChatFormatter.to_chat_handler

    def to_chat_handler(self: Any) -> Any:
        handler = plain(self)
        return with_tool_calls(handler) if "<tool_call>" in str(getattr(self, "template", "")) else handler

    llama_chat_format.Jinja2ChatFormatter.to_chat_handler = to_chat_handler


def mean_pooled_embeddings() -> None:
    """An embedding model with no pooling set pools by the mean of its token vectors."""
    import llama_cpp

    plain = llama_cpp.Llama.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("embedding") and kwargs.get("pooling_type", -1) == llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED:
            kwargs["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        plain(self, *args, **kwargs)

    llama_cpp.Llama.__init__ = init


def main() -> None:
    import llama_cpp
    import llama_cpp.llama
    from llama_cpp.server.__main__ import main as serve

    if not extra_buffers_wanted():
        default_params = llama_cpp.llama_model_default_params

        def without_extra_buffers() -> object:
            params = default_params()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_model_default_params = without_extra_buffers
        llama_cpp.llama.llama_cpp.llama_model_default_params = without_extra_buffers
    template_tool_calls()
    mean_pooled_embeddings()
    serve()


if __name__ == "__main__":
    main()
