"""What counts as an answer: empty ones are failures; a caller's failing callback is not a provider's."""

from __future__ import annotations

import asyncio

import pytest
from conftest import agents, loopback_recipe

import moa
from moa import Completion
from moa.testing import FakeProvider, LoopbackServer


def free(request: moa.Request, index: int) -> Completion:
    return Completion(f"{request.model} answer #{index} to: {request.messages[-1]['content']}", 3, 4, cost_usd=0.0)


TWO = {"name": "two", "layers": [{"kind": "propose", "agents": agents("openai/a", "openai/b"), "min_success": 1},
                                 {"kind": "aggregate", "agents": agents("openai/agg")}]}  # fmt: skip


@pytest.mark.parametrize("blank", ["", "   ", "\n\t \n"])
async def test_an_empty_proposal_fills_no_quorum_and_never_reaches_the_aggregator(blank: str) -> None:
    fake = FakeProvider(free, replies={"openai/b": [Completion(blank, 5, 0, cost_usd=0.002)]})
    result = await moa.run("Q", TWO, provider=fake)
    empty = result.layers[0].outputs[1]
    assert not empty.ok and empty.error.type == "BadResponseError" and "the answer is empty" in empty.error.message
    assert empty.attempts == 1  # not retried: the same request would be answered the same way
    assert empty.usage.prompt_tokens == 5 and empty.cost_usd == pytest.approx(0.002)  # it was paid for
    system = fake.to_model("openai/agg")[0].system
    assert "1. openai/a answer #0 to: Q" in system and "2." not in system
    assert result.cost_usd == pytest.approx(0.002)  # the paid empty answer is in the total


async def test_an_empty_proposal_under_the_default_quorum_fails_the_layer() -> None:
    recipe = {**TWO, "layers": [{**TWO["layers"][0], "min_success": None}, TWO["layers"][1]]}
    fake = FakeProvider(replies={"openai/b": [""]})
    with pytest.raises(moa.QuorumError, match=r"(?s)layer 1 failed: 1 of 2.*the answer is empty"):
        await moa.run("Q", recipe, provider=fake)
    assert fake.to_model("openai/agg") == []


async def test_an_empty_final_answer_is_not_a_result() -> None:
    fake = FakeProvider(free, replies={"openai/agg": [Completion("", 10, 64, cost_usd=0.01, finish_reason="length")]})
    with pytest.raises(moa.QuorumError) as info:
        await moa.run("Q", TWO, provider=fake)
    assert "stopped at max_tokens before writing any text" in str(info.value)
    assert info.value.partial.cost_usd == pytest.approx(0.01)


async def test_an_empty_answer_over_http_is_a_failure(loopback: LoopbackServer) -> None:
    loopback.responder = lambda body, index: "" if body["model"] == "b" else f"answer {index}"
    result = await moa.run("Q", loopback_recipe(loopback, TWO["layers"]))
    assert [o.ok for o in result.layers[0].outputs] == [True, False]
    agg = loopback.completions("agg")[0]
    assert "1. answer" in agg.messages[0]["content"] and "2." not in agg.messages[0]["content"]


class _Boom(Exception):
    pass


async def test_a_failing_on_event_stops_the_run_and_is_not_a_provider_failure() -> None:
    fake = FakeProvider(delay_s=0.01)
    seen: list[str] = []

    def on_event(event: moa.Event) -> None:
        seen.append(event.kind)
        if event.kind == "call_finished":
            raise _Boom("my bug")

    with pytest.raises(moa.CallbackError, match="on_event callback raised _Boom: my bug") as info:
        await moa.run("Q", TWO, provider=fake, on_event=on_event)
    assert isinstance(info.value.__cause__, _Boom) and isinstance(info.value.error, _Boom)
    assert "call_failed" not in seen and "call_retried" not in seen
    assert fake.to_model("openai/agg") == []  # nothing ran after it
    assert info.value.partial is not None


async def test_a_failing_on_token_over_http_stops_the_run_unretried(loopback: LoopbackServer) -> None:
    def on_token(text: str) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(moa.CallbackError, match="on_token callback raised OSError") as info:
        await moa.run("Q", loopback_recipe(loopback, TWO["layers"]), on_token=on_token)
    assert len(loopback.completions("agg")) == 1  # a callback's failure is not retried like a 5xx
    assert not isinstance(info.value, moa.ProviderError | moa.QuorumError)
    assert [len(layer.outputs) for layer in info.value.partial.layers] == [2, 0]


async def test_a_failing_callback_cancels_calls_in_flight() -> None:
    started: list[str] = []
    cancelled: list[str] = []
    b_started, release = asyncio.Event(), asyncio.Event()

    class Slow(FakeProvider):
        async def complete(self, request: moa.Request, on_token: object = None) -> Completion:  # type: ignore[override]
            started.append(request.model)
            if request.model == "openai/a":
                await b_started.wait()
                return Completion("ok", 1, 1)
            b_started.set()
            try:
                await release.wait()  # never set: only a cancellation ends it
            except asyncio.CancelledError:
                cancelled.append(request.model)
                raise
            return Completion("ok", 1, 1)

    def on_event(event: moa.Event) -> None:
        if event.kind == "call_finished":
            raise _Boom("stop")

    with pytest.raises(moa.CallbackError):
        await asyncio.wait_for(moa.run("Q", TWO, provider=Slow(), on_event=on_event), timeout=30)
    assert started == ["openai/a", "openai/b"] and cancelled == ["openai/b"]
