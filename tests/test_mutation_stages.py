"""Stage kinds, exactly: the messages each agent receives, what streams, and the worst case each stage plans.

Written against the mutants of ``moa/_stages`` that survived the rest of the suite
(``benchmarks/mutation_score.py``).  The templates below print ``layer`` and ``step`` as runs of
three characters each, so a wrong layer or step changes a prompt by a whole token.

Token counts follow ``moa._call.cost``: (characters + 16 per message) // 3 + 1, plus the tokens of
the earlier outputs quoted in the prompt (their characters are not counted), or the prompt's pieces (words,
numbers of up to three digits, punctuation) + 16 // 3 per message + 1, whichever is more.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from virtual_clock import run_virtual

import moa
from moa import (
    BudgetExceeded,
    CallbackError,
    CallSite,
    Completion,
    Limiter,
    QuorumError,
    RequestRejectedError,
    RetryPolicy,
    Usage,
)
from moa._call import Budget, Caller, CallRefused, CallSpec, Tracer, plan_layer
from moa._call.trace import CallRecord
from moa._engine import run_worst_case
from moa._stages import EstimateContext, StageContext
from moa._stages.base import Writer, bind, candidates
from moa.testing import FakeProvider

#: The most tokens each model answers (the worst case of a call without ``max_tokens``).
LIMITS = {"openai/a": 7, "openai/b": 5, "openai/f": 9, "openai/s": 11, "openai/free": 3}
AGGREGATE = "L{{ 'x' * (3 * layer) }}{% for r in responses %}[{{ r }}]{% endfor %}"
SEQ = "L{{ 'x' * (3 * layer) }}S{{ 'y' * (3 * step) }}{% for r in responses %}[{{ r }}]{% endfor %}"
USER = {"role": "user", "content": "Q"}


class PricedFake(FakeProvider):
    """Every call costs $1 a prompt token (so a worst case counts tokens); notes every price asked."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.priced: list[tuple[str, int]] = []

    def worst_case_cost(self, model: str, params: Any, prompt_tokens: int) -> float | None:
        self.priced.append((model, prompt_tokens))
        return None if model == "openai/free" else float(prompt_tokens)

    def max_output_tokens(self, model: str) -> int:
        return LIMITS[model]


@pytest.fixture
def templates(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "agg.j2").write_text(AGGREGATE)
    (tmp_path / "seq.j2").write_text(SEQ)
    return {"aggregate": str(tmp_path / "agg.j2"), "seq": str(tmp_path / "seq.j2")}


def aggregate_recipe(templates: dict[str, str]) -> dict[str, Any]:
    return {
        "name": "agg",
        "layers": [
            {"kind": "propose", "agents": [{"model": "openai/a", "system": "SA"}, {"model": "openai/b"}]},
            {
                "kind": "aggregate",
                "agents": [{"model": "openai/f", "system": "SF"}],
                "template": templates["aggregate"],
            },
            {"kind": "aggregate", "agents": [{"model": "openai/a"}], "template": templates["aggregate"]},
        ],
    }


def seq_recipe(templates: dict[str, str]) -> dict[str, Any]:
    return {
        "name": "seq",
        "retry": {"max_attempts": 1},
        "layers": [
            {
                "kind": "propose",
                "agents": [{"model": "openai/a", "system": "SA"}, {"model": "openai/b"}, {"model": "openai/f"}],
            },
            {
                "kind": "aggregate_seq",
                "agents": [{"model": "openai/s", "system": "SS"}],
                "window": 2,
                "template": templates["seq"],
            },
            {"kind": "aggregate", "agents": [{"model": "openai/a"}], "template": templates["aggregate"]},
        ],
    }


# --- what each agent receives, and what streams ----------------------------------------------------------------


async def test_each_agent_gets_its_own_system_prompt_and_the_layers_block(templates: dict[str, str]) -> None:
    fake = FakeProvider(replies={"openai/a": ["ra", "final"], "openai/b": ["rb"], "openai/f": ["rf"]})
    tokens: list[str] = []
    result = await moa.run("Q", aggregate_recipe(templates), provider=fake, on_token=tokens.append)
    requests = [r.messages for r in fake.requests]
    assert requests[:2] == [[{"role": "system", "content": "SA"}, USER], [USER]]
    assert requests[2] == [{"role": "system", "content": "SF\n\nLxxxxxx[ra][rb]"}, USER]
    assert requests[3] == [{"role": "system", "content": "Lxxxxxxxxx[rf]"}, USER]
    assert result.output == "final" and "".join(tokens) == "final"  # only the last layer streams


async def test_a_single_propose_layer_streams_its_answer() -> None:
    tokens: list[str] = []
    fake = FakeProvider(replies={"openai/a": ["the only answer"]})
    recipe = {"name": "one", "layers": [{"kind": "propose", "agents": [{"model": "openai/a"}]}]}
    await moa.run("Q", recipe, provider=fake, on_token=tokens.append)
    assert "".join(tokens) == "the only answer"


async def test_aggregate_seq_folds_the_inputs_in_window_by_window(templates: dict[str, str]) -> None:
    replies: dict[str, list[Any]] = {"openai/a": ["ra", "end"], "openai/b": ["rb"], "openai/f": ["rf"]}
    fake = PricedFake(replies={**replies, "openai/s": ["s1", "s2"]})
    tokens: list[str] = []
    seq = seq_recipe(templates)
    seq["layers"] = seq["layers"][:2]  # the synthesis is the answer
    result = await moa.run("Q", seq, provider=fake, on_token=tokens.append, max_cost_usd=1000)
    steps = [r.messages for r in fake.to_model("openai/s")]
    assert steps == [
        [{"role": "system", "content": "SS\n\nLxxxxxxSyyy[ra][rb]"}, USER],
        [{"role": "system", "content": "SS\n\nLxxxxxxSyyyyyy[s1][rf]"}, USER],
    ]
    assert result.output == "s2" and "".join(tokens) == "s2"  # only the last step streams
    # What each step's call reserved: its prompt with the quoted answers counted as their tokens (1 word each).
    # Step 1: (4 + 19 + 16 + 17 - 4 quoted characters) // 3 + 1 + 2 tokens; step 2 likewise, 3 characters longer.
    assert [tokens for model, tokens in fake.priced if model == "openai/s"][-2:] == [20, 21]


# --- when a step or a call cannot go on ------------------------------------------------------------------------


def layer_context(recipe: dict[str, Any], index: int, provider: Any, **options: Any) -> StageContext:
    loaded = moa.load_recipe(recipe)
    caller = Caller(provider, Limiter(), Tracer(None), RetryPolicy(max_attempts=1), **options)
    return StageContext(index, loaded.layers[index], [USER], plan_layer(loaded, index), caller)


def outputs(*texts: str) -> list[moa.AgentOutput]:
    spec = plan_layer(
        moa.load_recipe({"name": "p", "layers": [{"kind": "propose", "agents": [{"model": "openai/a"}]}]}), 0
    )[0]
    return [Tracer(None).finished(CallRecord(spec, []), text, Usage(completion_tokens=1), 0.0, None) for text in texts]


def inputs(*texts: str) -> list[moa.Candidate]:
    """What a first layer that wrote ``texts`` passes to the next stage."""
    return candidates(outputs(*texts))


async def test_a_refused_step_ends_the_layer_with_the_steps_so_far(templates: dict[str, str]) -> None:
    fake = PricedFake(replies={"openai/s": ["s1"]})
    # Step 1 reserves 20 (its prompt tokens, see above) and costs nothing; step 2 would need 21.
    ctx = layer_context(seq_recipe(templates), 1, fake, pricing=fake, budget=Budget(20.0))
    with pytest.raises(BudgetExceeded) as info:
        await moa._stages.STAGES["aggregate_seq"].run(ctx, inputs("ra", "rb", "rf"))
    assert str(info.value) == (
        "layer 2, step 2: not started: its worst case $21.0000 would pass the budget of $20 "
        "(spent $0.0000, $0.0000 held by work in flight)"
    )
    assert [(o.step, o.text, o.error.type if o.error else None) for o in ctx.recorded] == [
        (1, "s1", None),
        (2, None, "BudgetExceeded"),
    ]


async def test_each_step_reserves_the_answers_it_quotes_at_their_token_counts(templates: dict[str, str]) -> None:
    fake = PricedFake(replies={"openai/s": [Completion("s1", completion_tokens=30), "s2"]})
    ctx = layer_context(seq_recipe(templates), 1, fake, pricing=fake, budget=Budget(1000.0))
    spec = plan_layer(moa.load_recipe(seq_recipe(templates)), 0)[0]
    long = [
        Tracer(None).finished(CallRecord(spec, []), t, Usage(completion_tokens=40), 0.0, None)
        for t in ("ra", "rb", "rf")
    ]
    await moa._stages.STAGES["aggregate_seq"].run(ctx, candidates(long))
    # Step 1: "SS\n\nLxxxxxxSyyy[ra][rb]" and "Q", 4 of their characters quoted: (23 + 16 + 17 - 4) // 3 + 1 + 40 + 40.
    # Step 2: "SS\n\nLxxxxxxSyyyyyy[s1][rf]" likewise, quoting s1's 30 tokens and rf's 40: (26 + 33 - 4) // 3 + 1 + 70.
    assert [tokens for model, tokens in fake.priced if model == "openai/s"] == [98, 89]


async def test_a_failed_step_fails_the_layer_naming_how_far_it_got(templates: dict[str, str]) -> None:
    fake = FakeProvider(replies={"openai/s": ["s1", RequestRejectedError("bad request", status_code=400)]})
    ctx = layer_context(seq_recipe(templates), 1, fake)
    with pytest.raises(QuorumError) as info:
        await moa._stages.STAGES["aggregate_seq"].run(ctx, inputs("ra", "rb", "rf"))
    error = info.value
    assert (error.layer, error.needed, error.succeeded, error.planned) == (2, 2, 1, 2)
    assert str(error).startswith("layer 2 failed: 1 of 2 calls succeeded, min_success is 2; causes:\n  - Request")
    assert [type(f).__name__ for f in error.failures] == ["RequestRejectedError"]
    assert [(o.step, o.ok) for o in error.outputs] == [(1, True), (2, False)]
    assert ctx.recorded == error.outputs


def two_agents(min_success: int | None = None) -> dict[str, Any]:
    layer: dict[str, Any] = {"kind": "propose", "agents": [{"model": "openai/a"}, {"model": "openai/b"}]}
    if min_success is not None:
        layer["min_success"] = min_success
    return {"name": "two", "layers": [layer, {"kind": "aggregate", "agents": [{"model": "openai/f"}]}]}


async def test_a_refused_call_lets_the_calls_in_flight_finish() -> None:
    ctx = layer_context(two_agents(), 0, FakeProvider())
    first = ctx.specs
    refusal = Tracer(None).refused(CallRecord(first[1], []), "not started: no money left")
    go = asyncio.Event()

    async def in_flight() -> moa.AgentOutput:
        await go.wait()
        return outputs("done")[0]

    async def refused() -> moa.AgentOutput:
        go.set()
        raise CallRefused(refusal)

    with pytest.raises(BudgetExceeded) as info:
        await ctx.fanout([(first[0], in_flight), (first[1], refused)])
    assert str(info.value) == "layer 1: not started: no money left; 1 call(s) not started"
    assert [(o.text, o.ok) for o in ctx.recorded] == [("done", True), (None, False)]


def test_a_failing_callback_cancels_the_other_calls_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = two_agents(min_success=1)
    specs = plan_layer(moa.load_recipe(recipe), 0)
    cancelled: list[str] = []

    async def main() -> float:
        ctx = layer_context(recipe, 0, FakeProvider())

        async def slow() -> moa.AgentOutput:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append("slow")
                raise
            return outputs("late")[0]

        async def broken() -> moa.AgentOutput:
            raise CallbackError("on_token", ValueError("boom"))

        with pytest.raises(CallbackError):
            await ctx.fanout([(specs[0], slow), (specs[1], broken)])
        return asyncio.get_running_loop().time()

    assert run_virtual(main(), monkeypatch) == 0.0
    assert cancelled == ["slow"]


# --- worst cases -------------------------------------------------------------------------------------------------


def test_the_plan_prices_every_call_at_its_longest(templates: dict[str, str]) -> None:
    # Layer 1, by pieces (more than by characters here): a: 2 pieces + 2 * 16 // 3 + 1 = 13; b: 1 + 16 // 3 + 1 = 7.
    # Layer 2: f sees "SF\n\nLxxxxxx[][]" (15 characters) and a's 7 + b's 5 tokens: (15 + 16 + 17) // 3 + 1 + 12 = 29.
    # Layer 3: a sees "Lxxxxxxxxx[]" (12 characters) and f's 9 tokens: (12 + 16 + 17) // 3 + 1 + 9 = 25.
    plans = moa.plan(aggregate_recipe(templates), "Q", provider=PricedFake())
    assert [p.worst_case_usd for p in plans] == [20.0, 29.0, 25.0]


def test_the_plan_prices_every_step_of_aggregate_seq(templates: dict[str, str]) -> None:
    # Layer 1 (by pieces): a 13, b 7, f 7.  Layer 2, step 1: "SS\n\nLxxxxxxSyyy[][]" (19) with a's 7 + b's 5 tokens:
    # (19 + 16 + 17) // 3 + 1 + 12 = 30; step 2: "SS\n\nLxxxxxxSyyyyyy[][]" (22) with s's 11 + f's 9:
    # (22 + 16 + 17) // 3 + 1 + 20 = 39.  Layer 3: "Lxxxxxxxxx[]" (12) with the synthesis' 11: 15 + 1 + 11 = 27.
    plans = moa.plan(seq_recipe(templates), "Q", provider=PricedFake())
    assert [p.worst_case_usd for p in plans] == [27.0, 69.0, 27.0]


def test_an_unpriced_model_makes_its_layer_and_the_run_unknown_and_is_named(templates: dict[str, str]) -> None:
    recipe = aggregate_recipe(templates)
    recipe["layers"][0]["agents"].append({"model": "openai/free"})
    plans = moa.plan(recipe, "Q", provider=PricedFake())
    assert [p.worst_case_usd for p in plans] == [None, 32.0, 25.0]  # free's 3 tokens reach layer 2
    total, unpriced = run_worst_case(PricedFake(), moa.load_recipe(recipe), [USER])
    assert (total, unpriced) == (None, ["openai/free"])


# --- a stage kind of the user's own, with only what moa.Stage gives it ----------------------------------------------


class Critics(moa.Layer):
    """A kind of the user's own that keeps moa.Stage's ``run`` and ``estimate``: a call per input."""

    kind: str = "critics"
    critics: list[moa.Agent]

    def call_agents(self) -> list[moa.Agent]:
        return self.critics

    def calls(self, inputs: int) -> int:
        return inputs  # a critique of each input

    def outputs(self, inputs: int) -> int:
        return inputs + 1


class Bare(moa.Stage):
    pass


def critic_specs(*models: str) -> list[CallSpec]:
    return [CallSpec(site=CallSite(layer=2, agent=i, sample=0, agent_name=m, model=m)) for i, m in enumerate(models)]


def critics_context(pricing: Any, *models: str) -> EstimateContext:
    layer = Critics(critics=[moa.Agent(model=m) for m in models])
    return EstimateContext(1, layer, [USER], critic_specs(*models), pricing)


def test_a_kind_without_its_own_estimate_quotes_every_input_to_its_costliest_agent(templates: dict[str, str]) -> None:
    fake = PricedFake()
    recipe = moa.load_recipe(aggregate_recipe(templates))
    propose = EstimateContext(0, recipe.layers[0], [USER], plan_layer(recipe, 0), fake)
    proposed = moa._stages.STAGES["propose"].estimate(propose, [])
    assert proposed.outputs == [(0, 7), (0, 5)]  # a planned answer is its tokens: none of its characters are known
    estimate = Bare().estimate(critics_context(fake, "openai/s", "openai/f"), proposed.outputs)
    # Both critics see "Q" and an empty turn quoting a's 7 and b's 5 tokens: (1 + 16 + 16) // 3 + 1 + 12 = 24
    # prompt tokens, $24 each; the costliest of the two, once per input.  Each output at the longest: s's 11 tokens.
    assert (estimate.cost, estimate.unpriced, estimate.outputs) == (48.0, [], [(0, 11)] * 3)
    assert fake.priced[-2:] == [("openai/s", 24), ("openai/f", 24)]


def test_a_kind_without_its_own_estimate_prices_no_call_it_would_not_make() -> None:
    fake = PricedFake()
    no_inputs = Bare().estimate(critics_context(fake, "openai/s"), [])  # nothing to critique: no call
    assert (no_inputs.cost, no_inputs.outputs) == (0, [(0, 0)])
    no_agents = critics_context(fake, "openai/s")
    no_agents.specs = []
    estimate = Bare().estimate(no_agents, [(0, 7), (0, 5)])  # no agent to call: its longest input goes on
    assert (estimate.cost, estimate.outputs, fake.priced) == (0, [(0, 7)] * 3, [])


async def test_a_kind_without_its_own_run_names_itself() -> None:
    with pytest.raises(NotImplementedError) as info:
        await Bare().run(layer_context(two_agents(), 0, FakeProvider()), [])
    assert str(info.value) == "Bare.run"


class Cents(PricedFake):
    """A cent a prompt token: every call costs less than a dollar."""

    def worst_case_cost(self, model: str, params: Any, prompt_tokens: int) -> float | None:
        cost = super().worst_case_cost(model, params, prompt_tokens)
        return None if cost is None else cost / 100


def test_the_costliest_agent_is_counted_once_per_call_and_an_unpriced_one_makes_it_unknown() -> None:
    messages: list[Any] = [USER]  # by pieces: 1 + 16 // 3 + 1 = 7 prompt tokens, $0.07
    context = critics_context(Cents(), "openai/a", "openai/s")
    assert context.price_costliest(critic_specs("openai/a", "openai/s"), messages, ()) == 11
    assert context.price_costliest(critic_specs("openai/a"), messages, (), times=3) == 7
    assert context.price_costliest([], messages, ()) == 0
    assert (context.costs, context.unpriced) == ([pytest.approx(0.07), pytest.approx(0.21)], [])
    assert context.price_costliest(critic_specs("openai/free", "openai/a"), messages, (), times=2) == 7
    assert (len(context.costs), context.unpriced) == (2, ["openai/free"])
    assert context.result([]).cost is None


def test_a_priced_call_made_several_times_costs_that_many_times() -> None:
    context = critics_context(Cents(), "openai/a")
    assert context.price(critic_specs("openai/a")[0], [USER], (), times=4) == 7
    assert context.costs == [pytest.approx(0.28)]


async def test_only_a_call_that_streams_sends_its_text_to_on_token() -> None:
    tokens: list[str] = []
    fake = FakeProvider(replies={"openai/a": ["judged quietly", "said aloud"]})
    ctx = layer_context(two_agents(), 0, fake)
    ctx.on_token = tokens.append
    await ctx.call(ctx.specs[0], [USER])
    assert tokens == []
    await ctx.call(ctx.specs[0], [USER], stream=True)
    assert "".join(tokens) == "said aloud"


async def test_a_fanout_of_a_kind_without_a_quorum_of_its_own_needs_what_it_is_told() -> None:
    fake = FakeProvider(replies={"openai/s": ["fine"], "openai/f": [RequestRejectedError("no", status_code=400)]})
    caller = Caller(fake, Limiter(), Tracer(None), RetryPolicy(max_attempts=1))
    layer = Critics(critics=[moa.Agent(model="openai/s"), moa.Agent(model="openai/f")])
    ctx = StageContext(1, layer, [USER], critic_specs("openai/s", "openai/f"), caller)
    calls = [(spec, bind(ctx.call, spec, [USER])) for spec in ctx.specs]
    outputs = await ctx.fanout(calls, min_success=1)  # the layer has no min_success, nor a straggler cut-off
    assert [(o.text, o.ok) for o in outputs] == [("fine", True), (None, False)]


def test_a_remembered_call_site_keeps_its_system_prompt() -> None:
    ctx = layer_context(two_agents(), 0, FakeProvider())
    (spec,) = critic_specs("openai/s")
    ctx.remember(spec, "You repair answers.")
    written = outputs("x")[0].model_copy(update={"layer": 2, "agent": 0, "sample": 0, "model": "openai/s"})
    assert ctx.writer_of(moa.Candidate.of(written)) == Writer(spec, "You repair answers.")


@pytest.mark.parametrize(("recipe", "planned"), [(aggregate_recipe, [(0, 9)]), (seq_recipe, [(0, 11)])])
def test_an_aggregators_planned_answer_is_its_tokens_only(
    templates: dict[str, str], recipe: Any, planned: list[tuple[int, int]]
) -> None:
    # What a kind without its own estimate quotes after it: no characters to take off its prompt, only tokens.
    loaded = moa.load_recipe(recipe(templates))
    context = EstimateContext(1, loaded.layers[1], [USER], plan_layer(loaded, 1), PricedFake())
    assert moa._stages.STAGES[loaded.layers[1].kind].estimate(context, [(0, 7), (0, 5), (0, 5)]).outputs == planned
