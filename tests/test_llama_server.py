"""The local server's reading of function calls written as text (``moa._llama_server``), a chat template's way."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moa._llama_server import parse_tool_calls, template_tool_calls, with_tool_calls

OFFERED = {"python", "ask"}
TOOLS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}} for name in sorted(OFFERED)]


@pytest.mark.parametrize(
    ("text", "calls", "rest"),
    [
        # Qwen2.5's tags are special tokens: llama.cpp's text has the JSON alone, or the tags when a model spells them.
        ('{"name": "python", "arguments": {"code": "print(2)"}}', [("python", {"code": "print(2)"})], ""),
        ('<tool_call>\n{"name": "ask", "arguments": {"q": "x"}}\n</tool_call>', [("ask", {"q": "x"})], ""),
        (
            'Let me check.\n{"name": "python", "arguments": {"code": "1"}}\n{"name": "ask", "arguments": {}}\nDone.',
            [("python", {"code": "1"}), ("ask", {})],
            "Let me check.\n\n\nDone.",
        ),
        # A program quoted the Python way, and a last call short of its closing brace, are read as meant.
        (
            '{"name": "python", "arguments": {"code": """\nx = 2\nprint("x", x)\n"""}}',
            [("python", {"code": '\nx = 2\nprint("x", x)\n'})],
            "",
        ),
        ('{"name": "python", "arguments": {"code": "print(3)"}', [("python", {"code": "print(3)"})], ""),
        # Only offered functions count: an answer that is JSON stays an answer.
        ('{"name": "search", "arguments": {}}', [], '{"name": "search", "arguments": {}}'),
        ('{"answer": 42}', [], '{"answer": 42}'),
        ("The answer is 42.", [], "The answer is 42."),
        # Mid-line braces are prose, not calls.
        (
            'I would call {"name": "python", "arguments": {}} here.',
            [],
            'I would call {"name": "python", "arguments": {}} here.',
        ),
    ],
)
def test_calls_are_read_from_text_and_the_rest_is_kept(text: str, calls: list[tuple[str, Any]], rest: str) -> None:
    found, kept = parse_tool_calls(text, OFFERED)
    assert [(call["name"], json.loads(call["arguments"])) for call in found] == calls
    assert kept == rest


def test_arguments_that_are_not_an_object_pass_on_as_written_for_the_caller_to_refuse() -> None:
    (call,), _ = parse_tool_calls('{"name": "python", "arguments": "print(1"}', OFFERED)
    assert call == {"name": "python", "arguments": "print(1"}


class Template:
    """A chat template's handler: records what it was given, answers ``reply``."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.given: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> dict[str, Any]:
        self.given.append(kwargs)
        message = {"role": "assistant", "content": self.reply}
        return {"id": "cmpl-1", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


def test_a_call_in_the_reply_comes_back_as_tool_calls() -> None:
    template = Template('{"name": "python", "arguments": {"code": "print(6 * 7)"}}')
    reply = with_tool_calls(template)(llama=None, messages=[{"role": "user", "content": "6*7?"}], tools=TOOLS,
                                      tool_choice="auto", temperature=0)  # fmt: skip
    (choice,) = reply["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_0_cmpl-1",
            "type": "function",
            "function": {"name": "python", "arguments": '{"code": "print(6 * 7)"}'},
        }
    ]
    (given,) = template.given
    assert given["tools"] == TOOLS and given["temperature"] == 0 and given["stream"] is False


def test_a_plain_answer_is_left_as_it_is() -> None:
    reply = with_tool_calls(Template("It is 42."))(llama=None, messages=[], tools=TOOLS)
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": "It is 42."}
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_tool_choice_none_leaves_the_tools_out_and_earlier_calls_are_rendered_as_objects() -> None:
    template = Template('{"name": "python", "arguments": {}}')  # written anyway: with "none", it is the answer
    earlier = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "python", "arguments": '{"code": "print(1)"}'}},
        {"id": "b", "type": "function", "function": {"name": "python", "arguments": "not json"}},
    ]}  # fmt: skip
    messages = [{"role": "user", "content": "q"}, earlier, {"role": "tool", "tool_call_id": "a", "content": "1"}]
    reply = with_tool_calls(template)(llama=None, messages=messages, tools=TOOLS, tool_choice="none")
    assert reply["choices"][0]["message"]["content"] == '{"name": "python", "arguments": {}}'
    (given,) = template.given
    assert "tools" not in given and "tool_choice" not in given
    sent = given["messages"][1]["tool_calls"]
    assert [call["function"]["arguments"] for call in sent] == [{"code": "print(1)"}, "not json"]
    assert messages[1] is earlier and earlier["tool_calls"][0]["function"]["arguments"] == '{"code": "print(1)"}'


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"tools": TOOLS, "stream": True},
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "python"}}},
    ],
)
def test_no_tools_a_stream_or_a_forced_call_are_served_as_before(settings: dict[str, Any]) -> None:
    template = Template('{"name": "python", "arguments": {}}')
    reply = with_tool_calls(template)(llama=None, messages=[], **settings)
    assert reply["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in reply["choices"][0]["message"]
    assert {key: template.given[0].get(key) for key in settings} == settings


def test_only_templates_that_ask_for_tool_call_blocks_get_the_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    chat_format = pytest.importorskip("llama_cpp.llama_chat_format")
    monkeypatch.setattr(
        chat_format.Jinja2ChatFormatter, "to_chat_handler", chat_format.Jinja2ChatFormatter.to_chat_handler
    )
    template_tool_calls()
    qwen = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}<tool_call>{% endif %}"
    plain = "{% for m in messages %}{{ m.content }}{% endfor %}"
    wrapped = chat_format.Jinja2ChatFormatter(template=qwen, eos_token="</s>", bos_token="<s>").to_chat_handler()
    unwrapped = chat_format.Jinja2ChatFormatter(template=plain, eos_token="</s>", bos_token="<s>").to_chat_handler()
    assert wrapped.__qualname__ == with_tool_calls(Template("")).__qualname__
    assert unwrapped.__qualname__ != wrapped.__qualname__
