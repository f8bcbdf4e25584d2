"""`verify` with an `agree` check (agreement of independent candidates as the closure condition), through real
litellm and the loopback server: who counts as independent, escalation, the confidence a result reports."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from conftest import agents, loopback_recipe, scripted

import moa
from moa.cli import main
from moa.testing import LoopbackServer

AGREE = {"type": "agree"}


def recipe(server: Any, proposers: list[dict[str, Any]], verify: dict[str, Any]) -> Any:
    return loopback_recipe(server, [{"kind": "propose", "agents": proposers}, {"kind": "verify", **verify}])


async def test_an_answer_two_agents_give_passes_and_one_alone_does_not(script: Any) -> None:
    server = script({"p1": "12 / 4 = 3, and 3 + 9 = 12.", "p2": "Answer: 12.0", "p3": "It is 13."})
    verify = {"checks": [AGREE], "keep": "first"}
    result = await moa.run("Q", recipe(server, agents("openai/p1", "openai/p2", "openai/p3"), verify), api_key="k")
    considered = result.layers[1].considered
    assert [(c.agreement, c.verdicts[0].passed, c.verdicts[0].message) for c in considered] == [
        (2, True, ""),
        (2, True, ""),
        (1, False, "1 independent agent(s) gave '13', 2 needed (answers: '12' x2, '13' x1)"),
    ]
    assert result.output == "12 / 4 = 3, and 3 + 9 = 12."
    assert result.confidence == "verified"
    assert result.model_dump()["confidence"] == "verified"  # in the trace too
    assert len(server.requests) == 3  # agreement costs no call


async def test_samples_of_one_agent_count_once_then_a_fallback_that_agrees_settles_it(script: Any) -> None:
    server = script({"p1": "12", "p2": "13", "strong": "The answer is 13."})
    proposers = [{"model": "openai/p1", "n": 2}, {"model": "openai/p2"}]
    verify = {"checks": [AGREE], "fallback": agents("openai/strong"), "keep": "first"}
    result = await moa.run("How many?", recipe(server, proposers, verify), api_key="k")
    considered = result.layers[1].considered
    assert [(c.model, c.agreement, c.verdicts[0].passed) for c in considered] == [
        ("openai/p1", 1, False),  # p1 said 12 twice: one agent
        ("openai/p1", 1, False),
        ("openai/p2", 1, False),
        ("openai/strong", 2, True),  # the escalation agrees with p2
    ]
    assert result.output == "The answer is 13." and result.confidence == "verified"
    (fallback,) = server.completions("strong")
    assert fallback.messages == [{"role": "user", "content": "How many?"}]
    assert len(server.requests) == 4


async def test_counting_every_candidate_lets_samples_agree(script: Any) -> None:
    server = script({"p1": "12"})
    verify = {"checks": [{"type": "agree", "independent": "candidates"}], "keep": "first"}
    result = await moa.run("Q", recipe(server, [{"model": "openai/p1", "n": 2}], verify), api_key="k")
    assert [c.agreement for c in result.layers[1].considered] == [2, 2]
    assert result.confidence == "verified"


async def test_no_agreement_goes_on_marked_unverified_or_stops_the_run(script: Any) -> None:
    server = script({"p1": "12", "p2": "13"})
    proposers = agents("openai/p1", "openai/p2")
    result = await moa.run("Q", recipe(server, proposers, {"checks": [AGREE], "if_none_pass": "last"}), api_key="k")
    assert result.output == "13" and result.confidence == "unverified"
    with pytest.raises(moa.VerificationError) as info:
        await moa.run("Q", recipe(server, proposers, {"checks": [AGREE]}), api_key="k")
    assert str(info.value) == (
        "layer 2 (verify): none of the 2 answers checked passed\n"
        "  the answer of layer 1, openai/p1:\n"
        "  - agree: 1 independent agent(s) gave '12', 2 needed (answers: '12' x1, '13' x1)\n"
        "  the answer of layer 1, openai/p2:\n"
        "  - agree: 1 independent agent(s) gave '13', 2 needed (answers: '12' x1, '13' x1)"
    )


async def test_an_answer_cut_by_max_tokens_or_without_one_never_agrees(script: Any) -> None:
    server = script({"p1": "First 12, then 40 and", "p2": "12", "p3": "no idea"})
    verify = {"checks": [AGREE], "if_none_pass": "last"}
    proposers = [{"model": "openai/p1", "max_tokens": 3}, *agents("openai/p2", "openai/p3")]  # p1: "First 12, then"
    result = await moa.run("Q", recipe(server, proposers, verify), api_key="k")
    found = [(c.agreement, c.verdicts[0].message) for c in result.layers[1].considered]
    assert found == [
        (None, "no answer could be read from it"),
        (1, "1 independent agent(s) gave '12', 2 needed (answers: '12' x1)"),
        (None, "no answer could be read from it"),
    ]


async def test_answers_compare_as_the_check_extracts_them(script: Any) -> None:
    server = script({"p1": "Final: Paris!", "p2": "final: paris", "p3": "Final: Rome"})
    check = {"type": "agree", "extract": "regex", "pattern": r"(?i)final:\s*(\w+)"}
    proposers = agents("openai/p1", "openai/p2", "openai/p3")
    result = await moa.run("Q", recipe(server, proposers, {"checks": [check]}), api_key="k")
    assert [c.text for c in result.layers[1].candidates] == ["Final: Paris!", "final: paris"]


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ({"type": "agree", "k": 1}, ".k: Input should be greater than or equal to 2 (got 1)"),
        ({"type": "agree", "extract": "regex"}, ": `pattern` is needed with `extract: regex`, and only then"),
        ({"type": "agree", "pattern": "("}, ".pattern: does not compile: missing ), unterminated subpattern"),
        ({"type": "agree", "independent": "models"}, ".independent: Input should be 'agents' or 'candidates'"),
    ],
)
def test_a_bad_agree_check_is_refused_naming_the_field(check: dict[str, Any], message: str) -> None:
    layers = [{"kind": "propose", "agents": agents("openai/p1")}, {"kind": "verify", "checks": [check]}]
    with pytest.raises(moa.RecipeError) as info:
        moa.load_recipe({"name": "r", "layers": layers})
    assert str(info.value).startswith("invalid recipe <dict>:\n  layers[1].checks[0]" + message)


def test_moa_eval_qa_reports_how_many_answers_were_verified_and_how_many_of_those_were_right(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:

    # q1: both agree on the right 12; q2: both agree on a wrong 5; q3: they disagree, the second goes on (right).
    answers = {"Question 1?": ("12", "12"), "Question 2?": ("5", "5"), "Question 3?": ("8", "9")}
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{n}", "prompt": f"Question {n}?", "answers": [a]}) + "\n"
                            for n, a in ((1, 12), (2, 6), (3, 9))))  # fmt: skip

    def first(messages: list[dict[str, Any]]) -> str:
        return answers[messages[-1]["content"]][0]

    def second(messages: list[dict[str, Any]]) -> str:
        return answers[messages[-1]["content"]][1]

    with LoopbackServer(responder=scripted({"p1": first, "p2": second})) as server:
        layers = [
            {"kind": "propose", "agents": agents("openai/p1", "openai/p2")},
            {"kind": "verify", "checks": [AGREE], "keep": "first", "if_none_pass": "last"},
        ]
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(loopback_recipe(server, layers, name="agreeing")))
        out = tmp_path / "out"
        assert main(["eval", "qa", "--recipe", str(path), "--data", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "agreeing: accuracy 66.7% (2/3), scored by last-number\n" in printed
    assert "agreeing: answers 2 verified (1 right, 50.0%), 1 unverified (1 right, 100.0%)\n" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["confidence"] == {
        "verified": {"answers": 2, "correct": 1, "accuracy": 50.0},
        "unverified": {"answers": 1, "correct": 1, "accuracy": 100.0},
        "unchecked": 0,
    }
    rows = [json.loads(line) for line in (out / "qa_results.jsonl").read_text().splitlines()]
    assert [r["confidence"] for r in rows] == ["verified", "verified", "unverified"]
