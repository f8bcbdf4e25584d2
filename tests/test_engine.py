"""The engine with the in-process fake: exact messages, call counts, quorum, events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import moa
from moa import Completion, RateLimitedError, RequestRejectedError
from moa.testing import FakeProvider

PROPOSERS = ["openai/p0", "openai/p1", "openai/p2"]


def three_layer(**extra: Any) -> dict[str, Any]:
    return {
        "name": "three",
        "retry": {"initial_backoff_s": 0, "max_backoff_s": 0},
        "layers": [
            {"kind": "propose", "agents": [{"model": m} for m in PROPOSERS], **extra.get("first", {})},
            {"kind": "aggregate", "agents": [{"model": m} for m in PROPOSERS]},
            {"kind": "aggregate", "agents": [{"model": "openai/final"}]},
        ],
    }


def by_text(request: moa.Request, index: int) -> str:
    """Each answer names its model and the layer it can infer from the system message."""
    system = request.messages[0]["content"] if request.messages[0]["role"] == "system" else ""
    layer = 1 + system.count("Answers from the assistants:")
    depth = "L3" if "L2" in system else ("L2" if layer == 2 else "L1")
    return f"{depth}:{request.model}"


async def test_aggregators_receive_exactly_the_previous_layers_outputs() -> None:
    fake = FakeProvider(by_text)
    result = await moa.run("What is a CRDT?", three_layer(), provider=fake)

    assert len(fake.requests) == 7  # 3 + 3 + 1, paper counting
    first = [r for r in fake.requests if r.system is None]
    assert sorted(r.model for r in first) == sorted(PROPOSERS)
    for request in first:
        assert request.messages == [{"role": "user", "content": "What is a CRDT?"}]

    expected_l2 = "\n".join(f"{i + 1}. L1:{m}" for i, m in enumerate(PROPOSERS))
    second = [r for r in fake.requests if r.system and "L1:" in r.system]
    assert len(second) == 3
    for request in second:
        assert request.system is not None and request.system.endswith("Answers from the assistants:\n" + expected_l2)
        assert request.messages[1:] == [{"role": "user", "content": "What is a CRDT?"}]

    final = fake.to_model("openai/final")
    assert len(final) == 1
    expected_l3 = "\n".join(f"{i + 1}. L2:{m}" for i, m in enumerate(PROPOSERS))
    assert final[0].system is not None and final[0].system.endswith(expected_l3)

    assert result.output == "L3:openai/final"
    assert [len(layer.outputs) for layer in result.layers] == [3, 3, 1]
    assert result.layers[0].outputs[2].model == "openai/p2" and result.layers[0].outputs[2].text == "L1:openai/p2"
    assert result.layers[2].outputs[0].messages == final[0].messages


async def test_multi_turn_conversation_keeps_turns_and_system_message() -> None:
    fake = FakeProvider(by_text)
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another?"},
    ]
    await moa.run(conversation, three_layer(), provider=fake)
    for request in fake.requests:
        assert request.messages[1:] == conversation[1:]
        assert request.system is not None and request.system.startswith("You are terse.")
    final = fake.to_model("openai/final")[0]
    assert final.system is not None and final.system.startswith("You are terse.\n\nSeveral AI assistants")


async def test_usage_cost_and_json_trace() -> None:
    def priced(request: moa.Request, index: int) -> Completion:
        return Completion(f"answer {index}", prompt_tokens=10, completion_tokens=5, cost_usd=0.001)

    result = await moa.run("Q", three_layer(), provider=FakeProvider(priced))
    assert result.usage.prompt_tokens == 70 and result.usage.completion_tokens == 35
    assert result.cost_usd == pytest.approx(0.007)
    dumped = result.model_dump(mode="json")
    assert dumped["usage"]["total_tokens"] == 105
    assert dumped["layers"][1]["outputs"][0]["messages"][0]["role"] == "system"
    assert moa.MoAResult.model_validate_json(result.model_dump_json()).output == result.output


async def test_unknown_price_makes_total_cost_unknown() -> None:
    def half_priced(request: moa.Request, index: int) -> Completion:
        cost = None if request.model == "openai/p1" else 0.001
        return Completion("x", prompt_tokens=1, completion_tokens=1, cost_usd=cost)

    result = await moa.run("Q", three_layer(), provider=FakeProvider(half_priced))
    assert result.cost_usd is None and result.unpriced_models == ["openai/p1"]


async def test_proposers_run_concurrently() -> None:
    fake = FakeProvider(delay_s=0.05)
    await moa.run("Q", three_layer(), provider=fake)
    assert fake.max_in_flight == 3


async def test_failed_agent_is_recorded_and_run_goes_on_when_quorum_holds() -> None:
    fake = FakeProvider(
        by_text,
        replies={"openai/p1": [RequestRejectedError("bad request", model="openai/p1", status_code=400), "ok"]},
    )
    result = await moa.run("Q", three_layer(first={"min_success": 2}), provider=fake)
    failed = result.layers[0].outputs[1]
    assert failed.text is None and failed.error is not None
    assert failed.error.type == "RequestRejectedError" and failed.error.status_code == 400
    assert "layer 1, agent 1 (openai/p1)" in failed.error.message
    assert failed.attempts == 1  # permanent errors are not retried
    second = [r for r in fake.requests if r.system and "L1:" in r.system]
    assert second[0].system is not None and second[0].system.endswith("1. L1:openai/p0\n2. L1:openai/p2")
    assert len(fake.to_model("openai/p1")) == 2  # once in layer 1 (failed), once in layer 2


async def test_quorum_error_names_layer_agents_and_causes() -> None:
    errors = {
        "openai/p1": [RequestRejectedError("unauthorized", model="openai/p1", status_code=401)],
        "openai/p2": [RequestRejectedError("not found", model="openai/p2", status_code=404)],
    }
    fake = FakeProvider(by_text, replies=errors)
    with pytest.raises(moa.QuorumError) as info:
        await moa.run("Q", three_layer(first={"min_success": 2}), provider=fake)
    err = info.value
    assert err.layer == 1 and err.needed == 2 and err.succeeded == 1
    text = str(err)
    assert "layer 1 failed: 1 of 3 calls succeeded, min_success is 2" in text
    assert "agent 1 (openai/p1)" in text and "unauthorized" in text
    assert "agent 2 (openai/p2)" in text and "not found" in text
    assert err.partial is not None and len(err.partial.layers) == 1
    assert not fake.to_model("openai/final")  # nothing after the failed layer


async def test_default_quorum_is_all_and_abandons_the_rest() -> None:
    fake = FakeProvider(by_text, replies={"openai/p0": [RequestRejectedError("nope", status_code=400)]}, delay_s=0.05)
    fake.replies["openai/p0"].insert(0, RequestRejectedError("nope", status_code=400))
    with pytest.raises(moa.QuorumError, match="min_success is 3") as info:
        await moa.run("Q", three_layer(), provider=fake)
    # p0 fails after its delay; p1 and p2 are still waiting, so they are abandoned.
    types = [o.error.type if o.error else None for o in info.value.outputs]
    assert types == ["RequestRejectedError", "Abandoned", "Abandoned"]


async def test_transient_failures_are_retried_and_attempts_recorded() -> None:
    flaky = {
        "openai/p0": [
            RateLimitedError("slow down", retry_after=0.0),
            RateLimitedError("slow down", retry_after=0.0),
            "fine",
        ]
    }
    fake = FakeProvider(by_text, replies=flaky)
    events: list[moa.Event] = []
    result = await moa.run("Q", three_layer(), provider=fake, on_event=events.append)
    assert result.layers[0].outputs[0].attempts == 3
    assert result.layers[0].outputs[0].text == "fine"
    retried = [e for e in events if e.kind == "call_retried"]
    assert [e.attempt for e in retried] == [1, 2] and all(e.site and e.site.model == "openai/p0" for e in retried)


async def test_event_stream_shape() -> None:
    events: list[moa.Event] = []
    await moa.run("Q", three_layer(), provider=FakeProvider(by_text), on_event=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] == "layer_started" and kinds[-1] == "layer_finished"
    assert kinds.count("call_started") == 7 and kinds.count("call_finished") == 7
    assert kinds.count("layer_started") == 3
    finished = [e for e in events if e.kind == "call_finished"]
    assert all(e.output is not None and e.output.ok for e in finished)


async def test_overrides_apply_to_every_call_and_beat_the_recipe() -> None:
    recipe = three_layer()
    recipe["defaults"] = {"temperature": 0.7, "max_tokens": 99}
    recipe["layers"][0]["agents"][0]["temperature"] = 0.1
    fake = FakeProvider(by_text)
    await moa.run("Q", recipe, provider=fake, temperature=0.0, api_base="http://127.0.0.1:9/v1")
    assert {r.params["temperature"] for r in fake.requests} == {0.0}
    assert {r.params["api_base"] for r in fake.requests} == {"http://127.0.0.1:9/v1"}
    assert {r.params["max_tokens"] for r in fake.requests} == {99}


async def test_self_moa_samples_one_model_k_times() -> None:
    fake = FakeProvider()
    recipe = {"name": "s", "self_moa": {"model": "openai/strong", "samples": 4, "aggregator": "openai/agg"}}
    result = await moa.run("Q", recipe, provider=fake)
    samples = fake.to_model("openai/strong")
    assert len(samples) == 4 and {r.params["temperature"] for r in samples} == {0.7}
    assert [o.sample for o in result.layers[0].outputs] == [0, 1, 2, 3]
    agg = fake.to_model("openai/agg")[0]
    assert agg.system is not None and all(f"{i}. openai/strong answer" in agg.system for i in range(1, 5))


async def test_self_moa_seq_folds_samples_with_the_synthesis() -> None:
    def responder(request: moa.Request, index: int) -> str:
        return f"S{index}" if request.model == "openai/strong" else f"SYN{index}"

    fake = FakeProvider(responder)
    recipe = {
        "name": "s",
        "self_moa": {"model": "openai/strong", "samples": 6, "aggregator": "openai/agg", "window": 3},
    }
    result = await moa.run("Q", recipe, provider=fake)
    steps = fake.to_model("openai/agg")
    assert len(steps) == 3 and len(fake.requests) == 9
    samples = [o.text for o in result.layers[0].outputs]
    systems = [s.system or "" for s in steps]
    assert systems[0].endswith("\n".join(f"{i + 1}. {t}" for i, t in enumerate(samples[:3])))
    assert systems[1].endswith(f"1. SYN6\n2. {samples[3]}\n3. {samples[4]}")
    assert systems[1].startswith("You are refining")
    assert systems[2].endswith(f"1. SYN7\n2. {samples[5]}")
    assert result.output == "SYN8"
    assert [o.step for o in result.layers[1].outputs] == [1, 2, 3]


async def test_missing_api_key_env_fails_before_any_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOA_TEST_KEY", raising=False)
    recipe = three_layer()
    recipe["defaults"] = {"api_key_env": "MOA_TEST_KEY"}
    fake = FakeProvider()
    with pytest.raises(moa.MissingAPIKeyError, match="MOA_TEST_KEY is not set"):
        await moa.run("Q", recipe, provider=fake)
    assert fake.requests == []
    monkeypatch.setenv("MOA_TEST_KEY", "sk-moa-secret-value-123")
    result = await moa.run("Q", recipe, provider=fake)
    assert {r.api_key for r in fake.requests} == {"sk-moa-secret-value-123"}
    assert "sk-moa-secret-value-123" not in result.model_dump_json()


async def test_empty_prompt_is_a_config_error_before_any_call() -> None:
    fake = FakeProvider()
    with pytest.raises(moa.ConfigError, match="empty"):
        await moa.run("  ", three_layer(), provider=fake)
    assert fake.requests == []


async def test_streaming_tokens_come_from_the_final_aggregator_only() -> None:
    tokens: list[str] = []
    result = await moa.run("Q", three_layer(), provider=FakeProvider(), on_token=tokens.append)
    assert "".join(tokens) == result.output


async def test_limits_cap_concurrency_per_provider() -> None:
    recipe = three_layer()
    recipe["layers"][0]["agents"] = [{"model": "openai/p", "n": 6}]
    recipe["limits"] = {"openai": {"max_concurrency": 2}}
    fake = FakeProvider(delay_s=0.02)
    await moa.run("Q", recipe, provider=fake)
    assert fake.max_in_flight == 2


async def test_a_shared_limiter_spans_concurrent_runs() -> None:
    limiter = moa.Limiter({"openai": moa.ProviderLimit(max_concurrency=3)})
    fake = FakeProvider(delay_s=0.02)
    await asyncio.gather(*(moa.run("Q", three_layer(), provider=fake, limiter=limiter) for _ in range(4)))
    assert fake.max_in_flight == 3 and len(fake.requests) == 28


def test_run_sync_works_with_and_without_a_running_loop() -> None:
    result = moa.run_sync("Q", three_layer(), provider=FakeProvider(by_text))
    assert result.output == "L3:openai/final"

    async def inside() -> str:
        return moa.run_sync("Q", three_layer(), provider=FakeProvider(by_text)).output

    assert asyncio.run(inside()) == "L3:openai/final"
