"""`rank` (a judge orders the candidates) through real litellm and the loopback server."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from conftest import agents, loopback_recipe, scripted

import moa
from moa._stages.rank import pairwise_messages, pointwise_messages
from moa.testing import LoopbackServer

QUALITY = {"worst": 0, "fine": 1, "best": 2, "good": 3}  # the judge's taste: "good" beats "best"


def shown(messages: list[dict[str, Any]]) -> tuple[str, str]:
    found = re.search(r"Response A:\n(.*)\n\nResponse B:\n(.*)\n\nWhich", messages[-1]["content"], re.DOTALL)
    assert found is not None
    return found.group(1), found.group(2)


def prefers_quality(messages: list[dict[str, Any]]) -> str:
    a, b = shown(messages)
    return "A" if QUALITY[a.split()[0]] > QUALITY[b.split()[0]] else "B"


def layers(judge: dict[str, Any], proposers: int = 3, **rank: Any) -> list[dict[str, Any]]:
    return [
        {"kind": "propose", "agents": agents(*(f"openai/p{i}" for i in range(1, proposers + 1)))},
        {"kind": "rank", "judge": judge, **rank},
        {"kind": "aggregate", "agents": agents("openai/agg")},
    ]


async def test_pairwise_asks_every_ordered_pair_and_fuses_the_top_k_in_rank_order(script: Any) -> None:
    server = script({"p1": "worst answer", "p2": "best answer", "p3": "fine answer", "j": prefers_quality})
    recipe = loopback_recipe(server, layers({"model": "openai/j"}, top_k=2))
    result = await moa.run("Which is right?", recipe, api_key="k")
    judged = server.completions("j")
    assert len(judged) == 6 and len(server.completions()) == 3 + 6 + 1
    texts = ["worst answer", "best answer", "fine answer"]
    expected = [pairwise_messages(None, "Which is right?", a, b) for a in texts for b in texts if a != b]
    assert sorted(map(str, (r.messages for r in judged))) == sorted(map(str, expected))
    assert all(
        r.body and r.body["max_tokens"] == 1 and r.body["temperature"] == 0.0 and r.body["logprobs"] is True
        for r in judged
    )
    rank = result.layers[1]
    assert [c.score for c in rank.considered] == [-4.0, 4.0, 0.0]  # each match counts in both orders
    assert [c.text for c in rank.candidates] == ["best answer", "fine answer"]
    (aggregator,) = server.completions("agg")
    assert aggregator.messages[0]["content"].endswith("1. best answer\n2. fine answer")


async def test_a_judge_that_always_picks_the_first_shown_cancels_out(script: Any) -> None:
    server = script({"p1": "worst answer", "p2": "best answer", "p3": "fine answer", "j": "A"})
    result = await moa.run("Q", loopback_recipe(server, layers({"model": "openai/j"}, top_k=2)), api_key="k")
    assert [c.score for c in result.layers[1].considered] == [0.0, 0.0, 0.0]
    assert [c.text for c in result.layers[1].candidates] == ["worst answer", "best answer"]  # ties keep order


async def test_knockout_plays_one_bracket_both_orders(script: Any) -> None:
    replies = {"p1": "fine answer", "p2": "worst answer", "p3": "good answer", "p4": "best answer"}
    server = script({**replies, "j": prefers_quality})
    rank = {"pairs": "knockout", "top_k": 1}
    result = await moa.run(
        "Q", loopback_recipe(server, layers({"model": "openai/j"}, proposers=4, **rank)), api_key="k"
    )
    assert len(server.completions("j")) == 2 * (4 - 1)
    assert result.layers[1].candidates[0].text == "good answer"
    assert moa.plan(loopback_recipe(server, layers({"model": "openai/j"}, proposers=4, **rank)))[1].calls == 6


async def test_pointwise_reads_the_probability_of_yes_from_logprobs() -> None:
    p_yes = {"worst answer": 0.2, "best answer": 0.9, "fine answer": 0.6}

    def logprobs(body: dict[str, Any], text: str) -> dict[str, float]:
        response = next(r for r in p_yes if r in body["messages"][-1]["content"])
        return {"yes": math.log(p_yes[response]), "no": math.log(1 - p_yes[response])}

    replies = {"p1": "worst answer", "p2": "best answer", "p3": "fine answer", "j": "no"}
    with LoopbackServer(responder=scripted(replies), logprobs=logprobs) as server:
        recipe = loopback_recipe(server, layers({"model": "openai/j"}, mode="pointwise", top_k=2))
        result = await moa.run("Q", recipe, api_key="k")
        judged = server.completions("j")
    assert len(judged) == 3
    expected = [pointwise_messages(None, "Q", text) for text in p_yes]
    assert sorted(map(str, (r.messages for r in judged))) == sorted(map(str, expected))
    scores = [c.score for c in result.layers[1].considered]
    assert scores == pytest.approx([0.2, 0.9, 0.6], abs=1e-6)  # the text ("no") is not used
    assert [c.text for c in result.layers[1].candidates] == ["best answer", "fine answer"]


async def test_without_logprobs_the_verdict_is_read_from_the_text(script: Any) -> None:
    def judge(messages: list[dict[str, Any]]) -> str:
        return "Yes." if "best" in messages[-1]["content"] else "no"

    server = script({"p1": "worst answer", "p2": "best answer", "j": judge})
    rank = {"mode": "pointwise", "logprobs": False}
    result = await moa.run(
        "Q", loopback_recipe(server, layers({"model": "openai/j"}, proposers=2, **rank)), api_key="k"
    )
    assert all(r.body and "logprobs" not in r.body for r in server.completions("j"))
    assert [c.score for c in result.layers[1].considered] == [0.0, 1.0]
    assert result.layers[1].candidates[0].text == "best answer"


async def test_a_failed_or_unreadable_verdict_is_no_information_and_the_run_goes_on(script: Any) -> None:
    server = script({"p1": "worst answer", "p2": "best answer", "j": "maybe"})
    server.add_fault("400", times=1, model="j")
    result = await moa.run("Q", loopback_recipe(server, layers({"model": "openai/j"}, proposers=2)), api_key="k")
    rank = result.layers[1]
    assert len(rank.outputs) == 2 and sum(not o.ok for o in rank.outputs) == 1
    assert [c.score for c in rank.considered] == [0.0, 0.0]  # 0.5 each way: no information
    assert result.output.startswith("agg says hi")


async def test_one_candidate_needs_no_judge(script: Any) -> None:
    server = script({"j": "A"})
    result = await moa.run("Q", loopback_recipe(server, layers({"model": "openai/j"}, proposers=1)), api_key="k")
    assert server.completions("j") == [] and len(result.layers[1].candidates) == 1
