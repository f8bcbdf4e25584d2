"""Money and time inside tool loops: a budget refuses a step (the steps before it stay in the trace), the worst
case bounds every step's real reservation, a recipe asked as a tool is paid from the same budget, and the
run's deadline holds while a tool runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import loopback_recipe
from virtual_clock import run_virtual

import moa
from moa import Completion, Limiter
from moa._call import Budget, Caller, Tracer, plan_layer
from moa._litellm import LiteLLMProvider
from moa._provider import ToolRequest
from moa._stages import STAGES, StageContext
from moa.recipe import tools as tool_registry
from moa.testing import FakeProvider, LoopbackServer

QUESTION = "Find the answer."
MODEL = "openai/gpt-4o-mini"


@pytest.fixture(autouse=True)
def functions(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(tool_registry, "_registered", dict(tool_registry._registered))

    def page(number: int) -> str:
        """A long page of results."""
        return f"page {number}: " + "lorem ipsum dolor " * 600  # 10,800 characters: cut to 4,000

    moa.register_tool("page", page)
    yield


class PricedByPrompt(LiteLLMProvider):
    """litellm, but a call's worst case is $1 a million prompt tokens (so a reservation counts them); notes each."""

    def __init__(self) -> None:
        self.priced: list[int] = []

    def worst_case_cost(self, model: str, params: Any, prompt_tokens: int) -> float | None:
        self.priced.append(prompt_tokens)
        return prompt_tokens * 1e-6


def pages_forever(body: dict[str, Any], _: int) -> Any:
    """Asks for the next two pages at every step it may, then answers."""
    if body.get("tool_choice") == "none":
        return "Found it."
    index = sum(m["role"] == "assistant" for m in body["messages"])
    return {
        "content": f"Reading pages {2 * index} and {2 * index + 1}.",
        "tool_calls": [{"name": "page", "arguments": {"number": 2 * index + n}} for n in range(2)],
    }


def recipe_of(server: LoopbackServer, **agent: Any) -> dict[str, Any]:
    agents = [{"model": MODEL, "max_tokens": 40, "tools": ["page"], **agent}]
    return loopback_recipe(server, [{"kind": "propose", "agents": agents}])


def context(server: LoopbackServer, provider: PricedByPrompt, budget: Budget) -> StageContext:
    """The recipe's one propose stage under ``budget`` with no run-level reservation (so a step can be refused)."""
    recipe = moa.load_recipe(recipe_of(server, max_steps=4, max_tool_calls=8))
    recorded: list[moa.AgentOutput] = []
    caller = Caller(provider, Limiter(recipe.limits), Tracer(None, recorded.append), recipe.retry,
                    pricing=provider, budget=budget, api_key="k")  # fmt: skip
    conversation = [{"role": "user", "content": QUESTION}]
    return StageContext(0, recipe.layers[0], conversation, plan_layer(recipe, 0), caller, recorded=recorded)


async def test_a_budget_that_allows_two_steps_but_not_three_stops_the_loop_with_both_in_the_trace() -> None:
    with LoopbackServer(responder=pages_forever) as server:
        measured = PricedByPrompt()
        await STAGES["propose"].run(context(server, measured, Budget(max_cost_usd=1.0)), [])
        first, second, third = measured.priced[:3]  # each step's reservation, in prompt tokens
        assert first < second < third  # every step quotes two more pages
        server.clear()
        provider = PricedByPrompt()
        budget = Budget(max_cost_usd=(second + third) / 2 * 1e-6)
        ctx = context(server, provider, budget)
        with pytest.raises(moa.BudgetExceeded, match=r"^layer 1: not started: its worst case"):
            await STAGES["propose"].run(ctx, [])
        sent = server.completions()
    assert len(sent) == 2 and provider.priced == [first, second, third]
    (output,) = ctx.recorded
    assert output.error is not None and output.error.type == "BudgetExceeded" and output.text is None
    assert [(t.step, t.name, t.arguments) for t in output.tool_calls] == [
        (1, "page", {"number": 0}),
        (1, "page", {"number": 1}),
        (2, "page", {"number": 2}),
        (2, "page", {"number": 3}),
    ]
    assert all(t.result.startswith("page ") and t.result.endswith("characters in all]") for t in output.tool_calls)
    assert all(len(t.result) == 4000 for t in output.tool_calls)  # cut to RESULT_CHARS
    assert output.attempts == 2 and output.tool_steps == 3  # two calls made, the third refused
    assert output.usage.prompt_tokens == sum(len(str(m.get("content") or "").split()) for r in sent for m in r.messages)
    assert output.cost_usd is not None and budget.spent_usd == pytest.approx(output.cost_usd)
    assert budget.reserved_usd == pytest.approx(0) and budget.refused_calls == 1
    roles = ["user", "assistant", "tool", "tool", "assistant", "tool", "tool"]
    assert [m["role"] for m in output.messages] == roles  # what the refused third call would have been sent


def symbols(number: int) -> str:
    """A page the estimate counts at its most: every character is a token of its own."""
    return "!?" * 5000


def two_long_calls(body: dict[str, Any], _: int) -> Any:
    if body.get("tool_choice") == "none":
        return "Found it."
    calls = [{"id": f"{n}" * 64, "name": "symbols", "arguments": {"number": n}} for n in range(2)]
    return {"content": "Reading.", "tool_calls": calls}


async def test_each_real_step_reserves_at_most_what_the_worst_case_counted_for_it() -> None:
    moa.register_tool("symbols", symbols)
    with LoopbackServer(responder=two_long_calls) as server:
        agents = [{"model": MODEL, "max_tokens": 40, "tools": ["symbols"], "max_steps": 2, "max_tool_calls": 2}]
        recipe = loopback_recipe(server, [{"kind": "propose", "agents": agents}])
        planned = PricedByPrompt()
        (layer,) = moa.plan(recipe, QUESTION, provider=planned)
        estimate = list(planned.priced)
        assert len(estimate) == 2 and layer.worst_case_usd == pytest.approx(sum(estimate) * 1e-6)
        provider = PricedByPrompt()
        # The run reserves exactly the plan's worst case, and no step is refused under it.
        result = await moa.run(QUESTION, recipe, provider=provider, api_key="k", max_cost_usd=layer.worst_case_usd)
    assert result.output == "Found it." and len(server.completions()) == 2
    preflight, reserved, real = provider.priced[:1], provider.priced[1:3], provider.priced[3:]
    assert preflight == [0] and reserved == estimate and len(real) == 2
    assert real[0] == estimate[0]  # the first step's prompt is known exactly
    # The second quotes two results of 4,000 one-token characters, 64-character ids and what the model wrote.
    assert 2 * 4000 < real[1] <= estimate[1] < real[1] + 1000
    (output,) = result.layers[0].outputs
    assert [len(t.result) for t in output.tool_calls] == [4000, 4000]


async def test_a_recipe_asked_as_a_tool_runs_under_the_same_budget_and_its_calls_are_in_the_trace(
    tmp_path: Path,
) -> None:
    def respond(body: dict[str, Any], _: int) -> Any:
        if body["model"] in ("gpt-3.5-turbo", "gpt-4-turbo"):
            return f"{body['model']} thinks 42"
        if body["model"] == "gpt-4o":
            return "The panel says 42."
        if body["messages"][-1]["role"] == "tool":
            return f"Answer: {body['messages'][-1]['content']}"
        return {"tool_calls": [{"name": "panel", "arguments": {"question": "What is six times seven?"}}]}

    with LoopbackServer(responder=respond) as server:
        inner = tmp_path / "panel.yaml"
        inner.write_text(
            "name: panel\ndescription: Two proposers and an aggregator.\n"
            f"defaults: {{api_base: '{server.base_url}', max_tokens: 30}}\n"
            "layers:\n"
            "  - {kind: propose, agents: [{model: openai/gpt-3.5-turbo}, {model: openai/gpt-4-turbo}]}\n"
            "  - {kind: aggregate, agents: [{model: openai/gpt-4o}]}\n"
        )
        outer = tmp_path / "outer.yaml"
        outer.write_text(
            "name: outer\n"
            f"defaults: {{api_base: '{server.base_url}', max_tokens: 30}}\n"
            "layers:\n"
            "  - kind: propose\n"
            f"    agents: [{{model: {MODEL}, tools: [{{name: ask, function: panel, recipe: panel.yaml}}]}}]\n"
        )
        budget = Budget(max_cost_usd=10.0)
        events: list[moa.Event] = []
        result = await moa.run(QUESTION, str(outer), api_key="k", budget=budget, on_event=events.append)
        panel = request_of_tools(server)
    assert result.output == "Answer: The panel says 42."
    assert panel["name"] == "panel" and panel["description"].startswith("Ask the `panel` pipeline of assistants")
    (output,) = result.layers[0].outputs
    (tool,) = output.tool_calls
    assert tool.result == "The panel says 42." and tool.error is None
    models = [(1, "openai/gpt-3.5-turbo"), (1, "openai/gpt-4-turbo"), (2, "openai/gpt-4o")]
    assert [(c.layer, c.model) for c in tool.calls] == models
    assert all(c.messages[-1]["content"] == "What is six times seven?" for c in tool.calls[:2])
    nested = sum((c.usage for c in tool.calls), moa.Usage())
    assert tool.usage == nested and nested.total_tokens > 0
    assert output.usage.total_tokens > nested.total_tokens and result.usage == output.usage
    # Its cost is the agent's, the run's, and what the one budget spent.
    assert tool.cost_usd is not None and tool.cost_usd == pytest.approx(sum(c.cost_usd or 0.0 for c in tool.calls))
    assert output.cost_usd is not None and output.cost_usd > tool.cost_usd > 0 and result.cost_usd == output.cost_usd
    assert budget.spent_usd == pytest.approx(output.cost_usd) and budget.reserved_usd == pytest.approx(0)
    # The nested run's own calls send no events to the outer run: its tool call does.
    assert [e.kind for e in events if e.kind in ("call_started", "tool_finished")] == [
        "call_started",
        "tool_finished",
        "call_started",
    ]


def request_of_tools(server: LoopbackServer) -> dict[str, Any]:
    body = server.completions("gpt-4o-mini")[0].body
    assert body is not None
    function: dict[str, Any] = body["tools"][0]["function"]
    return function


def test_the_deadline_holds_while_a_tool_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    async def stuck() -> str:
        """Waits for something that never happens."""
        await asyncio.Event().wait()
        return "never"

    moa.register_tool("stuck", stuck)
    asks = Completion("", 5, 3, tool_calls=(ToolRequest("s", "stuck", "{}"),))
    fake = FakeProvider(replies={MODEL: [asks]})
    recipe = {"name": "d", "layers": [{"kind": "propose", "agents": [{"model": MODEL, "tools": ["stuck"]}]}]}

    async def main() -> moa.DeadlineExceeded:
        with pytest.raises(moa.DeadlineExceeded) as info:
            await moa.run(QUESTION, recipe, provider=fake, deadline_s=30)
        return info.value

    error = run_virtual(main(), monkeypatch)
    assert len(fake.requests) == 1 and fake.requests[0].params["tool_choice"] == "auto"
    assert "deadline of 30 s passed" in str(error)
    # Like any call cancelled in flight, the unfinished answer is not in the partial trace.
    assert error.partial is not None and error.partial.layers[0].outputs == []
