"""`vote` (self-consistency) through real litellm and the loopback server."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import agents, loopback_recipe

import moa
from moa._stages.vote import extractor_messages


def recipe(server: Any, proposers: list[dict[str, Any]], **vote: Any) -> dict[str, Any]:
    layers = [{"kind": "propose", "agents": proposers}, {"kind": "vote", **vote}]
    return loopback_recipe(server, layers)


async def test_majority_after_extraction_with_votes_in_the_trace(script: Any) -> None:
    replies = {"p1": "It is 42.", "p2": "41", "p3": "Answer: 42", "p4": "forty-something", "p5": "6*7 gives 42"}
    server = script(replies)
    proposers = agents(*(f"openai/p{i}" for i in range(1, 6)))
    result = await moa.run("What is six times seven?", recipe(server, proposers, extract="number"), api_key="k")
    assert len(server.completions()) == 5  # the vote makes no call
    assert result.output == "It is 42."  # the first candidate of the winning answer
    vote = result.layers[1]
    assert vote.outputs == [] and [(c.text, c.votes) for c in vote.candidates] == [("It is 42.", 3)]
    assert [(c.answer, c.votes) for c in vote.considered] == [("42", 3), ("41", 1), ("42", 3), (None, 0), ("42", 3)]


async def test_a_tie_goes_to_the_answer_given_first_or_passes_every_tied_answer(script: Any) -> None:
    server = script({"p1": "Lyon", "p2": "Paris.", "p3": "lyon!", "p4": "The city is Paris"})
    proposers = agents(*(f"openai/p{i}" for i in range(1, 5)))
    first = await moa.run("Which city?", recipe(server, proposers), api_key="k")
    assert first.output == "Lyon" and first.layers[1].candidates[0].votes == 2

    layers = [
        {"kind": "propose", "agents": proposers},
        {"kind": "vote", "ties": "all"},
        {"kind": "aggregate", "agents": agents("openai/agg")},
    ]
    server.clear()
    every = await moa.run("Which city?", loopback_recipe(server, layers), api_key="k")
    assert [c.text for c in every.layers[1].candidates] == ["Lyon", "Paris."]
    (aggregator,) = server.completions("agg")
    assert aggregator.messages[0]["content"].endswith("Answers from the assistants:\n1. Lyon\n2. Paris.")


async def test_an_answer_cut_by_max_tokens_does_not_vote(script: Any) -> None:
    # Counted, the cut answer ("5") would tie 5 with 9, and 5 (given first) would win.
    server = script({"p1": "5 and then 9", "p2": "5", "p3": "9", "p4": "9"})
    proposers = [{"model": "openai/p1", "max_tokens": 1}, *agents("openai/p2", "openai/p3", "openai/p4")]
    result = await moa.run("Q", recipe(server, proposers, extract="number"), api_key="k")
    cut = result.layers[1].considered[0]
    assert cut.text == "5" and cut.finish_reason == "length" and cut.answer is None and cut.votes == 0
    assert result.output == "9" and result.layers[1].candidates[0].votes == 2


async def test_no_answer_extracted_passes_the_first_candidate_on(script: Any) -> None:
    server = script({"p1": "no idea", "p2": "none at all"})
    result = await moa.run("Q", recipe(server, agents("openai/p1", "openai/p2"), extract="number"), api_key="k")
    assert result.output == "no idea"
    assert [c.answer for c in result.layers[1].considered] == [None, None]


async def test_regex_extraction_folds_case_and_spacing(script: Any) -> None:
    server = script({"p1": "Reasoning...\nFINAL: Blue  Whale", "p2": "final: blue whale.", "p3": "FINAL: shark"})
    vote = {"extract": "regex", "pattern": r"(?i)final:\s*(.+)"}
    result = await moa.run("Q", recipe(server, agents("openai/p1", "openai/p2", "openai/p3"), **vote), api_key="k")
    assert [c.answer for c in result.layers[1].considered] == ["blue whale", "blue whale", "shark"]
    assert result.output.endswith("Blue  Whale")


async def test_llm_extractor_gets_each_answer_with_the_question_and_failures_do_not_vote(script: Any) -> None:
    def extractor(messages: list[dict[str, Any]]) -> str:
        shown = messages[-1]["content"]
        return "NONE" if "shrug" in shown else ("Paris" if "Paris" in shown or "capital" in shown else "Rome")

    replies = {
        "p1": "The capital is Paris.", "p2": "I'd say Rome", "p3": "shrug", "p4": "its capital, of course",
        "p5": "Paris!",
    }  # fmt: skip
    server = script({**replies, "x": extractor})
    server.add_fault("400", times=1, model="x")  # one extraction fails: that candidate has no vote
    proposers = agents(*(f"openai/p{i}" for i in range(1, 6)))
    vote = {"extract": "llm", "extractor": {"model": "openai/x"}}
    result = await moa.run("Capital of France?", recipe(server, proposers, **vote), api_key="k")
    sent = server.completions("x")
    assert len(sent) == 5 and len(server.completions()) == 10
    texts = list(replies.values())
    assert sorted(str(r.messages) for r in sent) == sorted(
        str(extractor_messages("Capital of France?", t)) for t in texts
    )
    assert all(r.body and r.body["temperature"] == 0.0 and r.body["max_tokens"] == 32 for r in sent)
    considered = result.layers[1].considered
    assert considered[2].answer is None  # the extractor said NONE
    assert sum(c.answer is None for c in considered) == 2  # ...and one extraction failed
    assert len(result.layers[1].outputs) == 5 and sum(not o.ok for o in result.layers[1].outputs) == 1
    assert result.layers[1].candidates[0].answer == "paris" and result.layers[1].candidates[0].votes >= 2


def test_vote_fields_are_checked() -> None:
    base = {"name": "v", "layers": [{"kind": "propose", "agents": [{"model": "openai/a"}]}]}
    for fields, words in [
        ({"extract": "regex"}, "`pattern` is needed"),
        ({"pattern": "x"}, "`pattern` is needed with `extract: regex`, and only then"),
        ({"extract": "regex", "pattern": "("}, "does not compile"),
        ({"extract": "llm"}, "`extractor` is needed"),
        ({"extract": "vibes"}, "layers[1].extract"),
        ({"ties": "random"}, "layers[1].ties"),
    ]:
        with pytest.raises(moa.RecipeError) as info:
            moa.load_recipe({**base, "layers": [*base["layers"], {"kind": "vote", **fields}]})
        assert words in str(info.value), fields
