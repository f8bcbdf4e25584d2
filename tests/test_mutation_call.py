"""The call pipeline's exact numbers: retries, costs, budgets and what a call records.

Written against the mutants that survived the rest of the suite (``benchmarks/mutation_score.py``):
each test pins a value that a user of a budget, a trace or a retry policy sees.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import tenacity
from virtual_clock import run_virtual

from moa import (
    Budget,
    CallSite,
    Completion,
    ConfigError,
    Limiter,
    ProviderError,
    ProviderLimit,
    ProviderUnavailableError,
    RateLimitedError,
    Request,
    RequestRejectedError,
    RetryPolicy,
    Usage,
)
from moa._call import (
    BudgetRefused,
    Caller,
    CallFailed,
    CallRefused,
    CallSpec,
    Tracer,
    embedded,
    output_tokens,
    pricing_of,
    prompt_tokens,
    total,
    with_retries,
)
from moa._provider import TokenCallback
from moa.result import AgentOutput
from moa.testing import FakeProvider

MODEL = "openai/m"
#: 14 characters + 16 for the message: (30 // 3) + 1 = 11 prompt tokens.
MESSAGES: list[dict[str, object]] = [{"role": "user", "content": "x" * 14}]
POLICY = RetryPolicy(max_attempts=4, initial_backoff_s=1.0, max_backoff_s=8.0, max_retry_after_s=30.0)


class Script:
    def __init__(self, *steps: object) -> None:
        self.steps = list(steps)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return str(step)


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def spec(**params: Any) -> CallSpec:
    return CallSpec(site=CallSite(layer=1, agent=0, sample=0, agent_name="m", model=MODEL), params=params)


def caller(provider: Any, **options: Any) -> Caller:
    limiter = options.pop("limiter", None) or Limiter()
    return Caller(provider, limiter, Tracer(None), options.pop("retry", POLICY), sleep=FakeSleep(), **options)


# --- retries -------------------------------------------------------------------------------------------------


async def test_a_call_that_succeeds_at_once_took_one_attempt() -> None:
    assert await with_retries(Script("ok"), POLICY, sleep=FakeSleep()) == ("ok", 1)


async def test_a_retry_after_equal_to_the_longest_honoured_is_waited_for() -> None:
    sleep = FakeSleep()
    script = Script(RateLimitedError("429", retry_after=30.0), "ok")
    assert await with_retries(script, POLICY, sleep=sleep) == ("ok", 2)
    assert sleep.delays == [30.0]


async def test_the_backoff_ceiling_doubles_from_the_initial_backoff_up_to_the_max(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tenacity.wait.random, "uniform", lambda low, high: high)  # every jitter at its ceiling
    policy = RetryPolicy(max_attempts=6, initial_backoff_s=0.5, max_backoff_s=3.0)
    sleep = FakeSleep()
    script = Script(*[ProviderUnavailableError("503")] * 5, "ok")
    assert await with_retries(script, policy, sleep=sleep) == ("ok", 6)
    assert sleep.delays == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_a_permanent_error_after_a_transient_one_ends_the_retries() -> None:
    sleep = FakeSleep()
    script = Script(ProviderUnavailableError("503"), RequestRejectedError("400", status_code=400), "never")
    with pytest.raises(RequestRejectedError) as info:
        await with_retries(script, POLICY, sleep=sleep)
    assert script.calls == 2 and info.value.attempts == 2 and len(sleep.delays) == 1


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        (POLICY, RequestRejectedError("400", status_code=400)),  # permanent, with retries to spare
        (RetryPolicy(max_attempts=1), ProviderUnavailableError("503")),  # transient, with no retry allowed
    ],
)
async def test_a_first_failure_that_is_not_retried_never_enters_tenacity(
    policy: RetryPolicy, error: ProviderError, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_tenacity(**_: object) -> None:
        raise AssertionError("tenacity's machinery was built for a failure that is not retried")

    monkeypatch.setattr(tenacity, "AsyncRetrying", no_tenacity)
    script = Script(error, "never")
    with pytest.raises(type(error)) as info:
        await with_retries(script, policy, sleep=FakeSleep())
    assert info.value is error and error.attempts == 1 and script.calls == 1


async def test_an_attempt_that_raises_stop_async_iteration_on_a_retry_raises_it_as_it_is() -> None:
    # A provider that reads an exhausted stream with __anext__: `async for` over tenacity's attempts took this
    # error for the end of the attempts and raised AssertionError("unreachable: ...") in its place.
    sleep = FakeSleep()
    stopped = StopAsyncIteration("empty stream")
    script = Script(ProviderUnavailableError("503"), stopped, "never")
    with pytest.raises(StopAsyncIteration) as info:
        await with_retries(script, POLICY, sleep=sleep)
    assert info.value is stopped and script.calls == 2 and len(sleep.delays) == 1


# --- costs ---------------------------------------------------------------------------------------------------


def test_prompt_tokens_count_three_characters_a_token_plus_the_message_overhead() -> None:
    assert prompt_tokens([]) == 1
    assert prompt_tokens(MESSAGES) == 11
    assert prompt_tokens([{"role": "user", "content": "x" * 14}, {"role": "system", "content": "y" * 5}]) == 18


def test_text_that_splits_finer_counts_a_token_a_piece_plus_each_messages_overhead() -> None:
    # 12 CJK characters are 12 pieces: 12 + 16 // 3 + 1 = 18 (by characters only (12 + 16) // 3 + 1 = 10).
    assert prompt_tokens([{"role": "user", "content": "\u5b57" * 12}]) == 18
    # Two such messages: 24 pieces + (2 * 16) // 3 + 1 = 35.
    cjk = "\u5b57" * 12
    assert prompt_tokens([{"role": "user", "content": cjk}, {"role": "system", "content": cjk}]) == 35


def test_an_answer_without_max_tokens_counts_its_own_models_output_limit() -> None:
    class Limits:
        def worst_case_cost(self, model: str, params: Any, prompt_tokens: int) -> float | None:
            return None

        def max_output_tokens(self, model: str) -> int:
            return {"openai/small": 100, "openai/big": 4000}[model]

    assert output_tokens(Limits(), "openai/big", {}) == 4000
    assert output_tokens(Limits(), "openai/small", {"max_tokens": None}) == 100
    assert output_tokens(Limits(), "openai/small", {"max_tokens": 7}) == 7


def test_an_embedded_output_counts_its_own_tokens_instead_of_its_characters() -> None:
    # 60 + 16 characters, 30 of them an earlier answer of 100 tokens: (46 // 3) + 1 + 100.
    assert prompt_tokens([{"role": "user", "content": "z" * 60}], [(30, 100)]) == 116
    # An embedded text longer than the prompt (a caller's mistake) never counts negative characters.
    assert prompt_tokens([{"role": "user", "content": ""}], [(40, 5)]) == 6


def test_an_output_without_a_token_count_counts_its_characters_rounded_up() -> None:
    assert embedded([("abcd", 0), (None, 0), ("xyz", 5), ("abcdef", None)]) == [(4, 2), (0, 0), (3, 5), (6, 2)]  # type: ignore[list-item]


def test_a_total_adds_every_cost_and_is_unknown_when_one_is() -> None:
    assert total([0.25, 0.5, 1.0]) == 1.75
    assert total([]) == 0.0
    assert total([0.25, None, 1.0]) is None


def test_only_a_provider_that_can_price_calls_is_pricing() -> None:
    fake = FakeProvider()
    assert pricing_of(fake) is fake
    assert pricing_of(object()) is None


# --- budgets -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_cost_usd": True}, "max_cost_usd must be a number of dollars, got bool"),
        ({"max_cost_usd": "1"}, "max_cost_usd must be a number of dollars, got str"),
        ({"max_cost_usd": -1.0}, "max_cost_usd must be a finite amount of dollars >= 0, got -1.0"),
        ({"max_cost_usd": math.inf}, "max_cost_usd must be a finite amount of dollars >= 0, got inf"),
        ({"max_cost_usd": 1.0, "allow_unpriced": "yes"}, "allow_unpriced must be True or False, got 'yes'"),
    ],
)
def test_a_budget_refuses_settings_that_are_not_an_amount(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Budget(**fields)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        (lambda b: b.fits(-1), "a worst case must be a finite amount of dollars >= 0, got -1"),
        (lambda b: b.reserve(True), "a worst case must be a finite amount of dollars >= 0, got True"),
        (lambda b: b.reserve(math.nan), "a worst case must be a finite amount of dollars >= 0, got nan"),
        (lambda b: b.settle(-0.5, 0.0), "a reservation must be a finite amount of dollars >= 0, got -0.5"),
        (lambda b: b.settle(0.0, "1"), "a cost must be a finite amount of dollars >= 0, got '1'"),
    ],
)
def test_an_amount_that_is_not_dollars_is_a_bug_named_by_what_it_is(operation: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        operation(Budget(1.0))
    assert str(info.value) == message


def test_reservations_add_up_and_the_refusal_names_the_budget_and_what_is_held() -> None:
    budget = Budget(1.0)
    assert budget.reserve(0.25) == 0.25
    assert budget.reserve(0.5) == 0.5
    assert budget.reserved_usd == 0.75 and budget.remaining_usd == 0.25
    with pytest.raises(BudgetRefused) as info:
        budget.reserve(0.375)
    assert str(info.value) == (
        "not started: its worst case $0.3750 would pass the budget of $1 "
        "(spent $0.0000, $0.7500 held by work in flight)"
    )
    with pytest.raises(BudgetRefused):
        budget.reserve(0.0)  # once a call was refused, no later call of the budget starts
    assert budget.refused_calls == 2 and budget.exhausted


def test_the_rounding_slack_of_a_worst_case_is_inclusive() -> None:
    assert Budget(0.0).fits(1e-12)
    assert not Budget(0.0).fits(2e-12)


def test_a_child_draws_a_shortfall_from_its_parent_only_when_the_parent_has_it() -> None:
    parent = Budget(1.0)
    child = parent.child(0.5)
    assert (parent.reserved_usd, child.max_cost_usd, child.remaining_usd) == (0.5, 0.5, 0.5)
    assert child.fits(0.75)  # 0.25 more than the child holds, and the parent has 0.5 left
    assert not child.fits(1.125)  # 0.625 more: the parent has only 0.5
    assert child.reserve(0.75) == 0.75
    assert (parent.reserved_usd, child.max_cost_usd, child.reserved_usd) == (0.75, 0.75, 0.75)


def test_a_shortfall_within_the_rounding_slack_is_not_drawn_from_the_parent() -> None:
    parent = Budget(1.0)
    child = Budget(0.0, parent=parent)
    child.reserve(1e-12)
    assert (parent.reserved_usd, child.max_cost_usd) == (0.0, 0.0)


def test_a_refusal_in_a_child_names_the_whole_budget() -> None:
    parent = Budget(2.0)
    first = parent.child(0.5)
    first.settle(0.5, 0.5)
    first.close()
    child = parent.child(0.25)
    with pytest.raises(BudgetRefused) as info:
        child.reserve(1.75)  # 1.5 more than the child holds; the parent has 1.25 left
    assert str(info.value) == (
        "not started: its worst case $1.7500 would pass the budget of $2 "
        "(spent $0.5000, $0.2500 held by work in flight)"
    )


def test_a_child_keeps_allow_unpriced_and_closing_it_twice_changes_nothing() -> None:
    parent = Budget(1.0, allow_unpriced=True)
    child = parent.child(0.5)
    assert child.allow_unpriced is True
    child.settle(0.5, 0.125)
    child.close()
    child.close()
    assert (parent.spent_usd, parent.reserved_usd, child.parent) == (0.125, 0.0, None)


# --- the pipeline ----------------------------------------------------------------------------------------------


def test_call_failed_and_call_refused_say_what_their_cause_says() -> None:
    failure = ProviderUnavailableError("503 from upstream", model=MODEL)
    output = AgentOutput(layer=1, agent=0, sample=0, step=0, name="m", model=MODEL, messages=[], text="t")
    assert str(CallFailed(output, failure)) == str(failure) == "model openai/m: 503 from upstream"
    assert str(CallRefused(output)) == "refused"  # an output without an error (never made by moa) still says why


@pytest.mark.parametrize(
    ("finish_reason", "message"),
    [
        (None, "the answer is empty"),
        ("content_filter", "the answer is empty (finish_reason 'content_filter')"),
        (
            "length",
            "the answer is empty (it stopped at max_tokens before writing any text: "
            "a reasoning model may spend them all thinking)",
        ),
    ],
)
async def test_an_empty_answer_fails_the_call_paid_for_and_says_why(finish_reason: str | None, message: str) -> None:
    empty = Completion(" \u200b", prompt_tokens=5, completion_tokens=7, cost_usd=0.25, finish_reason=finish_reason)
    fake = FakeProvider(replies={MODEL: [empty]}, price_usd=0.5)
    budget = Budget(1.0)
    with pytest.raises(CallFailed) as info:
        await caller(fake, budget=budget, pricing=fake).call(spec(), MESSAGES)
    failed = info.value
    assert failed.cause.reason == message and failed.cause.model == MODEL
    assert str(failed) == str(failed.cause)
    assert failed.output.usage == Usage(prompt_tokens=5, completion_tokens=7) and failed.output.cost_usd == 0.25
    assert (budget.spent_usd, budget.reserved_usd) == (0.25, 0.0)
    assert len(fake.requests) == 1  # not retried


async def test_a_failed_call_releases_its_reservation_and_costs_nothing() -> None:
    fake = FakeProvider(replies={MODEL: [RequestRejectedError("bad", status_code=400)]}, price_usd=0.5)
    budget = Budget(1.0)
    with pytest.raises(CallFailed):
        await caller(fake, budget=budget, pricing=fake).call(spec(), MESSAGES)
    assert (budget.spent_usd, budget.reserved_usd, budget.refused_calls) == (0.0, 0.0, 0)


async def test_a_refused_call_records_the_budgets_reason() -> None:
    fake = FakeProvider(price_usd=0.5)
    with pytest.raises(CallRefused) as info:
        await caller(fake, budget=Budget(0.125), pricing=fake).call(spec(), MESSAGES)
    reason = (
        "not started: its worst case $0.5000 would pass the budget of $0.125 "
        "(spent $0.0000, $0.0000 held by work in flight)"
    )
    assert str(info.value) == reason
    assert info.value.output.error is not None and info.value.output.error.message == reason
    assert fake.requests == []


async def test_an_unpriced_call_under_a_budget_that_allows_it_counts_as_free() -> None:
    fake = FakeProvider(replies={MODEL: [Completion("hi", cost_usd=0.375)]})
    budget = Budget(1.0, allow_unpriced=True)
    # No pricing at all (a provider that cannot price calls), no max_tokens, and a limiter on the way.
    output = await caller(fake, budget=budget, limiter=Limiter({"openai": ProviderLimit(tpm=1000)})).call(
        spec(), MESSAGES
    )
    assert output.text == "hi"
    assert (budget.spent_usd, budget.reserved_usd) == (0.375, 0.0)


@pytest.mark.parametrize("cost", [math.nan, math.inf, -0.5, True])
async def test_a_providers_nonsense_price_is_an_unknown_one(cost: float) -> None:
    fake = FakeProvider(replies={MODEL: [Completion("hi", cost_usd=cost)]})
    output = await caller(fake).call(spec(), MESSAGES)
    assert output.text == "hi" and output.cost_usd is None


async def test_half_a_character_in_an_answer_is_replaced() -> None:
    fake = FakeProvider(replies={MODEL: [Completion("caf\ud800e", prompt_tokens=3, completion_tokens=2)]})
    output = await caller(fake).call(spec(), MESSAGES)
    assert output.text == "caf\ufffde"
    assert output.usage == Usage(prompt_tokens=3, completion_tokens=2)


async def test_an_answer_cut_by_max_tokens_says_so_in_its_output() -> None:
    fake = FakeProvider(replies={MODEL: [Completion("half an ans", finish_reason="length")]})
    output = await caller(fake).call(spec(max_tokens=3), MESSAGES)
    assert (output.text, output.finish_reason) == ("half an ans", "length")


async def test_the_injected_sleep_waits_out_a_retry_and_logprobs_and_step_are_recorded() -> None:
    answer = Completion("yes", top_logprobs={"m": -0.5, "M": -1.5})
    fake = FakeProvider(replies={MODEL: [RateLimitedError("429", retry_after=0.01), answer]})
    sleep = FakeSleep()
    call = Caller(fake, Limiter(), Tracer(None), POLICY, sleep=sleep)
    output = await call.call(spec(), MESSAGES)
    assert sleep.delays == [0.01]
    assert (output.text, output.attempts, output.step) == ("yes", 2, 0)
    assert output.top_logprobs == {"m": -0.5, "M": -1.5}


class ClockedProvider:
    """Answers at once and notes the virtual time each request started."""

    def __init__(self) -> None:
        self.started: list[float] = []

    async def complete(self, request: Request, on_token: TokenCallback | None = None) -> Completion:
        self.started.append(asyncio.get_running_loop().time())
        return Completion("ok")

    def worst_case_cost(self, model: str, params: Any, prompt_tokens: int) -> float | None:
        return 0.0

    def max_output_tokens(self, model: str) -> int:
        return 4096


def test_the_token_pacer_charges_the_prompt_and_at_most_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def starts(tpm: int, priced: bool, **params: Any) -> list[float]:
        provider = ClockedProvider()
        limiter = Limiter({"openai": ProviderLimit(tpm=tpm)})
        call = Caller(provider, limiter, Tracer(None), POLICY, pricing=provider if priced else None)

        async def main() -> None:
            await asyncio.gather(call.call(spec(**params), MESSAGES), call.call(spec(**params), MESSAGES))

        run_virtual(main(), monkeypatch)
        return provider.started

    # Unpriced: each call takes its 11 prompt tokens, so two fit a 22-token minute at once.
    assert starts(22, priced=False) == [0.0, 0.0]
    # Priced: each takes 11 + max_tokens 11, so the second waits for the first's 22 tokens to leak (a minute).
    first, second = starts(22, priced=True, max_tokens=11)
    assert first == 0.0 and second == pytest.approx(60.0)
