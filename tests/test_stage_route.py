"""`route` (rule and classifier routers, any number of routes) through real litellm and the loopback server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import loopback_recipe

import moa
from moa._stages.route import CLASSIFY, classifier_messages, named
from moa.eval._control import control_summary
from moa.recipe import ClassifierRouter

RULES = [
    {"name": "code", "agent": {"model": "openai/coder", "system": "Write code."}, "when": {"pattern": "```"}},
    {"name": "math", "agent": {"model": "openai/solver"}, "when": {"keywords": ["sum", "product"], "max_chars": 60}},
    {"name": "long", "agent": {"model": "openai/reader"}, "when": {"min_chars": 61}},
    {"name": "chat", "agent": {"model": "openai/talker"}},
]


def routed(server: Any, routes: list[dict[str, Any]], router: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return loopback_recipe(server, [{"kind": "route", "routes": routes, "router": router, **fields}])


def asked(server: Any) -> list[str]:
    return [r.model for r in server.requests if r.path.endswith("/chat/completions")]


@pytest.mark.parametrize(
    ("prompt", "route", "model"),
    [
        ("Fix this:\n```\nprint(1\n```", "code", "coder"),
        ("What is the SUM of 2 and 3?", "math", "solver"),
        ("What is the summary?", "chat", "talker"),  # "sum" only as a whole word
        ("Tell me about the sum of all the integers, and why it is what it is, in detail please.", "long", "reader"),
        ("Hello!", "chat", "talker"),
    ],
)
async def test_rules_send_each_prompt_to_the_first_route_whose_rule_holds(
    script: Any, prompt: str, route: str, model: str
) -> None:
    server = script({"coder": "fixed", "solver": "5", "reader": "long answer", "talker": "hi"})
    result = await moa.run(prompt, routed(server, RULES, {"type": "rules"}), api_key="k")
    assert asked(server) == [model]
    (decision,) = result.layers[0].decisions
    assert (decision.option, decision.action, decision.index) == (
        route,
        "route",
        [r["name"] for r in RULES].index(route),
    )
    reason = "the last route takes every prompt" if route == "chat" else "its rule holds"
    assert decision.reason == reason and decision.tokens == result.usage.total_tokens
    assert (
        result.layers[0].answered_by == route
        and result.output == {"coder": "fixed", "solver": "5", "reader": "long answer", "talker": "hi"}[model]
    )
    system = [{"role": "system", "content": "Write code."}] if route == "code" else []
    assert server.requests[0].messages == [*system, {"role": "user", "content": prompt}]


async def test_with_no_rule_holding_the_default_answers_and_without_one_it_is_a_route_error(script: Any) -> None:
    server = script({"coder": "fixed", "solver": "5"})
    routes = RULES[:2]
    result = await moa.run("Hello!", routed(server, routes, {"type": "rules"}, default="math"), api_key="k")
    assert asked(server) == ["solver"] and result.layers[0].decisions[0].reason == "no rule holds; the default route"
    with pytest.raises(moa.RouteError) as caught:
        await moa.run("Hello!", routed(server, routes, {"type": "rules"}), api_key="k")
    assert str(caught.value) == "layer 1 (route): the router chose no route (no rule holds) and there is no `default`"
    assert caught.value.partial is not None and caught.value.partial.calls == []
    assert asked(server) == ["solver"]  # nothing more was called


CLASSIFIED = [
    {"name": "math", "agent": {"model": "openai/solver"}, "description": "arithmetic and algebra"},
    {"name": "code", "agent": {"model": "openai/coder"}, "description": "programs"},
    {"name": "chat", "agent": {"model": "openai/talker"}},
]


@pytest.mark.parametrize(
    ("reply", "model", "reason"),
    [
        ("code", "coder", "the classifier said 'code'"),
        ("  Math.", "solver", "the classifier said 'Math.'"),
        ("I would say chat, or maybe code.", "talker", "the classifier said 'I would say chat, or maybe code.'"),
        ("mathematics", "talker", "the classifier said 'mathematics'; the default route"),  # no route named: default
    ],
)
async def test_a_classifier_names_the_route_and_an_unreadable_answer_goes_to_the_default(
    script: Any, reply: str, model: str, reason: str
) -> None:
    server = script({"sorter": reply, "solver": "5", "coder": "fixed", "talker": "hi"})
    router = {"type": "classifier", "agent": {"model": "openai/sorter"}}
    result = await moa.run("What is 2+3?", routed(server, CLASSIFIED, router, default="chat"), api_key="k")
    assert asked(server) == ["sorter", model]
    sorter = server.requests[0]
    assert sorter.messages == [
        {"role": "system", "content": CLASSIFY},
        {"role": "user", "content": "Categories:\n- math: arithmetic and algebra\n- code: programs\n- chat\n\n"
                                    "Request:\nWhat is 2+3?\n\nCategory:"},
    ]  # fmt: skip
    assert sorter.body is not None and (sorter.body["temperature"], sorter.body["max_tokens"]) == (0.0, 16)
    assert result.layers[0].decisions[0].reason == reason
    assert [o.name for o in result.layers[0].outputs] == ["openai/sorter", f"openai/{model}"]


def test_a_reply_is_read_as_the_whole_name_else_the_first_name_in_it() -> None:
    names = ["math", "math-hard", "code"]
    assert named("Math-Hard", names) == "math-hard"
    assert named("code then math", names) == "code"
    assert named("the math-hard one", names) == "math"  # "math" stands as a whole word first, at the same place
    assert named("mathematics", names) is None and named("", names) is None


async def test_a_route_that_fails_is_a_route_error_with_its_decision(script: Any) -> None:
    server = script({"solver": "5"})
    server.add_fault("400", times=1, model="solver")
    with pytest.raises(moa.RouteError) as caught:
        await moa.run("What is the sum?", routed(server, RULES, {"type": "rules"}), api_key="k")
    assert str(caught.value).startswith("layer 1 (route): the route math gave no answer: its call failed (")
    (decision,) = caught.value.decisions
    assert (decision.option, decision.action) == ("math", "route")
    partial = caught.value.partial
    assert [o.name for o in partial.calls] == ["openai/solver"] and partial.layers[0].decisions[0].option == "math"


async def test_a_recipe_route_answers_the_conversation_and_its_calls_are_the_layers(
    script: Any, tmp_path: Path
) -> None:
    server = script({"p": "Answer: 8", "fuse": "Answer: 6", "talker": "hi"})
    strong = loopback_recipe(server, [
        {"kind": "propose", "agents": [{"model": "openai/p", "n": 2}]},
        {"kind": "aggregate", "agents": [{"model": "openai/fuse"}]},
    ])  # fmt: skip
    (tmp_path / "strong.yaml").write_text(json.dumps({**strong, "name": "strong"}))
    routes = [{"name": "hard", "recipe": "strong.yaml", "when": {"keywords": ["prove"]}}, RULES[-1]]
    (tmp_path / "r.yaml").write_text(json.dumps(routed(server, routes, {"type": "rules"})))
    recipe = moa.load_recipe(tmp_path / "r.yaml")
    assert recipe.calls_per_query == 3 and recipe.layers[0].calls_vary
    result = await moa.run("Prove it.", recipe, api_key="k")
    assert result.output == "Answer: 6"
    assert [o.name for o in result.layers[0].outputs] == ["hard: openai/p", "hard: openai/p", "hard: openai/fuse"]
    (decision,) = result.layers[0].decisions
    assert decision.tokens == result.usage.total_tokens > 0
    summary = control_summary([{"traces": [result.model_dump(mode="json")]}])
    assert summary is not None and summary["layer 1 (route)"]["answered_by"] == {"hard": 1.0}


def problems(layer: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(moa.RecipeError) as caught:
        moa.load_recipe({"name": "r", "layers": [layer]})
    return caught.value.problems


@pytest.mark.parametrize(
    ("fields", "where", "message"),
    [
        ({"default": "nowhere"}, "layers[0]",
         "`default` is 'nowhere', which is no route; routes: code, math, long, chat"),
        ({"routes": [RULES[3], RULES[0]]}, "layers[0]", "routes[0] has no condition in `when`: it takes every prompt"),
        ({"routes": [{**RULES[0], "when": {}}, RULES[1]]}, "layers[0]", "routes[0] has no condition in `when`"),
        ({"routes": [{**RULES[0], "when": {"keywords": [" "]}}]}, "layers[0].routes[0].when",
         "a blank keyword would match any prompt"),
        ({"routes": [{**RULES[0], "when": {"min_chars": 100, "max_chars": 10}}]}, "layers[0].routes[0].when",
         "`min_chars` (100) is above `max_chars` (10): it never holds"),
        ({"routes": [RULES[0], {**RULES[1], "name": "Code"}]}, "layers[0]", "two routes are called"),
        ({"routes": [RULES[0], RULES[0]]}, "layers[0]", "two routes are called 'code'"),
        ({"routes": [{**RULES[0], "description": "x"}]}, "layers[0]",
         "routes[0].description: `router: rules` does not"),
        ({"router": {"type": "classifier", "agent": {"model": "openai/s"}}}, "layers[0]",
         "routes[0].when: `router: classifier` does not read it"),
        ({"router": {"type": "coin"}}, "layers[0].router.type", "coin"),
        ({"routes": []}, "layers[0].routes", "at least 1 item"),
        ({"routes": [{"name": "x", "when": {"pattern": "("}, "agent": {"model": "openai/a"}}]},
         "layers[0].routes[0].when.pattern", "does not compile"),
    ],
)  # fmt: skip
def test_a_route_stage_that_cannot_work_is_refused_naming_its_field(
    fields: dict[str, Any], where: str, message: str
) -> None:
    layer = {"kind": "route", "routes": RULES, "router": {"type": "rules"}, **fields}
    found = problems(layer)
    assert any(path == where and message in text for path, text in found), found


def test_plans_count_the_classifier_and_the_costliest_route() -> None:
    router = {"type": "classifier", "agent": {"model": "openai/s"}}
    recipe = moa.load_recipe({"name": "r", "layers": [{"kind": "route", "routes": CLASSIFIED, "router": router}]})
    assert recipe.calls_per_query == 2 and not recipe.layers[0].calls_vary
    (plan,) = moa.plan(recipe)
    assert plan.agents == ["openai/solver", "openai/coder", "openai/talker", "openai/s"]
    assert isinstance(recipe.layers[0].router, ClassifierRouter)
    messages = classifier_messages(recipe.layers[0].router, ["a"], [None], "q")
    assert messages[1]["content"] == "Categories:\n- a\n\nRequest:\nq\n\nCategory:"
