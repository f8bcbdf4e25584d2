"""`debate` (Du et al. 2023) through real litellm and the loopback server."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import agents, loopback_recipe

import moa
from moa import _templates


def debater(name: str) -> Any:
    """Answers "<name> round k", k counted from its own earlier answers in the conversation."""
    return lambda messages: f"{name} round {1 + sum(m['role'] == 'assistant' for m in messages)}"


def debate(server: Any, rounds: int = 2, **fields: Any) -> dict[str, Any]:
    layers = [
        {"kind": "debate", "agents": agents("openai/d1", "openai/d2", "openai/d3"), "rounds": rounds, **fields},
        {"kind": "vote", "extract": "text"},
    ]
    return loopback_recipe(server, layers)


def turn(others: list[str], step: int) -> dict[str, str]:
    text = _templates.load("debate").render(responses=others, layer=1, step=step)
    return {"role": "user", "content": text}


async def test_each_agent_sees_the_others_latest_answers_and_revises(script: Any) -> None:
    server = script({name: debater(name) for name in ("d1", "d2", "d3")})
    result = await moa.run("Is 91 prime?", debate(server), api_key="k")
    assert len(server.completions()) == 6
    round_two = server.completions("d1")[1]
    assert round_two.messages == [
        {"role": "user", "content": "Is 91 prime?"},
        {"role": "assistant", "content": "d1 round 1"},
        turn(["d2 round 1", "d3 round 1"], step=2),
    ]
    assert "Agent 1: d2 round 1\n" in round_two.messages[-1]["content"]
    calls = result.layers[0].outputs
    assert [(c.agent, c.step) for c in calls] == [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)]
    assert [c.text for c in result.layers[1].considered] == ["d1 round 2", "d2 round 2", "d3 round 2"]


async def test_three_rounds_keep_each_agents_whole_history(script: Any) -> None:
    server = script({name: debater(name) for name in ("d1", "d2", "d3")})
    await moa.run("Q", debate(server, rounds=3), api_key="k")
    assert len(server.completions()) == 9
    last = server.completions("d2")[2]
    assert last.messages == [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "d2 round 1"},
        turn(["d1 round 1", "d3 round 1"], step=2),
        {"role": "assistant", "content": "d2 round 2"},
        turn(["d1 round 2", "d3 round 2"], step=3),
    ]


async def test_an_agent_that_fails_drops_out_and_the_quorum_holds_each_round(script: Any) -> None:
    server = script({name: debater(name) for name in ("d1", "d2", "d3")})
    server.add_fault("400", times=1, model="d3")
    result = await moa.run("Q", debate(server, min_success=2), api_key="k")
    assert len(server.completions("d3")) == 1 and len(server.completions()) == 5
    assert server.completions("d1")[1].messages[-1] == turn(["d2 round 1"], step=2)
    assert [c.text for c in result.layers[1].considered] == ["d1 round 2", "d2 round 2"]
    server.clear()
    server.add_fault("400", times=1, model="d3")
    with pytest.raises(moa.QuorumError) as info:
        await moa.run("Q", debate(server), api_key="k")  # default quorum: every agent
    assert info.value.layer == 1 and len(server.completions()) == 3


async def test_agents_with_n_samples_debate_as_separate_agents(script: Any) -> None:
    server = script({"d": debater("d")})
    layers = [
        {"kind": "debate", "agents": [{"model": "openai/d", "n": 3, "system": "Be brief."}]},
        {"kind": "aggregate", "agents": agents("openai/agg")},
    ]
    result = await moa.run("Q", loopback_recipe(server, layers), api_key="k")
    assert [(c.sample, c.step) for c in result.layers[0].outputs] == [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)]
    assert all(r.messages[0] == {"role": "system", "content": "Be brief."} for r in server.completions("d"))


def test_debate_shapes_are_checked() -> None:
    one = {"kind": "debate", "agents": [{"model": "openai/a"}]}
    with pytest.raises(moa.RecipeError, match="at least two agents"):
        moa.load_recipe({"name": "d", "layers": [one, {"kind": "vote"}]})
    three = {"kind": "debate", "agents": [{"model": "openai/a", "n": 3}]}
    with pytest.raises(moa.RecipeError, match="end with a `vote` or an `aggregate` stage"):
        moa.load_recipe({"name": "d", "layers": [three]})
    with pytest.raises(moa.RecipeError, match="min_success is 4 but the layer makes only 3 calls"):
        moa.load_recipe({"name": "d", "layers": [{**three, "min_success": 4}, {"kind": "vote"}]})
    later = {"kind": "propose", "agents": [{"model": "openai/a"}]}
    with pytest.raises(moa.RecipeError, match=r"layers\[1\]\.kind is 'debate'.*can only come first"):
        moa.load_recipe({"name": "d", "layers": [later, three, {"kind": "vote"}]})
    plan = moa.plan({"name": "d", "layers": [{**three, "rounds": 3}, {"kind": "vote"}]})
    assert [p.calls for p in plan] == [9, 0]


def test_a_template_that_cannot_take_the_others_answers_fails_when_the_recipe_loads(tmp_path: Any) -> None:
    template = tmp_path / "two.j2"
    template.write_text("{{ responses[1] }}")  # needs two other answers: with 3 agents and a quorum of 2, one
    layers = [
        {"kind": "debate", "agents": [{"model": "openai/a", "n": 3}], "min_success": 2, "template": str(template)},
        {"kind": "vote"},
    ]
    with pytest.raises(moa.RecipeError, match=r"layers\[0\]\.template: .*fails when it receives 1 response"):
        moa.load_recipe({"name": "d", "layers": layers})
