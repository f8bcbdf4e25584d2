"""Tools as configuration: registering functions, the schemas built for them, recipe validation with field
paths, plugins, and the worst cases that plans give for tool loops."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import moa
from moa.cli import main
from moa.recipe import tools as tool_registry
from moa.testing import FakeProvider


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(tool_registry, "_registered", dict(tool_registry._registered))
    monkeypatch.setattr(tool_registry, "_failed", {})
    yield


def lookup(city: str, days: int = 3, units: str | None = None, tags: list[str] | None = None) -> str:
    """Look the weather up.

    The rest of the docstring is not sent."""
    return city


def test_a_schema_is_built_from_the_signature_and_the_description_from_the_docstring() -> None:
    tool = moa.register_tool("weather", lookup)
    assert tool.description == "Look the weather up."
    assert tool.schema == {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "units": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    given = {"type": "object", "properties": {"q": {"type": "string"}}}
    assert moa.register_tool("search", lambda q: q, schema=given, description="Search.").schema == given
    assert moa.register_tool("plain", lambda: "x", schema={"type": "object"}).description == "Calls plain."


def unannotated(x):  # type: ignore[no-untyped-def]
    return x


def variadic(*numbers: int) -> int:
    return sum(numbers)


def a_set(items: set[str]) -> int:
    return len(items)


@pytest.mark.parametrize(
    ("name", "function", "schema", "message"),
    [
        ("two words", lookup, None, "a tool's name is 1-64 letters, digits, `_` or `-`"),
        ("x" * 65, lookup, None, "a tool's name is 1-64 letters"),
        ("python", lookup, None, "'python' is a built-in tool; give your function another name"),
        ("ask", lookup, None, "'ask' is a built-in tool"),
        ("f", "not a function", None, "tool 'f': expected a function, got str"),
        ("f", lookup, {"type": "string"}, 'the schema must be a JSON schema with "type": "object"'),
        ("f", lookup, {"type": "object", "properties": 3}, "the schema is not a valid JSON schema: 3 is not of type"),
        ("f", unannotated, None, "tool 'f': parameter 'x' has no type annotation; give a schema"),
        ("f", variadic, None, "parameter 'numbers' cannot be given by name (*args, **kwargs or positional-only)"),
        ("f", a_set, None, "parameter 'items' is annotated set[str]: only str, int, float, bool, list, dict"),
    ],
)
def test_registration_errors_say_what_is_wrong(name: str, function: Any, schema: Any, message: str) -> None:
    with pytest.raises(moa.ConfigError) as info:
        moa.register_tool(name, function, schema=schema)
    assert message in str(info.value)
    assert name not in tool_registry._registered


def test_a_name_is_registered_once_unless_replaced() -> None:
    moa.register_tool("weather", lookup)
    with pytest.raises(moa.ConfigError, match="a tool named 'weather' is already registered"):
        moa.register_tool("weather", lambda city: city, schema={"type": "object"})
    moa.register_tool("weather", str.upper, schema={"type": "object"}, replace=True)
    assert tool_registry.registered()["weather"].function is str.upper


def agent_recipe(**agent: Any) -> dict[str, Any]:
    return {"name": "t", "layers": [{"kind": "propose", "agents": [{"model": "openai/a", **agent}]}]}


def problems(source: Any) -> list[tuple[str, str]]:
    with pytest.raises(moa.RecipeError) as info:
        moa.load_recipe(source)
    return info.value.problems


def test_tools_are_names_or_mappings_and_unknown_ones_are_named_with_the_known_ones() -> None:
    moa.register_tool("weather", lookup)
    loaded = moa.load_recipe(agent_recipe(tools=["python", "weather", {"name": "python", "function": "py2"}]))
    agent = loaded.layers[0].agents[0]  # type: ignore[attr-defined]
    assert [t.called for t in agent.tools] == ["python", "weather", "py2"]
    assert (agent.steps, agent.tool_call_limit) == (6, 8)
    assert problems(agent_recipe(tools=["python", "wether"])) == [
        (
            "layers[0].agents[0].tools[1].name",
            "unknown tool 'wether'; tools: python, ask, weather (register functions with moa.register_tool before "
            "loading the recipe)",
        )
    ]


JUDGE = {"model": "openai/j", "tools": ["python"]}


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"tools": ["python"], "max_steps": 1}, "layers[0].agents[0].max_steps", "must be at least 2"),
        ({"tools": ["python"], "max_steps": 51}, "layers[0].agents[0].max_steps", "less than or equal to 50"),
        ({"tools": ["python"], "max_tool_calls": 0}, "layers[0].agents[0].max_tool_calls", "greater than or equal"),
        ({"max_steps": 3}, "layers[0].agents[0]", "`max_steps` bounds a tool loop: it needs `tools`"),
        ({"tools": ["python", "python"]}, "layers[0].agents[0]", "tools[0] and tools[1] are both called 'python'"),
        ({"tools": [{"name": "ask"}]}, "layers[0].agents[0].tools[0]", "asks an `agent` or a `recipe`: give exactly"),
        (
            {"tools": [{"name": "ask", "agent": {"model": "b"}, "recipe": "moa-lite"}]},
            "layers[0].agents[0].tools[0]",
            "give exactly one of them",
        ),
        (
            {"tools": [{"name": "ask", "agent": {"model": "b", "n": 2}}]},
            "layers[0].agents[0].tools[0]",
            "`agent` is asked once per question: its `n` must be 1",
        ),
        (
            {"tools": [{"name": "ask", "agent": {"model": "b"}, "limits": {"wall_s": 1}}]},
            "layers[0].agents[0].tools[0]",
            "`limits` is a setting of the `python` tool, not of `ask`",
        ),
        ({"tools": [{"name": "python", "function": "run code"}]}, "layers[0].agents[0].tools[0].function", "1-64"),
        ({"tools": [{"name": "python", "limits": {"wall_s": 0}}]}, "layers[0].agents[0].tools[0].limits.wall_s", ""),
        ({"extra": {"tools": []}}, "layers[0].agents[0].extra", "give the agent `tools`"),
        ({"extra": {"tool_choice": "auto"}}, "layers[0].agents[0].extra", "the tool loop sets it"),
    ],
)
def test_bad_tool_settings_name_their_field(fields: dict[str, Any], path: str, message: str) -> None:
    ((where, why),) = problems(agent_recipe(**fields))
    assert where == path and message in why


@pytest.mark.parametrize(
    ("stage", "field"),
    [
        ({"kind": "rank", "judge": JUDGE}, "judge.tools"),
        ({"kind": "vote", "extract": "llm", "extractor": JUDGE}, "extractor.tools"),
        (
            {"kind": "verify", "checks": [{"type": "llm", "judge": JUDGE, "criterion": "right?"}]},
            "checks[0].judge.tools",
        ),
    ],
)
def test_judges_and_extractors_cannot_have_tools(stage: dict[str, Any], field: str) -> None:
    first = {"kind": "propose", "agents": [{"model": "openai/a"}, {"model": "openai/b"}]}
    ((where, why),) = problems({"name": "t", "layers": [first, stage]})
    assert where == "layers[1]" and why.startswith(f"`{field}`: this agent gives the stage's verdicts or extractions")
    assert "so it cannot use tools" in why


def test_every_agent_that_answers_may_have_tools() -> None:
    tools = {"tools": ["python"]}
    recipe = {
        "name": "everywhere",
        "layers": [
            {"kind": "debate", "agents": [{"model": "openai/a", **tools}, {"model": "openai/b"}]},
            {"kind": "aggregate", "agents": [{"model": "openai/c", **tools}]},
            {
                "kind": "verify",
                "checks": [{"type": "regex", "pattern": "x"}],
                "repairs": 1,
                "repair_with": {"model": "openai/r", **tools},
                "fallback": [{"model": "openai/f", **tools}],
            },
        ],
    }
    loaded = moa.load_recipe(recipe)
    assert [len(a.tools) for layer in loaded.layers for a in layer.call_agents()] == [1, 0, 1, 1, 1]


def test_a_recipe_asked_as_a_tool_loads_with_the_recipe_and_may_not_ask_itself(tmp_path: Path) -> None:
    def write(name: str, asks: str) -> Path:
        tools = f"[{{name: ask, recipe: {asks}}}]"
        path = tmp_path / name
        layer = f"{{kind: propose, agents: [{{model: openai/x, tools: {tools}}}]}}"
        path.write_text(f"name: {name}\nlayers:\n  - {layer}\n")
        return path

    fine = write("fine.yaml", "moa-lite")
    tool = moa.load_recipe(fine).layers[0].agents[0].tools[0]  # type: ignore[attr-defined]
    assert tool._loaded is not None and tool._loaded.name == "moa-lite"
    write("a.yaml", "b.yaml")
    write("b.yaml", "a.yaml")
    ((where, why),) = problems(tmp_path / "a.yaml")
    assert where == "layers[0].agents[0].tools[0].recipe"
    a, b = str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")
    assert why == (
        f"{b} does not load: layers[0].agents[0].tools[0].recipe: {a} does not load: the recipe runs itself, in a "
        f"loop (an `ask` tool, a cascade tier): {a} -> {b} -> {a}"
    )
    write("lost.yaml", "nowhere.yaml")
    assert problems(tmp_path / "lost.yaml") == [
        ("layers[0].agents[0].tools[0].recipe", f"{tmp_path / 'nowhere.yaml'} does not load: file not found")
    ]


def test_packages_add_tools_through_entry_points_and_a_broken_one_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise ImportError("no module named weatherlib")

    entries = [
        SimpleNamespace(name="weather", value="pkg:lookup", load=lambda: lookup),
        SimpleNamespace(name="radar", value="pkg:radar", load=broken),
    ]
    monkeypatch.setattr(tool_registry, "entry_points", lambda group: entries if group == "moa.tools" else [])
    monkeypatch.setattr(tool_registry, "_entry_points_loaded", False)
    with pytest.warns(RuntimeWarning, match="the tool 'radar' .* cannot be registered: ImportError"):
        moa.load_recipe(agent_recipe(tools=["weather"]))
    assert tool_registry.registered()["weather"].function is lookup
    ((where, why),) = problems(agent_recipe(tools=["radar"]))
    assert where == "layers[0].agents[0].tools[0].name"
    assert why.endswith("; the tool 'radar' (pkg:radar) cannot be registered: ImportError: no module named weatherlib")


class Priced(FakeProvider):
    """$1 a prompt token; a model whose name says so has no price."""

    def worst_case_cost(self, model: str, params: Any, prompt_tokens: int) -> float | None:
        return None if "unpriced" in model else float(prompt_tokens)

    def max_output_tokens(self, model: str) -> int:
        return 100


def worst(**agent: Any) -> float | None:
    (layer,) = moa.plan(agent_recipe(max_tokens=50, **agent), "Q", provider=Priced())
    return layer.worst_case_usd


def test_plans_count_every_step_of_a_tool_loop_and_every_ask() -> None:
    alone = worst()
    assert alone is not None and alone < 30
    loops = [worst(tools=["python"], max_steps=steps, max_tool_calls=2) for steps in (2, 3, 4)]
    assert all(cost is not None for cost in loops)
    assert alone < loops[0] < loops[1] < loops[2]  # type: ignore[operator]
    # Step k quotes k - 1 answers and up to two 4,000-character results.
    step_growth = loops[2] - loops[1] - (loops[1] - loops[0])  # type: ignore[operator]
    assert step_growth == 50 + 17
    more_calls = worst(tools=["python"], max_steps=2, max_tool_calls=3)
    assert more_calls is not None and more_calls - loops[0] >= 4000  # type: ignore[operator]
    asking = worst(tools=[{"name": "ask", "agent": {"model": "openai/b"}}], max_steps=2, max_tool_calls=2)
    python = worst(tools=["python"], max_steps=2, max_tool_calls=2)
    # Two questions of 4,000 one-token characters each (less the shorter tool definition of `ask`, per step).
    assert asking is not None and python is not None and 2 * 4000 > asking - python > 2 * 4000 - 100
    assert worst(tools=[{"name": "ask", "agent": {"model": "openai/unpriced"}}]) is None


def test_call_counts_cover_every_step_of_a_tool_loop_and_every_ask_at_its_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def propose(**agent: Any) -> dict[str, Any]:
        return {"name": "t", "layers": [{"kind": "propose", "agents": [{"model": "openai/a", **agent}]}]}

    def with_vote(recipe: dict[str, Any]) -> dict[str, Any]:
        return {**recipe, "layers": [*recipe["layers"], {"kind": "vote"}]}

    asked = {"model": "openai/b", "tools": ["python"], "max_steps": 2, "max_tool_calls": 1}  # its 2 steps at most
    cases = [
        (propose(), 1, False),
        (with_vote(propose(n=2, tools=["python"], max_steps=3, max_tool_calls=5)), 2 * 3, True),  # python asks no model
        (propose(tools=[{"name": "ask", "agent": {"model": "openai/b"}}], max_steps=3, max_tool_calls=2), 3 + 2, True),
        (propose(tools=[{"name": "ask", "agent": asked}], max_steps=2, max_tool_calls=2), 2 + 2 * 2, True),
        (propose(tools=[{"name": "ask", "recipe": "self-moa"}], max_steps=2, max_tool_calls=1), 2 + 7, True),
    ]
    for data, calls, vary in cases:
        recipe = moa.load_recipe(data)
        assert (recipe.calls_per_query, recipe.layers[0].calls_vary) == (calls, vary), data
    debater = {"model": "openai/a", "n": 2, "tools": ["python"], "max_steps": 3}
    debate = {"kind": "debate", "rounds": 2, "agents": [debater]}
    assert moa.load_recipe(with_vote({"name": "t", "layers": [debate]})).calls_per_query == 2 * 3 * 2
    fallback = {"model": "openai/c", "tools": [{"name": "ask", "agent": {"model": "openai/d"}}], "max_steps": 2,
                "max_tool_calls": 1}  # fmt: skip
    verify = {"kind": "verify", "checks": [{"type": "regex", "pattern": "x"}], "fallback": [fallback]}
    checked = {"name": "t", "layers": [{"kind": "propose", "agents": [{"model": "openai/a"}]}, verify]}
    assert moa.load_recipe(checked).calls_by_layer() == [1, 2 + 1]
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "loop.yaml").write_text(json.dumps({**cases[2][0], "name": "loop"}))
    monkeypatch.chdir(tmp_path)
    assert main(["recipes", "list"]) == 0
    (row,) = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("loop ")]
    assert row[:5] == ["loop", "1", "up", "to", "5"]
    assert main(["recipes", "show", "recipes/loop.yaml"]) == 0
    assert "1 layers, at most 5 calls per query" in capsys.readouterr().out


def test_the_live_view_shows_a_tool_loop_as_one_call_with_its_steps() -> None:
    import io

    from rich.console import Console

    from moa import Completion
    from moa._provider import ToolRequest
    from moa.cli.live import LiveView

    moa.register_tool("weather", lookup)
    asks = Completion("", 5, 3, cost_usd=0.001, tool_calls=(ToolRequest("w", "weather", '{"city": "Lyon"}'),))
    fake = FakeProvider(replies={"openai/a": [asks, Completion("Rain.", 9, 2, cost_usd=0.002)]})
    recipe = moa.load_recipe(agent_recipe(tools=["weather"]))
    out = Console(file=io.StringIO(), width=140, color_system=None)
    view = LiveView(recipe, out, stream=False)
    seen: list[str] = []

    def on_event(event: moa.Event) -> None:
        view.on_event(event)
        if event.kind == "tool_finished":
            seen.append(_render(view.tree()))

    result = moa.run_sync("Umbrella?", recipe, provider=fake, on_event=on_event)
    assert result.output == "Rain." and len(fake.requests) == 2
    assert "running step 1: weather" in seen[0]
    (row,) = view.layers[0].rows.values()
    assert (row.state, row.running, row.finished, row.planned) == ("done", 0, 1, 1)
    assert row.tokens == 5 + 3 + 9 + 2 and row.cost == pytest.approx(0.003)
    assert "calls 1/1" in _render(view.totals())


def _render(renderable: object) -> str:
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=140, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def test_an_agent_whose_provider_litellm_calls_no_functions_with_is_refused_before_any_call() -> None:
    recipe = {
        "name": "t",
        "layers": [
            {"kind": "propose", "agents": [{"model": "ollama/llama3"}, {"model": "openai/gpt-4o-mini"}]},
            {"kind": "aggregate", "agents": [{"model": "ollama/llama3", "tools": ["python"]}]},
        ],
    }
    with pytest.raises(moa.ConfigError) as info:
        moa.run_sync("Q", recipe, api_key="k")
    assert str(info.value).startswith("ollama/llama3: litellm sends no function calls (`tools`) to this provider")
    recipe["layers"][1]["agents"][0]["model"] = "ollama_chat/llama3"  # type: ignore[index]
    from moa._engine import Engine
    from moa._limits import Limiter
    from moa._litellm import LiteLLMProvider

    loaded = moa.load_recipe(recipe)
    Engine(loaded, LiteLLMProvider(), Limiter(loaded.limits), api_key="k").preflight()  # nothing to refuse
