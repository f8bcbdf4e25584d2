"""Integration: real litellm over real HTTP to the loopback server."""

from __future__ import annotations

import pytest
from conftest import agents, loopback_recipe

import moa
from moa.testing import LoopbackServer


def moa_lite(server: LoopbackServer, **fields: object) -> dict[str, object]:
    return loopback_recipe(
        server,
        [
            {
                "kind": "propose",
                "agents": agents("openai/gpt-4o-mini", "openai/p1", "openai/p2"),
                **fields.pop("first", {}),
            },  # type: ignore[dict-item]
            {"kind": "aggregate", "agents": agents("openai/gpt-4o-mini")},
        ],
        **fields,
    )


async def test_moa_over_http_sends_the_exact_messages(loopback: LoopbackServer) -> None:
    conversation = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    result = await moa.run(conversation, moa_lite(loopback), api_key="sk-loopback")
    sent = loopback.completions()
    assert len(sent) == 4
    proposers = [r for r in sent if r.messages[0]["content"] == "Answer briefly."]
    assert len(proposers) == 3 and all(r.messages == conversation for r in proposers)
    final = next(r for r in sent if r not in proposers)
    expected = "\n".join(f"{i + 1}. {o.text}" for i, o in enumerate(result.layers[0].outputs))
    assert final.messages[0]["content"].startswith("Answer briefly.\n\nSeveral AI assistants")
    assert final.messages[0]["content"].endswith("Answers from the assistants:\n" + expected)
    assert final.messages[1:] == conversation[1:]
    assert result.output.startswith("gpt-4o-mini reply ")
    assert result.usage.completion_tokens > 0 and result.usage.prompt_tokens > 0
    assert all(r.headers.get("authorization") == "Bearer sk-loopback" for r in sent)


async def test_priced_model_has_a_cost_and_unknown_model_is_none(loopback: LoopbackServer) -> None:
    recipe = loopback_recipe(loopback, [{"kind": "propose", "agents": agents("openai/gpt-4o-mini")}])
    priced = await moa.run("Q", recipe, api_key="k")
    assert priced.cost_usd is not None and priced.cost_usd > 0
    recipe = loopback_recipe(loopback, [{"kind": "propose", "agents": agents("openai/not-a-real-model")}])
    unknown = await moa.run("Q", recipe, api_key="k")
    assert unknown.cost_usd is None and unknown.unpriced_models == ["openai/not-a-real-model"]
    assert unknown.layers[0].outputs[0].cost_usd is None


async def test_429_with_retry_after_is_retried(loopback: LoopbackServer) -> None:
    loopback.add_fault("429", times=2, model="p1", retry_after=0.2)
    events: list[moa.Event] = []
    result = await moa.run("Q", moa_lite(loopback), api_key="k", on_event=events.append)
    assert result.layers[0].outputs[1].attempts == 3
    assert len(loopback.completions("p1")) == 3
    delays = [e.delay_s for e in events if e.kind == "call_retried"]
    assert delays == [pytest.approx(0.2), pytest.approx(0.2)]


@pytest.mark.parametrize("fault", ["500", "503", "reset"])
async def test_transient_server_faults_are_retried(loopback: LoopbackServer, fault: str) -> None:
    loopback.add_fault(fault, times=1, model="p2")
    result = await moa.run("Q", moa_lite(loopback), api_key="k")
    assert result.layers[0].outputs[2].attempts == 2 and result.layers[0].outputs[2].ok
    assert len(loopback.completions("p2")) == 2


PERMANENT = [
    ("400", "RequestRejectedError"),
    ("401", "RequestRejectedError"),
    ("404", "RequestRejectedError"),
    ("empty", "BadResponseError"),
]


@pytest.mark.parametrize(("fault", "error"), PERMANENT)
async def test_permanent_faults_are_not_retried(loopback: LoopbackServer, fault: str, error: str) -> None:
    loopback.add_fault(fault, times=5, model="p1")
    result = await moa.run("Q", moa_lite(loopback, first={"min_success": 2}), api_key="k")
    failed = result.layers[0].outputs[1]
    assert failed.error is not None and failed.error.type == error
    assert failed.attempts == 1 and len(loopback.completions("p1")) == 1
    assert "layer 1, agent 1 (openai/p1)" in failed.error.message
    assert result.output  # the quorum held, the aggregator answered


async def test_hang_times_out_and_is_retried(loopback: LoopbackServer) -> None:
    loopback.add_fault("hang", times=1, model="p1")
    recipe = moa_lite(loopback, defaults={"timeout": 0.5})
    result = await moa.run("Q", recipe, api_key="k")
    assert result.layers[0].outputs[1].attempts == 2 and result.layers[0].outputs[1].ok


async def test_hang_past_every_attempt_fails_the_quorum_with_a_timeout(loopback: LoopbackServer) -> None:
    loopback.add_fault("hang", times=10, model="p1")
    recipe = moa_lite(loopback, defaults={"timeout": 0.3}, retry={"max_attempts": 2})
    with pytest.raises(moa.QuorumError) as info:
        await moa.run("Q", recipe, api_key="k")
    assert isinstance(info.value.failures[0], moa.CallTimeoutError)
    assert "model openai/p1" in str(info.value) and "no answer within 0.3 s" in str(info.value)


async def test_malformed_body_is_retried_then_reported(loopback: LoopbackServer) -> None:
    # litellm reports a non-JSON body as a 500 (typically a proxy's HTML error page): transient.
    loopback.add_fault("malformed", times=10, model="p1")
    recipe = moa_lite(loopback, first={"min_success": 2}, retry={"max_attempts": 2})
    result = await moa.run("Q", recipe, api_key="k")
    failed = result.layers[0].outputs[1]
    assert failed.error is not None and failed.error.type == "ProviderUnavailableError"
    assert failed.attempts == 2 and len(loopback.completions("p1")) == 2


async def test_streaming_final_answer_over_http(loopback: LoopbackServer) -> None:
    tokens: list[str] = []
    result = await moa.run("Q", moa_lite(loopback), api_key="k", on_token=tokens.append)
    assert len(tokens) > 3 and "".join(tokens) == result.output
    final = result.layers[-1].outputs[0]
    assert final.usage.completion_tokens == len(result.output.split())
    assert [r.body.get("stream") for r in loopback.completions()].count(True) == 1


async def test_api_key_never_appears_in_results_or_errors(loopback: LoopbackServer) -> None:
    secret = "sk-moa-test-SECRET-0123456789"
    loopback.add_fault("401", times=10, model="p1")
    with pytest.raises(moa.QuorumError) as info:
        await moa.run("Q", moa_lite(loopback), api_key=secret)
    assert secret not in str(info.value)
    assert secret not in info.value.partial.model_dump_json()
    result = await moa.run("Q", moa_lite(loopback, first={"min_success": 2}), api_key=secret)
    assert secret not in result.model_dump_json()
