"""The tool loop, exactly: the ids its calls get, what a failed loop reports, what its answer carries, and what
each step reserves and records.

Written against the mutants of ``moa/_tools`` that survived the rest of the suite
(``benchmarks/mutation_score.py``).  The provider is ``moa.testing.FakeProvider``: a reply with
``tool_calls`` asks for functions.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import moa
import moa._call.trace
import moa._tools.calls
import moa._tools.loop
from moa import Completion, QuorumError, RequestRejectedError
from moa._call.cost import prompt_tokens
from moa._provider import ToolRequest
from moa.recipe import tools as tool_registry
from moa.testing import FakeProvider

USER = {"role": "user", "content": "Q"}


class Clock:
    """``time.perf_counter`` of the trace, moved only by ``advance`` (a call's latency, exactly)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(moa._call.trace, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    monkeypatch.setattr(moa._tools.calls, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


@pytest.fixture(autouse=True)
def functions(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> Iterator[None]:
    """`add`, and `wait` (100 s pass on the trace's clock while it runs), registered for these tests only."""
    monkeypatch.setattr(tool_registry, "_registered", dict(tool_registry._registered))

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    def wait() -> str:
        """Take a while."""
        clock.now += 100.0
        return "waited"

    def items(values: list[int]) -> int:
        """Sum a list."""
        return sum(values)

    def later() -> Any:
        """An awaitable, from a plain function."""
        return asyncio.sleep(0, result="done later")

    def odd() -> dict[str, Any]:
        """Values JSON has no form for, and letters beyond ASCII."""
        return {"when": datetime.date(2024, 1, 2), "city": "Zürich"}

    def shout(length: int) -> str:
        """Fail at length."""
        raise ValueError("x" * length)

    for function in (add, wait, items, later, odd, shout):
        moa.register_tool(function.__name__, function)
    yield


def asks(*calls: tuple[str, str, dict[str, Any]], text: str = "", **fields: Any) -> Completion:
    """A reply that asks for function calls: (id, name, arguments) each."""
    requests = tuple(ToolRequest(ident, name, json.dumps(arguments)) for ident, name, arguments in calls)
    return Completion(text, completion_tokens=fields.pop("completion_tokens", 3), tool_calls=requests, **fields)


def one_agent(**agent: Any) -> dict[str, Any]:
    layer = {"kind": "propose", "agents": [{"model": "openai/a", "tools": ["add"], **agent}]}
    return {"name": "t", "retry": {"max_attempts": 1}, "layers": [layer]}


ADD = {"a": 1, "b": 2}


async def test_a_call_gets_an_id_of_ours_when_its_own_is_missing_malformed_or_already_used() -> None:
    first = asks(("c1", "add", ADD), ("c1", "add", ADD), ("no spaces allowed", "add", ADD), ("", "add", ADD))
    second = asks(("c1", "add", ADD), ("c9", "add", ADD))
    fake = FakeProvider(replies={"openai/a": [first, second, "It is 3."]})
    result = await moa.run("Q", one_agent(max_steps=3), provider=fake)
    assert result.output == "It is 3."
    (output,) = result.layers[0].outputs
    assert [(tool.step, tool.id) for tool in output.tool_calls] == [
        (1, "c1"),
        (1, "call_1_1"),
        (1, "call_1_2"),
        (1, "call_1_3"),
        (2, "call_2_0"),  # c1 answered a call of step 1
        (2, "c9"),
    ]
    last = fake.requests[-1].messages
    assert [m["tool_call_id"] for m in last if m["role"] == "tool"] == [t.id for t in output.tool_calls]
    calls = [[c["id"] for c in m["tool_calls"]] for m in last if m["role"] == "assistant"]
    assert calls == [["c1", "call_1_1", "call_1_2", "call_1_3"], ["call_2_0", "c9"]]


async def test_a_function_call_that_crashes_the_loops_runner_is_recorded_as_not_run_with_the_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = moa._tools.loop.run_tool

    async def broken(runtime: Any, spec: Any, number: int, ident: str, name: str, arguments: str) -> Any:
        if json.loads(arguments)["a"] == 0:
            raise RuntimeError("a bug in run_tool")
        return await real(runtime, spec, number, ident, name, arguments)

    monkeypatch.setattr(moa._tools.loop, "run_tool", broken)
    fake = FakeProvider(replies={"openai/a": [asks(("c1", "add", {"a": 0, "b": 1}), ("c2", "add", ADD)), "done"]})
    result = await moa.run("Q", one_agent(), provider=fake)
    (output,) = result.layers[0].outputs
    crashed, ran = output.tool_calls
    assert (crashed.id, crashed.name, crashed.arguments, crashed.step) == ("c1", "add", {"a": 0, "b": 1}, 1)
    assert (crashed.result, crashed.error) == ("", "RuntimeError: a bug in run_tool")
    assert (ran.id, ran.result, ran.error) == ("c2", "3", None)  # the other call of the step still ran


async def test_a_callback_that_fails_on_the_loops_answer_stops_the_run_naming_on_token() -> None:
    def broken(text: str) -> None:
        raise ValueError("no thanks")

    fake = FakeProvider(replies={"openai/a": [asks(("c1", "add", ADD)), "It is 3."]})
    with pytest.raises(moa.CallbackError) as info:
        await moa.run("Q", one_agent(), provider=fake, on_token=broken)
    assert info.value.callback == "on_token" and isinstance(info.value.error, ValueError)
    assert str(info.value) == "the on_token callback raised ValueError: no thanks; the run was stopped"


async def test_the_loops_answer_keeps_its_last_calls_logprobs_and_finish_reason() -> None:
    last = Completion("yes", completion_tokens=1, top_logprobs={"yes": -0.1}, finish_reason="length")
    fake = FakeProvider(replies={"openai/a": [asks(("c1", "add", ADD)), last]})
    result = await moa.run("Q", one_agent(), provider=fake)
    (output,) = result.layers[0].outputs
    assert (output.text, output.top_logprobs, output.finish_reason) == ("yes", {"yes": -0.1}, "length")


async def test_a_loop_that_ends_without_an_answer_fails_with_the_models_error() -> None:
    fake = FakeProvider(replies={"openai/a": [asks(("c1", "add", ADD)), asks(("c2", "add", ADD))]})
    with pytest.raises(QuorumError) as info:
        await moa.run("Q", one_agent(max_steps=2), provider=fake)
    (failure,) = info.value.failures
    assert type(failure).__name__ == "BadResponseError" and failure.model == "openai/a"
    assert "it asked for tools again at its last step (max_steps 2, 8 tool calls) and wrote no answer" in str(failure)
    rejected = RequestRejectedError("bad request", status_code=400)
    fake = FakeProvider(replies={"openai/a": [asks(("c1", "add", ADD)), rejected]})
    with pytest.raises(QuorumError) as info:
        await moa.run("Q", one_agent(), provider=fake)
    assert info.value.failures == [rejected]


async def test_calls_not_run_send_their_events_too() -> None:
    events: list[moa.Event] = []
    # One call allowed: c2 is skipped at step 1, c3 asked for at the step that must answer: its text is the answer.
    replies = [asks(("c1", "add", ADD), ("c2", "add", ADD)), asks(("c3", "add", ADD), text="It is 3.")]
    fake = FakeProvider(replies={"openai/a": replies})
    await moa.run("Q", one_agent(max_tool_calls=1), provider=fake, on_event=events.append)
    finished = [e for e in events if e.kind == "tool_finished"]
    assert [(e.tool.id, e.tool.error) for e in finished] == [
        ("c1", None),
        ("c2", "not run: this agent may make 1 tool calls in all"),
        ("c3", "not run: the agent's 1 tool calls are spent: this step must answer"),
    ]


async def test_a_loops_steps_are_recorded_at_the_stages_step_and_its_latency_is_the_whole_loops(clock: Clock) -> None:
    fake = FakeProvider(replies={"openai/s": [asks(("c1", "wait", {})), "s1", asks(("c2", "wait", {})), "s2"]})
    layers = [
        {"kind": "propose", "agents": [{"model": "openai/a"}, {"model": "openai/b"}, {"model": "openai/f"}]},
        {"kind": "aggregate_seq", "agents": [{"model": "openai/s", "tools": ["wait"]}], "window": 2},
    ]
    events: list[moa.Event] = []
    result = await moa.run("Q", {"name": "seq", "layers": layers}, provider=fake, on_event=events.append)
    outputs = result.layers[1].outputs
    assert [(o.step, o.tool_steps, o.latency_s) for o in outputs] == [(1, 2, 100.0), (2, 2, 100.0)]
    assert [t.wall_s for o in outputs for t in o.tool_calls] == [100.0, 100.0]
    started = [(e.step, e.tool_step) for e in events if e.kind == "call_started" and e.layer == 2]
    assert started == [(1, 1), (1, 2), (2, 1), (2, 2)]


async def test_an_asked_agent_with_tools_answers_through_its_own_loop() -> None:
    # The expert has a tool of its own that needs the run's tools runtime: asking a third agent.
    expert = {"model": "openai/e", "tools": [{"name": "ask", "function": "check", "agent": {"model": "openai/g"}}]}
    tool = {"name": "ask", "function": "consult", "agent": expert}
    fake = FakeProvider(
        replies={
            "openai/a": [asks(("q", "consult", {"question": "1 + 2?"})), "It is 3."],
            "openai/e": [asks(("e1", "check", {"question": "Is it 3?"})), "3, checked"],
            "openai/g": ["yes, 3"],
        }
    )
    result = await moa.run("Q", one_agent(tools=[tool]), provider=fake)
    (output,) = result.layers[0].outputs
    (consult,) = output.tool_calls
    (answer,) = consult.calls
    assert (consult.result, answer.step, answer.tool_steps) == ("3, checked", 0, 2)
    assert [(t.result, t.error) for t in answer.tool_calls] == [("yes, 3", None)]
    assert fake.to_model("openai/e")[0].messages == [{"role": "user", "content": "1 + 2?"}]
    assert fake.to_model("openai/g")[0].messages == [{"role": "user", "content": "Is it 3?"}]


class Priced(FakeProvider):
    """Every call costs $1 a prompt token; notes the prompt tokens of each."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.priced: list[int] = []

    def worst_case_cost(self, model: str, params: Any, prompt_tokens: int) -> float | None:
        self.priced.append(prompt_tokens)
        return float(prompt_tokens)

    def max_output_tokens(self, model: str) -> int:
        return 5


@pytest.mark.parametrize("completion_tokens", [40, 0])
async def test_a_later_step_reserves_what_the_model_wrote_at_its_token_count(completion_tokens: int) -> None:
    # The model's text and its calls (name and arguments: 2 calls here) count as its completion tokens, or as
    # their text's tokens when the provider gave none.
    first = asks(("c1", "add", ADD), ("c2", "add", ADD), text="Let me add.", completion_tokens=completion_tokens)
    fake = Priced(replies={"openai/a": [first, "It is 3."]})
    result = await moa.run("Q", one_agent(), provider=fake, max_cost_usd=1_000_000)
    (output,) = result.layers[0].outputs
    arguments = json.dumps(ADD)
    written = "Let me add." + ("add" + arguments) * 2
    quoted = completion_tokens or max(-(-len(written) // 3), 24)  # 24 pieces: words, numbers, punctuation
    # Both steps offer the same tools (their definitions' tokens): the difference is the conversation's.
    step_1, step_2 = fake.priced[-2:]
    assert step_2 - step_1 == prompt_tokens(output.messages, [(len(written), quoted)]) - prompt_tokens([USER])
    if completion_tokens:  # the 40 tokens, not the text's characters; nor 4 characters more of them
        counted = prompt_tokens(output.messages, [(len(written), quoted)])
        assert prompt_tokens(output.messages) < counted
        assert prompt_tokens(output.messages, [(len(written) + 4, quoted)]) < counted


# --- one function call: what the model gets back ---------------------------------------------------------------


async def results_of(*calls: tuple[str, Any], tools: list[Any] | None = None) -> list[Any]:
    """The function calls of a one-step loop that asks for ``calls`` ((name, arguments: JSON text or a value))."""
    requests = tuple(
        ToolRequest(f"c{n}", name, arguments if isinstance(arguments, str) else json.dumps(arguments))
        for n, (name, arguments) in enumerate(calls)
    )
    fake = FakeProvider(replies={"openai/a": [Completion("", completion_tokens=1, tool_calls=requests), "done"]})
    agent_tools = tools or sorted({name for name, _ in calls})
    result = await moa.run("Q", one_agent(tools=agent_tools), provider=fake)
    return list(result.layers[0].outputs[0].tool_calls)


async def test_a_schema_mismatch_names_the_first_problem_by_its_place_and_cuts_a_long_one() -> None:
    missing, nested = await results_of(("add", {"b": "x"}), ("items", {"values": [1, "two"]}))
    schema = "error: the arguments do not match the tool's schema: "
    assert missing.result == schema + "'a' is a required property"  # the whole object's problem comes first
    assert nested.result == schema + "'two' is not of type 'integer' (at ['values'][1])"
    # A message of up to 300 characters is given whole, a longer one as its first 200 and last 60.
    whole, cut_short = await results_of(("add", {"a": "y" * 273, "b": 1}), ("add", {"a": "y" * 274, "b": 1}))
    message = repr("y" * 273) + " is not of type 'integer'"
    assert len(message) == 300 and whole.result == schema + message + " (at ['a'])"
    longer = repr("y" * 274) + " is not of type 'integer'"
    assert cut_short.result == schema + longer[:200] + " ... " + longer[-60:] + " (at ['a'])"


async def test_a_functions_error_is_cut_to_500_characters_and_its_result_to_4000() -> None:
    (failed,) = await results_of(("shout", {"length": 600}))
    assert failed.error is not None and len(failed.error) == 500
    assert failed.error.startswith("ValueError: xxx") and failed.error.endswith("[cut: 612 characters in all]")
    assert failed.result == "error: ValueError: " + "x" * 600  # the result's own limit is 4000


async def test_a_functions_value_is_given_back_as_json_or_as_it_is_and_an_awaitable_is_awaited() -> None:
    later, odd, nothing = await results_of(("later", {}), ("odd", {}), ("wait", ""))
    assert later.result == "done later"
    assert odd.result == '{"when": "2024-01-02", "city": "Zürich"}'
    assert (nothing.arguments, nothing.result) == ({}, "waited")  # no arguments at all: an empty object


def test_cut_keeps_a_text_of_exactly_the_limit() -> None:
    assert moa._tools.cut("x" * 10, 10) == "x" * 10
    marker = "\n[cut: 100 characters in all]"
    assert moa._tools.cut("x" * 100, 60) == "x" * (60 - len(marker)) + marker


async def test_a_skipped_call_with_arguments_that_are_not_json_keeps_them_as_text() -> None:
    first = asks(("c1", "add", ADD))
    first = Completion("", completion_tokens=1, tool_calls=(*first.tool_calls, ToolRequest("c2", "add", "{oops")))
    fake = FakeProvider(replies={"openai/a": [first, "It is 3."]})
    result = await moa.run("Q", one_agent(max_tool_calls=1), provider=fake)
    skipped = result.layers[0].outputs[0].tool_calls[1]
    assert (skipped.id, skipped.arguments, skipped.result) == ("c2", "{oops", "")


async def test_an_asked_agent_that_fails_is_named_with_its_error_and_its_call_kept() -> None:
    rejected = RequestRejectedError("bad request", status_code=400)
    tool = {"name": "ask", "function": "consult", "agent": {"model": "openai/e"}}
    fake = FakeProvider(
        replies={"openai/a": [asks(("q", "consult", {"question": "Why?"})), "Unsure."], "openai/e": [rejected]}
    )
    result = await moa.run("Q", one_agent(tools=[tool]), provider=fake)
    (consult,) = result.layers[0].outputs[0].tool_calls
    assert consult.error == f"openai/e did not answer: RequestRejectedError: {rejected}"
    assert consult.result == f"error: {consult.error}"
    assert [(c.model, c.ok) for c in consult.calls] == [("openai/e", False)]


def panel(tmp_path: Path, description: str | None) -> str:
    path = tmp_path / "panel.yaml"
    about = f"description: {description}\n" if description else ""
    path.write_text(
        f"name: panel\n{about}retry: {{max_attempts: 1}}\nlayers:\n"
        "  - {kind: propose, agents: [{model: openai/p}, {model: openai/q}]}\n"
        + "  - {kind: aggregate, agents: [{model: openai/g}]}\n"
    )
    return str(path)


@pytest.mark.parametrize("description", ["Two views.", None])
async def test_a_recipe_tool_is_described_with_the_recipes_description(tmp_path: Path, description: str | None) -> None:
    tool = {"name": "ask", "function": "panel", "recipe": panel(tmp_path, description)}
    fake = FakeProvider(replies={"openai/a": ["fine"]})
    await moa.run("Q", one_agent(tools=[tool]), provider=fake)
    (offered,) = fake.requests[0].params["tools"]
    about = f": {description}" if description else ""
    expected = f"Ask the `panel` pipeline of assistants a question{about}; its answer comes back."
    assert offered["function"]["description"] == expected


async def test_a_failed_recipe_is_named_with_the_first_line_of_its_error_and_its_calls_kept(tmp_path: Path) -> None:
    rejected = RequestRejectedError("bad request", status_code=400)
    tool = {"name": "ask", "function": "panel", "recipe": panel(tmp_path, None)}
    replies: dict[str, Any] = {
        "openai/a": [asks(("r", "panel", {"question": "Why?"})), "Unsure."],
        "openai/p": ["p says"],
        "openai/q": ["q says"],
        "openai/g": [rejected],
    }
    result = await moa.run("Q", one_agent(tools=[tool]), provider=FakeProvider(replies=replies))
    (asked,) = result.layers[0].outputs[0].tool_calls
    assert asked.error == (
        "the recipe 'panel' failed: QuorumError: layer 2 failed: 0 of 1 calls succeeded, min_success is 1; causes:"
    )
    assert [(c.model, c.ok) for c in asked.calls] == [("openai/p", True), ("openai/q", True), ("openai/g", False)]


async def test_a_recipe_cannot_be_asked_where_no_engine_runs_the_stage(tmp_path: Path) -> None:
    from moa import Limiter
    from moa._call import Caller, Tracer, plan_layer
    from moa._tools import run_tool, tool_runtime

    recipe = one_agent(tools=[{"name": "ask", "function": "panel", "recipe": panel(tmp_path, None)}])
    (spec,) = plan_layer(moa.load_recipe(recipe), 0)
    runtime = tool_runtime(Caller(FakeProvider(), Limiter(), Tracer(None), moa.RetryPolicy(max_attempts=1)))
    done = await run_tool(runtime, spec, 1, "r", "panel", json.dumps({"question": "Why?"}))
    assert done.result == "error: recipes cannot be asked here (no engine runs this stage)"
