"""Tool loops through real litellm over HTTP: the exact messages of every step, the step and call limits,
what the model gets back for its mistakes, and what the trace, the usage and the events say."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import loopback_recipe

import moa
from moa.recipe import tools as tool_registry
from moa.testing import LoopbackServer

QUESTION = "What is 2 + 3, times 10?"


@pytest.fixture(autouse=True)
def functions(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`add` (sync), `times` (async) and `explode` (raises, quoting a secret), registered for these tests only."""
    monkeypatch.setattr(tool_registry, "_registered", dict(tool_registry._registered))
    monkeypatch.setenv("TOOL_TEST_API_KEY", "sk-tooltest-0123456789abcdef")

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    async def times(x: float, by: float = 10.0) -> dict[str, float]:
        """Multiply x by a factor."""
        return {"product": x * by}

    def explode(reason: str) -> str:
        """Always fails."""
        raise RuntimeError(f"{reason} with key sk-tooltest-0123456789abcdef")

    moa.register_tool("add", add)
    moa.register_tool("times", times)
    moa.register_tool("explode", explode)
    yield


def request_of(server: LoopbackServer, number: int) -> dict[str, Any]:
    body = server.completions()[number].body
    assert body is not None
    return body


def call(name: str, arguments: Any, ident: str) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": ident, "type": "function", "function": {"name": name, "arguments": text}}


def steps(*replies: Any) -> Any:
    """A responder that answers the n-th request with the n-th reply (the last one repeats)."""

    def respond(body: dict[str, Any], index: int) -> Any:
        reply = replies[min(index, len(replies) - 1)]
        return reply(body) if callable(reply) else reply

    return respond


def one_agent(server: LoopbackServer, **agent: Any) -> dict[str, Any]:
    return loopback_recipe(
        server, [{"kind": "propose", "agents": [{"model": "openai/gpt-4o-mini", "max_tokens": 50, **agent}]}]
    )


async def test_each_step_receives_the_conversation_with_every_call_and_result_in_order() -> None:
    first = {
        "content": "Let me compute.",
        "tool_calls": [
            {"id": "c1", "name": "add", "arguments": {"a": 2, "b": 3}},
            {"id": "c2", "name": "times", "arguments": {"x": 5}},
        ],
    }
    with LoopbackServer(responder=steps(first, "It is 50.")) as server:
        events: list[moa.Event] = []
        recipe = one_agent(server, tools=["add", "times"], system="Use tools.")
        result = await moa.run(QUESTION, recipe, api_key="k", on_event=events.append)
    assert result.output == "It is 50."
    one, two = request_of(server, 0), request_of(server, 1)
    opening = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": QUESTION}]
    assert one["messages"] == opening
    assert two["messages"] == [
        *opening,
        {
            "role": "assistant",
            "content": "Let me compute.",
            "tool_calls": [call("add", {"a": 2, "b": 3}, "c1"), call("times", {"x": 5}, "c2")],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
        {"role": "tool", "tool_call_id": "c2", "content": '{"product": 50.0}'},
    ]
    assert [b["tool_choice"] for b in (one, two)] == ["auto", "auto"]
    offered = one["tools"]
    assert offered == two["tools"]
    assert [t["function"]["name"] for t in offered] == ["add", "times"]
    assert offered[0] == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    }
    (output,) = result.layers[0].outputs
    assert output.tool_steps == 2 and output.attempts == 2
    assert output.messages == two["messages"]  # the trace keeps the last call's conversation
    assert [(t.name, t.arguments, t.result, t.error, t.step, t.id) for t in output.tool_calls] == [
        ("add", {"a": 2, "b": 3}, "5", None, 1, "c1"),
        ("times", {"x": 5}, '{"product": 50.0}', None, 1, "c2"),
    ]
    # Usage and cost cover both model calls (the server counts words: see moa.testing.server).
    words = [sum(len(str(m.get("content") or "").split()) for m in b["messages"]) for b in (one, two)]
    assert output.usage.prompt_tokens == sum(words) == result.usage.prompt_tokens
    # Step 1 wrote "Let me compute." and two calls (their arguments' words, and one for each name); step 2 "It is 50."
    assert output.usage.completion_tokens == (3 + (4 + 1) + (2 + 1)) + 3
    assert output.cost_usd is not None and output.cost_usd > 0 and result.cost_usd == output.cost_usd
    kinds = [(e.kind, e.tool_step, e.tool.name if e.tool else None) for e in events]
    assert kinds == [
        ("layer_started", 0, None),
        ("call_started", 1, None),
        ("tool_finished", 1, "add"),
        ("tool_finished", 1, "times"),
        ("call_started", 2, None),
        ("call_finished", 2, None),
        ("layer_finished", 0, None),
    ]


async def test_the_last_step_offers_the_tools_with_tool_choice_none_and_the_model_answers() -> None:
    def respond(body: dict[str, Any], index: int) -> Any:
        if body["tool_choice"] == "none":
            return f"answer after {index} calls"
        return {"tool_calls": [{"name": "add", "arguments": {"a": index, "b": 1}}]}

    with LoopbackServer(responder=respond) as server:
        result = await moa.run(QUESTION, one_agent(server, tools=["add"], max_steps=3), api_key="k")
    assert [request_of(server, n)["tool_choice"] for n in range(3)] == ["auto", "auto", "none"]
    assert all("tools" in request_of(server, n) for n in range(3))
    assert result.output == "answer after 2 calls"
    (output,) = result.layers[0].outputs
    assert output.tool_steps == 3 and [t.result for t in output.tool_calls] == ["1", "2"]
    last = request_of(server, 2)["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "tool", "assistant", "tool"]
    assert [m["tool_call_id"] for m in last if m["role"] == "tool"] == ["call_0_0", "call_1_0"]


async def test_a_model_that_still_calls_tools_at_the_last_step_answers_with_its_text_or_fails() -> None:
    first = {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 1}}]}
    with_text = {"content": "My best guess: 50.", "tool_calls": [{"id": "late", "name": "add", "arguments": {}}]}
    with LoopbackServer(responder=steps(first, with_text)) as server:
        result = await moa.run(QUESTION, one_agent(server, tools=["add"], max_steps=2), api_key="k")
    (output,) = result.layers[0].outputs
    assert result.output == "My best guess: 50."
    assert [(t.name, t.step, t.error) for t in output.tool_calls] == [
        ("add", 1, None),
        ("add", 2, "not run: the last step (max_steps 2) must answer"),
    ]
    silent = {"content": None, "tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 1}}]}
    with LoopbackServer(responder=steps(silent)) as server, pytest.raises(moa.QuorumError) as info:
        await moa.run(QUESTION, one_agent(server, tools=["add"], max_steps=2), api_key="k")
    (failed,) = info.value.partial.layers[0].outputs
    assert failed.error is not None and failed.error.type == "BadResponseError"
    assert "asked for tools again at its last step (max_steps 2, 8 tool calls) and wrote no answer" in (
        failed.error.message
    )
    assert [t.step for t in failed.tool_calls] == [1, 2] and len(server.completions()) == 2
    assert failed.usage.completion_tokens > 0 and failed.tool_steps == 2


async def test_calls_beyond_max_tool_calls_are_not_run_and_the_next_step_must_answer() -> None:
    many = {"tool_calls": [{"id": f"c{n}", "name": "add", "arguments": {"a": n, "b": 0}} for n in range(3)]}
    with LoopbackServer(responder=steps(many, "done")) as server:
        result = await moa.run(QUESTION, one_agent(server, tools=["add"], max_tool_calls=2), api_key="k")
    assert result.output == "done" and len(server.completions()) == 2
    second = request_of(server, 1)
    assert second["tool_choice"] == "none"
    assert [c["id"] for c in second["messages"][1]["tool_calls"]] == ["c0", "c1"]  # the third is not echoed
    assert second["messages"][2:] == [
        {"role": "tool", "tool_call_id": "c0", "content": "0"},
        {
            "role": "tool",
            "tool_call_id": "c1",
            "content": "1\n[1 more tool call(s) of this step were not run: this agent may make 2 tool calls in "
            "all; answer now]",
        },
    ]
    (output,) = result.layers[0].outputs
    assert [(t.id, t.error) for t in output.tool_calls] == [
        ("c0", None),
        ("c1", None),
        ("c2", "not run: this agent may make 2 tool calls in all"),
    ]


async def test_mistakes_come_back_to_the_model_as_results_never_as_a_crash() -> None:
    mistakes = {
        "tool_calls": [
            {"id": "u", "name": "search", "arguments": {"q": "x"}},
            {"id": "m", "name": "add", "arguments": '{"a": 1, "b": '},
            {"id": "s", "name": "add", "arguments": {"a": "one", "b": 2}},
            {"id": "x", "name": "add", "arguments": {"a": 1, "b": 2, "c": 3}},
            {"id": "e", "name": "explode", "arguments": {"reason": "no luck"}},
            {"id": "l", "name": "add", "arguments": "[1, 2]"},
        ]
    }
    with LoopbackServer(responder=steps(mistakes, "sorry")) as server:
        result = await moa.run(QUESTION, one_agent(server, tools=["add", "explode"]), api_key="k")
    results = {m["tool_call_id"]: m["content"] for m in request_of(server, 1)["messages"] if m["role"] == "tool"}
    assert results == {
        "u": "error: unknown tool 'search'; tools: add, explode",
        "m": "error: the arguments are not JSON (Expecting value: line 1 column 15 (char 14)); send a JSON object",
        "s": "error: the arguments do not match the tool's schema: 'one' is not of type 'integer' (at ['a'])",
        "x": "error: the arguments do not match the tool's schema: Additional properties are not allowed ('c' was "
        "unexpected)",
        "e": "error: RuntimeError: no luck with key ***",
        "l": "error: the arguments must be a JSON object, got list",
    }
    (output,) = result.layers[0].outputs
    assert output.ok and result.output == "sorry"
    recorded = {t.id: (t.arguments, t.error) for t in output.tool_calls}
    assert recorded["m"] == ('{"a": 1, "b": ', results["m"].removeprefix("error: "))
    assert recorded["e"] == ({"reason": "no luck"}, "RuntimeError: no luck with key ***")
    assert "sk-tooltest" not in result.model_dump_json()


async def test_a_failed_model_call_inside_the_loop_keeps_the_steps_before_it() -> None:
    with LoopbackServer(responder=steps({"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]})) as server:

        def arm(event: moa.Event) -> None:  # the second model call is refused (400: never retried)
            if event.kind == "tool_finished":
                server.add_fault("400", times=1)

        with pytest.raises(moa.QuorumError) as info:
            await moa.run(QUESTION, one_agent(server, tools=["add"]), api_key="k", on_event=arm)
    (failed,) = info.value.partial.layers[0].outputs
    assert failed.error is not None and failed.error.type == "RequestRejectedError"
    assert [(t.name, t.result) for t in failed.tool_calls] == [("add", "3")]
    assert failed.tool_steps == 2 and failed.usage.completion_tokens > 0 and failed.text is None
    assert [m["role"] for m in failed.messages] == ["user", "assistant", "tool"]


async def test_an_ask_tool_asks_another_agent_whose_call_is_traced_and_counted() -> None:
    def respond(body: dict[str, Any], index: int) -> Any:
        if body["model"] == "expert":
            return "The expert says 50."
        if body["messages"][-1]["role"] == "tool":
            return "Confirmed: 50."
        return {"tool_calls": [{"id": "q", "name": "consult", "arguments": {"question": "What is (2+3)*10?"}}]}

    with LoopbackServer(responder=respond) as server:
        asked = {"model": "openai/expert", "system": "You are an expert.", "max_tokens": 20}
        recipe = one_agent(server, tools=[{"name": "ask", "function": "consult", "agent": asked}])
        events: list[moa.Event] = []
        result = await moa.run(QUESTION, recipe, api_key="k", on_event=events.append)
    assert result.output == "Confirmed: 50."
    (to_expert,) = server.completions("expert")
    assert to_expert.messages == [
        {"role": "system", "content": "You are an expert."},
        {"role": "user", "content": "What is (2+3)*10?"},
    ]
    assert to_expert.body is not None and to_expert.body["max_tokens"] == 20 and "tools" not in to_expert.body
    consult = request_of(server, 0)["tools"][0]["function"]
    assert consult["name"] == "consult" and consult["parameters"]["properties"]["question"]["maxLength"] == 4000
    (output,) = result.layers[0].outputs
    (tool,) = output.tool_calls
    assert tool.result == "The expert says 50." and [c.model for c in tool.calls] == ["openai/expert"]
    (expert,) = tool.calls
    assert expert.text == "The expert says 50." and expert.usage.total_tokens > 0
    assert tool.usage == expert.usage and tool.cost_usd is None  # `expert` has no known price
    own = sum(len(str(m.get("content") or "").split()) for r in server.completions("gpt-4o-mini") for m in r.messages)
    assert output.usage.prompt_tokens == own + expert.usage.prompt_tokens == result.usage.prompt_tokens
    assert output.cost_usd is None and result.unpriced_models == ["openai/expert"]
    # Two steps of its own and the expert's call: three model calls, as an eval counts them.
    assert output.tool_steps == 2 and output.model_calls == result.model_calls == 3 == len(server.completions())
    # The asked agent's call sends no events of its own: it is in the tool call's event.
    assert [e.kind for e in events if e.kind.startswith("call")] == ["call_started", "call_started", "call_finished"]


async def test_the_answer_of_a_tool_loop_reaches_on_token_whole() -> None:
    first = {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}
    with LoopbackServer(responder=steps(first, "It is 3.")) as server:
        pieces: list[str] = []
        result = await moa.run(QUESTION, one_agent(server, tools=["add"]), api_key="k", on_token=pieces.append)
    assert pieces == ["It is 3."] == [result.output]
    assert not any((r.body or {}).get("stream") for r in server.completions())


async def test_a_cancelled_run_cancels_the_tool_in_flight() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def wait_forever() -> str:
        """Never returns."""
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    moa.register_tool("wait_forever", wait_forever)
    with LoopbackServer(responder=steps({"tool_calls": [{"name": "wait_forever", "arguments": {}}]})) as server:
        run = asyncio.create_task(moa.run(QUESTION, one_agent(server, tools=["wait_forever"]), api_key="k"))
        await started.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert cancelled.is_set() and len(server.completions()) == 1


async def test_aggregators_and_repairs_use_their_tools_too() -> None:
    from moa import Completion
    from moa._provider import ToolRequest
    from moa.testing import FakeProvider

    def asks(n: int) -> Completion:
        return Completion("", 4, 2, tool_calls=(ToolRequest(f"t{n}", "add", f'{{"a": {n}, "b": 1}}'),))

    fake = FakeProvider(
        replies={
            "openai/p": ["p says 5"],
            "openai/agg": [asks(1), "fused: no answer line"],
            "openai/fix": [asks(2), "Answer: 5"],
        }
    )
    recipe = {
        "name": "everywhere",
        "layers": [
            {"kind": "propose", "agents": [{"model": "openai/p"}]},
            {"kind": "aggregate", "agents": [{"model": "openai/agg", "tools": ["add"]}]},
            {
                "kind": "verify",
                "checks": [{"type": "regex", "pattern": "^Answer:"}],
                "repairs": 1,
                "repair_with": {"model": "openai/fix", "tools": ["add"]},
            },
        ],
    }
    result = await moa.run(QUESTION, recipe, provider=fake)
    assert result.output == "Answer: 5"
    first, second = fake.to_model("openai/agg")
    assert first.messages[0]["role"] == "system" and "1. p says 5" in first.messages[0]["content"]
    assert second.messages[-1] == {"role": "tool", "tool_call_id": "t1", "content": "2"}
    assert [r.params["tool_choice"] for r in fake.to_model("openai/fix")] == ["auto", "auto"]
    fused, repaired = result.layers[1].outputs[0], result.layers[2].outputs[0]
    assert [(t.name, t.result) for t in fused.tool_calls] == [("add", "2")]
    assert [(t.name, t.result) for t in repaired.tool_calls] == [("add", "3")]
    assert fused.tool_steps == repaired.tool_steps == 2 and result.layers[0].outputs[0].tool_steps == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_the_loopback_server_answers_with_function_calls_plain_or_streamed(stream: bool) -> None:
    from moa._litellm import LiteLLMProvider
    from moa._provider import Request, ToolRequest

    reply = {"content": None, "tool_calls": [{"id": "k", "name": "add", "arguments": '{"a": 1, "b"'}]}
    with LoopbackServer(responder=steps(reply)) as server:
        tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
        request = Request("openai/gpt-4o-mini", [{"role": "user", "content": "Q"}], {"api_base": server.base_url,
                          "tools": tools, "tool_choice": "auto"}, api_key="k")  # fmt: skip
        pieces: list[str] = []
        completion = await LiteLLMProvider().complete(request, pieces.append if stream else None)
    assert completion.tool_calls == (ToolRequest("k", "add", '{"a": 1, "b"'),)  # malformed JSON, as written
    assert completion.text == "" and pieces == []
    assert completion.finish_reason == "tool_calls" and completion.completion_tokens == 3 + 1  # words, one a call


async def test_calls_asked_for_once_the_tool_calls_are_spent_are_recorded_as_not_run() -> None:
    one = {"tool_calls": [{"id": "a", "name": "add", "arguments": {"a": 1, "b": 1}}]}
    late = {"content": "Two.", "tool_calls": [{"id": "b", "name": "add", "arguments": {"a": 2, "b": 2}}]}
    with LoopbackServer(responder=steps(one, late)) as server:
        result = await moa.run(QUESTION, one_agent(server, tools=["add"], max_tool_calls=1), api_key="k")
    assert result.output == "Two." and request_of(server, 1)["tool_choice"] == "none"
    (output,) = result.layers[0].outputs
    assert [(t.id, t.error) for t in output.tool_calls] == [
        ("a", None),
        ("b", "not run: the agent's 1 tool calls are spent: this step must answer"),
    ]
