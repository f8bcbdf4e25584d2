"""Budgets, deadlines, straggler cut-off and cancellation (in-process fake and loopback HTTP)."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import agents, loopback_recipe
from virtual_clock import run_virtual

import moa
from moa import Completion
from moa._engine import run_worst_case
from moa.testing import FakeProvider, LoopbackServer

THREE = {
    "name": "three",
    "layers": [
        {"kind": "propose", "agents": [{"model": "openai/p0"}, {"model": "openai/p1"}, {"model": "openai/p2"}]},
        {"kind": "aggregate", "agents": [{"model": "openai/agg"}]},
    ],
}


def priced(cost: float) -> FakeProvider:
    return FakeProvider(lambda r, i: Completion(f"answer {i}", 10, 5, cost_usd=cost), price_usd=0.01, delay_s=0.02)


async def test_a_run_that_might_not_be_paid_for_does_not_start() -> None:
    fake = priced(0.009)
    with pytest.raises(moa.BudgetExceeded) as info:
        # Worst cases of 0.01 each: the run's 0.04 does not fit 0.03, so not even the proposers start
        # (they would be paid for, and then their aggregator could not be).
        await moa.run("Q", THREE, provider=fake, max_cost_usd=0.03)
    assert fake.requests == []
    assert "worst case ($0.0400" in str(info.value) and "$0.0300 left of $0.03" in str(info.value)
    assert info.value.partial.layers == [] and info.value.partial.cost_usd == 0


class _PricedByPrompt(FakeProvider):
    """Worst case grows with the prompt; answers report more tokens than max_tokens allows."""

    def worst_case_cost(self, model: str, params: object, prompt_tokens: int) -> float:
        return prompt_tokens * 0.001


async def test_a_prompt_longer_than_the_estimate_draws_on_the_budget_or_stops_the_run() -> None:
    recipe = {**THREE, "defaults": {"max_tokens": 10}}
    long_answers = FakeProvider(lambda r, i: Completion("x", 1, 50, cost_usd=0.0))  # 50 tokens > max_tokens 10
    fake = _PricedByPrompt(long_answers.responder)
    budget = moa.Budget(max_cost_usd=1.0)
    await moa.run("Q", recipe, provider=fake, budget=budget)  # the aggregator's prompt outgrew its share: drawn
    assert len(fake.requests) == 4 and budget.reserved_usd == pytest.approx(0) and budget.refused_calls == 0
    fake = _PricedByPrompt(long_answers.responder)
    worst, _ = run_worst_case(fake, moa.load_recipe(recipe), [{"role": "user", "content": "Q"}])
    assert worst is not None
    with pytest.raises(moa.BudgetExceeded) as info:
        # The estimate (proposer answers of at most 10 tokens each) fits; the real 3 x 50 tokens
        # (0.12 more in the aggregator's prompt) do not.
        await moa.run("Q", recipe, provider=fake, max_cost_usd=worst + 0.05)
    assert len(fake.requests) == 3
    partial = info.value.partial
    assert [len(layer.outputs) for layer in partial.layers] == [3, 1]
    assert partial.layers[1].outputs[0].error.type == "BudgetExceeded"


async def test_concurrent_runs_share_a_budget_without_starving_each_other() -> None:
    fake = priced(0.001)
    budget = moa.Budget(max_cost_usd=0.05)  # one run's worst case (0.04) fits, two do not
    outcomes = await asyncio.gather(*(moa.run("Q", THREE, provider=fake, budget=budget) for _ in range(3)),
                                    return_exceptions=True)  # fmt: skip
    finished = [o for o in outcomes if isinstance(o, moa.MoAResult)]
    refused = [o for o in outcomes if isinstance(o, moa.BudgetExceeded)]
    # The first run holds its worst case; the others are refused before any call: no half-paid run.
    assert len(finished) == 1 and len(refused) == 2 and len(fake.requests) == 4
    assert all(r.partial.layers == [] for r in refused)
    assert budget.spent_usd == pytest.approx(0.004) and budget.reserved_usd == pytest.approx(0)


async def test_a_budget_shared_by_several_runs() -> None:
    budget = moa.Budget(max_cost_usd=0.1)
    fake = priced(0.01)
    await moa.run("Q", THREE, provider=fake, budget=budget)
    await moa.run("Q", THREE, provider=fake, budget=budget)
    assert budget.spent_usd == pytest.approx(0.08) and budget.reserved_usd == 0
    with pytest.raises(moa.BudgetExceeded):
        await moa.run("Q", THREE, provider=fake, budget=budget)


async def test_unpriced_models_are_refused_under_a_budget_unless_allowed() -> None:
    fake = FakeProvider()  # no price
    with pytest.raises(moa.UnpricedModelError, match="openai/agg, openai/p0"):
        await moa.run("Q", THREE, provider=fake, max_cost_usd=1.0)
    assert fake.requests == []
    result = await moa.run("Q", THREE, provider=fake, max_cost_usd=1.0, allow_unpriced=True)
    assert len(result.calls) == 4


def test_deadline_bounds_the_run_and_keeps_finished_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    class Slow(FakeProvider):
        async def complete(self, request: moa.Request, on_token: object = None) -> Completion:  # type: ignore[override]
            if request.model == "openai/p2":
                await asyncio.sleep(30)  # virtual seconds: the deadline comes first
            return await super().complete(request)

    async def main() -> tuple[moa.DeadlineExceeded, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(moa.DeadlineExceeded) as info:
            await moa.run("Q", THREE, provider=Slow(), deadline_s=0.3)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        return info.value, loop.time() - started

    error, elapsed = run_virtual(main(), monkeypatch)
    assert elapsed == pytest.approx(0.3)  # exactly the deadline, on the loop's clock
    layer = error.partial.layers[0]
    assert sorted(o.model for o in layer.outputs) == ["openai/p0", "openai/p1"]


def test_straggler_cut_off_closes_a_layer_early(monkeypatch: pytest.MonkeyPatch) -> None:
    class Straggler(FakeProvider):
        async def complete(self, request: moa.Request, on_token: object = None) -> Completion:  # type: ignore[override]
            if request.model == "openai/p2":
                await asyncio.sleep(5)  # virtual seconds
            return await super().complete(request)

    recipe = {**THREE, "layers": [{**THREE["layers"][0], "min_success": 2, "straggler_s": 0.2}, THREE["layers"][1]]}

    async def main() -> tuple[moa.MoAResult, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await moa.run("Q", recipe, provider=Straggler())
        return result, loop.time() - started

    result, elapsed = run_virtual(main(), monkeypatch)
    assert elapsed == pytest.approx(0.2)  # the cut-off, not the straggler's 5 s
    outputs = result.layers[0].outputs
    assert [o.ok for o in outputs] == [True, True, False]
    assert outputs[2].error is not None and "straggler cut-off" in outputs[2].error.message
    system = result.layers[1].outputs[0].messages[0]["content"]
    assert "openai/p0 answer" in system and "openai/p1 answer" in system and "openai/p2" not in system


def test_straggler_needs_a_quorum_below_the_layer() -> None:
    bad = {**THREE, "layers": [{**THREE["layers"][0], "straggler_s": 1.0}, THREE["layers"][1]]}
    with pytest.raises(moa.RecipeError, match="needs `min_success` below"):
        moa.load_recipe(bad)


async def test_cancelling_a_run_cancels_every_call_at_once(loopback: LoopbackServer) -> None:
    # Every call would hang for an hour: the run ends with the cancel only if it cancels them, not waits.
    loopback.add_fault("hang", times=10)
    layers = [{"kind": "propose", "agents": agents("openai/p0", "openai/p1", "openai/p2")},
              {"kind": "aggregate", "agents": agents("openai/agg")}]  # fmt: skip
    recipe = loopback_recipe(loopback, layers, defaults={"timeout": 3600})
    task = asyncio.create_task(moa.run("Q", recipe, api_key="k"))
    deadline = time.monotonic() + 600  # a bound against a hang only
    while len(loopback.completions()) < 3:  # the server runs in its own thread
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=600)  # an hour if the calls were awaited, not cancelled
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
