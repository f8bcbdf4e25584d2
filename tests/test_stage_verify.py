"""`verify` (validators as closure conditions; repair; escalation) through real litellm and the loopback server."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from conftest import agents, loopback_recipe

import moa
from moa._stages.checks import llm_messages
from moa._stages.verify import REPAIR

ANSWER_LINE = {"type": "regex", "pattern": r"(?m)^Answer: \S"}


def is_even(answer: str, question: str) -> tuple[bool, str]:
    """A Python check, named as `test_stage_verify:is_even` in recipes."""
    number = int(answer.split()[-1])
    return (True, "") if number % 2 == 0 else (False, f"{number} is odd")


def explodes(answer: str, question: str) -> bool:
    raise RuntimeError("the checker itself broke")


def recipe(server: Any, verify: dict[str, Any], proposers: tuple[str, ...] = ("openai/p1",), **fields: Any) -> Any:
    layers = [{"kind": "propose", "agents": agents(*proposers)}, {"kind": "verify", **verify}]
    return loopback_recipe(server, layers, **fields)


async def test_failing_candidates_are_dropped_and_every_verdict_is_in_the_trace(script: Any) -> None:
    server = script({"p1": "Answer: 4", "p2": "I think 6", "p3": "Answer: 7", "agg": "fused"})
    checks = [ANSWER_LINE, {"type": "python", "function": "test_stage_verify:is_even"}]
    layers = [
        {"kind": "propose", "agents": agents("openai/p1", "openai/p2", "openai/p3")},
        {"kind": "verify", "checks": checks},
        {"kind": "aggregate", "agents": agents("openai/agg")},
    ]
    result = await moa.run("Q", loopback_recipe(server, layers), api_key="k")
    verify = result.layers[1]
    assert verify.outputs == [] and [c.text for c in verify.candidates] == ["Answer: 4"]
    verdicts = [[(v.check, v.passed, v.message) for v in c.verdicts] for c in verify.considered]
    assert verdicts == [
        [("regex", True, ""), ("python", True, "")],
        [("regex", False, "the answer does not match the pattern '(?m)^Answer: \\\\S'"), ("python", True, "")],
        [("regex", True, ""), ("python", False, "7 is odd")],
    ]
    (aggregator,) = server.completions("agg")
    assert aggregator.messages[0]["content"].endswith("Answers from the assistants:\n1. Answer: 4")


async def test_json_schema_reads_the_document_in_the_answer(script: Any) -> None:
    schema = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
    server = script({"p1": 'Sure: ```json\n{"city": "Oslo"}\n```', "p2": '{"town": "Oslo"}', "p3": "no json"})
    verify = {"checks": [{"type": "json_schema", "json_schema": schema}]}
    result = await moa.run("Q", recipe(server, verify, ("openai/p1", "openai/p2", "openai/p3")), api_key="k")
    messages = [c.verdicts[0].message for c in result.layers[1].considered]
    assert messages == ["", "at /: 'city' is a required property", "the answer holds no JSON document"]
    assert json.loads(result.output.split("```json\n")[1].split("```")[0]) == {"city": "Oslo"}


async def test_a_failed_answer_goes_back_to_its_writer_with_the_failed_checks(script: Any) -> None:
    def writer(messages: list[dict[str, Any]]) -> str:
        return "Answer: 8" if messages[-1]["content"].startswith("Your answer did not pass") else "eight, I think"

    server = script({"p1": writer})
    verify = {"checks": [ANSWER_LINE], "repairs": 2}
    result = await moa.run("How many legs has a spider?", recipe(server, verify), api_key="k")
    _, repair = server.completions("p1")
    failures = "- regex: the answer does not match the pattern '(?m)^Answer: \\\\S'"
    assert repair.messages == [
        {"role": "user", "content": "How many legs has a spider?"},
        {"role": "assistant", "content": "eight, I think"},
        {"role": "user", "content": REPAIR.format(failures=failures)},
    ]
    assert result.output == "Answer: 8"
    (call,) = result.layers[1].outputs  # recorded in the verify layer, after its own agents
    assert (call.layer, call.agent, call.name, call.model) == (2, 0, "openai/p1 (repair)", "openai/p1")
    assert [c.text for c in result.layers[1].considered] == ["eight, I think", "Answer: 8"]


async def test_repairs_run_out_then_the_fallback_answers_and_passes(script: Any) -> None:
    server = script({"p1": "never right", "fixer": "still wrong", "strong": "Answer: 12"})
    verify = {
        "checks": [ANSWER_LINE],
        "repairs": 2,
        "repair_with": {"model": "openai/fixer", "system": "Fix answers."},
        "fallback": agents("openai/strong"),
    }
    result = await moa.run("Q", recipe(server, verify), api_key="k")
    assert len(server.completions("fixer")) == 2 and len(server.completions("strong")) == 1
    second_repair = server.completions("fixer")[1]
    assert second_repair.messages[0] == {"role": "system", "content": "Fix answers."}
    assert second_repair.messages[2] == {"role": "assistant", "content": "still wrong"}  # the latest attempt
    strong = server.completions("strong")[0]
    assert strong.messages == [{"role": "user", "content": "Q"}]  # the fallback answers afresh
    assert result.output == "Answer: 12" and len(result.layers[1].considered) == 4
    assert moa.plan(recipe(server, verify))[1].calls == 3  # at most: 2 repairs, 1 fallback


async def test_nothing_passing_raises_verification_error_with_the_partial_trace(script: Any) -> None:
    server = script({"p1": "no", "strong": "still no"})
    verify = {"checks": [ANSWER_LINE], "repairs": 1, "fallback": agents("openai/strong")}
    with pytest.raises(moa.VerificationError) as info:
        await moa.run("Q", recipe(server, verify), api_key="k")
    error = info.value
    assert isinstance(error, moa.RunError) and error.layer == 2 and len(error.failures) == 3
    assert "layer 2 (verify): none of the 3 answers checked passed" in str(error)
    assert "\n  the answer of layer 1, openai/p1:\n  - regex: the answer does not match" in str(error)
    assert "\n  repair 1 by openai/p1 (repair):\n  - regex:" in str(error)
    assert "\n  fallback openai/strong:\n  - regex:" in str(error)
    partial = error.partial
    assert [len(layer.outputs) for layer in partial.layers] == [1, 2]  # proposer; repair and fallback
    assert all(not v.passed for c in partial.layers[1].considered for v in c.verdicts)
    assert partial.usage.completion_tokens > 0 and partial.output == ""


async def test_with_if_none_pass_last_the_last_answer_goes_on_with_its_failed_verdicts(script: Any) -> None:
    server = script({"p1": "no", "strong": "still no"})
    verify = {"checks": [ANSWER_LINE], "fallback": agents("openai/strong"), "if_none_pass": "last"}
    result = await moa.run("Q", recipe(server, verify), api_key="k")
    assert result.output == "still no" and not result.layers[1].candidates[0].verdicts[0].passed


async def test_without_repairs_or_fallback_nothing_passing_is_an_error_at_once(script: Any) -> None:
    server = script({"p1": "no", "p2": "nope"})
    with pytest.raises(moa.VerificationError) as info:
        await moa.run("Q", recipe(server, {"checks": [ANSWER_LINE]}, ("openai/p1", "openai/p2")), api_key="k")
    assert len(server.completions()) == 2 and len(info.value.failures) == 2


async def test_llm_check_asks_the_judge_the_criterion_and_reads_its_verdict() -> None:
    from conftest import scripted

    from moa.testing import LoopbackServer

    def logprobs(body: dict[str, Any], text: str) -> dict[str, float]:
        good = "Answer: 9" in body["messages"][-1]["content"]
        return {"yes": math.log(0.8 if good else 0.3), "no": math.log(0.2 if good else 0.7)}

    judge_check = {"type": "llm", "judge": {"model": "openai/j"}, "criterion": "The answer is a square number."}
    with LoopbackServer(responder=scripted({"p1": "Answer: 9", "p2": "Answer: 10"}), logprobs=logprobs) as server:
        verify = {"checks": [judge_check], "keep": "first"}
        proposers = ("openai/p1", "openai/p2")
        result = await moa.run("Q", recipe(server, verify, proposers), api_key="k")
        judged = server.completions("j")
    check = moa.load_recipe(recipe(server, verify, proposers)).layers[1].checks[0]
    assert sorted(map(str, (r.messages for r in judged))) == sorted(
        str(llm_messages(check, "Q", text)) for text in ("Answer: 9", "Answer: 10")
    )
    assert result.output == "Answer: 9"
    assert [c.verdicts[0].passed for c in result.layers[1].considered] == [True, False]
    assert result.layers[1].considered[1].verdicts[0].message == "the judge says no: The answer is a square number."


async def test_a_failed_judge_call_or_a_broken_python_check_is_a_failed_check(script: Any) -> None:
    server = script({"p1": "Answer: 3"})
    server.add_fault("400", times=1, model="j")
    checks = [{"type": "llm", "judge": {"model": "openai/j"}, "criterion": "ok"}]
    with pytest.raises(moa.VerificationError) as info:
        await moa.run("Q", recipe(server, {"checks": checks}), api_key="k")
    assert "- llm: the judge could not be asked (RequestRejectedError:" in str(info.value)
    with pytest.raises(moa.VerificationError) as info:
        await moa.run("Q", recipe(server, {"checks": [{"type": "python", "function": "test_stage_verify:explodes"}]}),
                      api_key="k")  # fmt: skip
    assert "- python: test_stage_verify:explodes raised RuntimeError: the checker itself broke" in str(info.value)


async def test_the_budget_reserves_every_repair_and_escalation_and_a_loop_never_passes_it(script: Any) -> None:
    def mini(messages: list[dict[str, Any]]) -> str:
        if messages[0]["content"].startswith("You check whether"):  # judging
            return "yes" if "Answer: 1" in messages[-1]["content"] else "no"
        return "no answer line"

    server = script({"gpt-4o-mini": mini, "gpt-4o": "Answer: 1"})
    verify = {
        "checks": [ANSWER_LINE, {"type": "llm", "judge": {"model": "openai/gpt-4o-mini"}, "criterion": "right"}],
        "repairs": 2,
        "fallback": agents("openai/gpt-4o"),
    }
    spec = recipe(server, verify, ("openai/gpt-4o-mini",), defaults={"max_tokens": 50})
    plans = moa.plan(spec, "Q")
    worst = sum(p.worst_case_usd or 0 for p in plans)
    assert plans[1].calls == 4 + 2 + 1  # a verdict per answer (1 + 2 repairs + 1 fallback), repairs, fallback
    with pytest.raises(moa.BudgetExceeded, match="not started"):
        await moa.run("Q", spec, api_key="k", max_cost_usd=worst * 0.999)
    assert server.completions() == []  # refused before any call
    result = await moa.run("Q", spec, api_key="k", max_cost_usd=worst)
    assert len(server.completions("gpt-4o")) == 1 and len(server.completions("gpt-4o-mini")) == 1 + 2 + 4
    assert result.cost_usd is not None and 0 < result.cost_usd <= worst


async def test_the_deadline_holds_inside_the_escalation(script: Any) -> None:
    server = script({"p1": "no", "slow": "Answer: 1"}, latency_by_model={"slow": 120.0})
    verify = {"checks": [ANSWER_LINE], "repairs": 1, "fallback": agents("openai/slow")}
    with pytest.raises(moa.DeadlineExceeded) as info:
        await moa.run("Q", recipe(server, verify), api_key="k", deadline_s=5)
    verify_layer = info.value.partial.layers[1]
    assert [o.name for o in verify_layer.outputs] == ["openai/p1 (repair)"]  # the fallback was cancelled
    assert len(server.completions("slow")) == 1


def test_verify_fields_are_checked() -> None:
    base = [{"kind": "propose", "agents": [{"model": "openai/a"}]}]
    for verify, words in [
        ({"checks": []}, "layers[1].checks"),
        ({"checks": [{"type": "regex", "pattern": "("}]}, "layers[1].checks[0].pattern: does not compile"),
        ({"checks": [{"type": "shell", "cmd": "x"}]}, "layers[1].checks[0].type: unknown type 'shell'"),
        ({"checks": [{"pattern": "x"}]}, "`type` is missing"),
        ({"checks": [{"type": "python", "function": "nosuchmodule:f"}]}, "module 'nosuchmodule' cannot be imported"),
        ({"checks": [{"type": "python", "function": "json:nope"}]}, "'json' has no function 'nope'"),
        ({"checks": [{"type": "python", "function": "json.loads"}]}, "is not `module:function`"),
        ({"checks": [{"type": "json_schema", "json_schema": {"type": 5}}]}, "is not a valid JSON Schema"),
        ({"checks": [ANSWER_LINE], "fallback": [{"model": "openai/b", "n": 2}]}, "`n` must be 1"),
        ({"checks": [ANSWER_LINE], "repairs": 11}, "layers[1].repairs"),
    ]:
        with pytest.raises(moa.RecipeError) as info:
            moa.load_recipe({"name": "v", "layers": [*base, {"kind": "verify", **verify}]})
        assert words in str(info.value), (verify, str(info.value))
