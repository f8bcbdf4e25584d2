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
from moa._call.cost import prompt_tokens
from moa._call.trace import CallRecord
from moa._engine import run_worst_case
from moa._stages import EstimateContext, StageContext
from moa._stages.base import Outcome, Writer, bind, candidates
from moa._stages.checks import llm_messages
from moa._stages.verify import REPAIR
from moa.recipe.selection import VERDICT_SETTINGS
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


# --- verify: what passes on, what the repairer and the fallbacks are sent, the error and the summary -----------

ANSWER_LINE = {"type": "regex", "pattern": r"^Answer: \d"}
NO_ANSWER_LINE = "- regex: the answer does not match the pattern '^Answer: \\\\d'"


def verify_recipe(verify: dict[str, Any], *proposers: str) -> dict[str, Any]:
    layers = [
        {"kind": "propose", "agents": [{"model": m} for m in proposers or ("openai/a",)]},
        {"kind": "verify", **verify},
    ]
    return {"name": "v", "retry": {"max_attempts": 1}, "layers": layers}


def judge(model: str = "openai/s") -> dict[str, Any]:
    return {"type": "llm", "judge": {"model": model}, "criterion": "right"}


def says_yes_to_answer_lines(request: Any, index: int) -> str:
    """A judge: yes to a response that is an answer line, no otherwise (an answerer: no answer line)."""
    return "yes" if "Response:\nAnswer: " in request.messages[-1]["content"] else "no"


def summary_of(result: moa.Result, layer: int = 2) -> str | None:
    found = result.layers[layer - 1]
    return moa._stages.STAGES["verify"].summary(Outcome(found.candidates, found.considered), layer)


def mentions_the_question(answer: str, question: str) -> tuple[bool, str]:
    """A Python check, `test_mutation_stages:mentions_the_question` in recipes."""
    return (True, "") if question in answer else (False, f"no {question!r} in it")


async def test_verify_keep_first_passes_on_the_first_passing_answer_and_passing_every_one() -> None:
    replies = {"openai/a": ["no line"], "openai/b": ["Answer: 1"], "openai/f": ["Answer: 2"]}
    models = ("openai/a", "openai/b", "openai/f")
    first = await moa.run("Q", verify_recipe({"checks": [ANSWER_LINE], "keep": "first"}, *models),
                          provider=FakeProvider(replies=replies))  # fmt: skip
    assert [c.text for c in first.layers[1].candidates] == ["Answer: 1"]
    assert summary_of(first) == "verdicts: 2 of 3 passed"
    every = await moa.run(
        "Q", verify_recipe({"checks": [ANSWER_LINE]}, *models), provider=FakeProvider(replies=replies)
    )
    assert [c.text for c in every.layers[1].candidates] == ["Answer: 1", "Answer: 2"]


async def test_a_failed_repair_call_ends_the_repairs_and_a_failed_fallback_call_goes_on_to_the_next() -> None:
    rejected = RequestRejectedError("bad request", status_code=400)
    replies: dict[str, list[Any]] = {
        "openai/a": ["no line", rejected],
        "openai/f": [rejected],
        "openai/g": ["Answer: 3"],
    }
    verify = {
        "checks": [ANSWER_LINE],
        "repairs": 2,
        "fallback": [{"model": "openai/f", "system": "Be exact."}, {"model": "openai/g"}],
    }
    fake = FakeProvider(replies=replies)
    result = await moa.run("Q", verify_recipe(verify), provider=fake)
    assert result.output == "Answer: 3"
    assert [r.model for r in fake.requests] == ["openai/a", "openai/a", "openai/f", "openai/g"]
    assert fake.to_model("openai/f")[0].messages == [{"role": "system", "content": "Be exact."}, USER]
    assert fake.to_model("openai/g")[0].messages == [USER]
    outputs = result.layers[1].outputs
    assert [(o.name, o.step, o.ok) for o in outputs] == [
        ("openai/a (repair)", 1, False),
        ("openai/f", 2, False),
        ("openai/g", 3, True),
    ]
    assert summary_of(result) == "verdicts: 0 of 1 passed; 1 repaired or escalated answer(s), one passed"


async def test_every_failed_call_and_check_is_in_the_verification_error_in_order() -> None:
    rejected = RequestRejectedError("bad request", status_code=400)
    replies: dict[str, list[Any]] = {"openai/a": ["no line", rejected], "openai/f": [rejected], "openai/g": ["nope"]}
    verify = {
        "checks": [ANSWER_LINE, {"type": "python", "function": "test_mutation_stages:mentions_the_question"}],
        "repairs": 1,
        "fallback": [{"model": "openai/f"}, {"model": "openai/g"}],
    }
    with pytest.raises(moa.VerificationError) as info:
        await moa.run("Q", verify_recipe(verify), provider=FakeProvider(replies=replies))
    both = f"{NO_ANSWER_LINE}\n- python: no 'Q' in it"
    assert info.value.failures == [
        f"the answer of layer 1, openai/a:\n{both}",
        "repair 1 by openai/a (repair): the call failed (RequestRejectedError: layer 2, agent 2 "
        "(openai/a (repair)), sample 0, model openai/a: bad request [HTTP 400])",
        "fallback openai/f: the call failed (RequestRejectedError: layer 2, agent 0 (openai/f), sample 0, "
        "model openai/f: bad request [HTTP 400])",
        f"fallback openai/g:\n{both}",
    ]
    last = await moa.run("Q", verify_recipe({**verify, "if_none_pass": "last"}), provider=FakeProvider(replies=replies))
    assert last.output == "nope"
    assert summary_of(last) == (
        "verdicts: 0 of 1 passed; 1 repaired or escalated answer(s), none passed; "
        "nothing passed: the last answer went on with its failed verdicts"
    )


async def test_a_python_check_is_given_the_question() -> None:
    verify = {"checks": [{"type": "python", "function": "test_mutation_stages:mentions_the_question"}]}
    fake = FakeProvider(replies={"openai/a": ["Is it blue? Yes."]})
    result = await moa.run("Is it blue?", verify_recipe(verify), provider=fake)
    assert [(v.passed, v.message) for v in result.layers[1].candidates[0].verdicts] == [(True, "")]


async def test_the_samples_of_an_agent_are_told_apart_in_the_verification_error() -> None:
    recipe = verify_recipe({"checks": [ANSWER_LINE]})
    recipe["layers"][0]["agents"] = [{"model": "openai/a", "n": 2}]
    with pytest.raises(moa.VerificationError) as info:
        await moa.run("Q", recipe, provider=FakeProvider(replies={"openai/a": ["no", "none"]}))
    assert info.value.failures == [
        f"the answer of layer 1, openai/a:\n{NO_ANSWER_LINE}",
        f"the answer of layer 1, openai/a #2:\n{NO_ANSWER_LINE}",
    ]


async def test_a_repair_is_not_told_of_a_judge_that_could_not_be_asked() -> None:
    rejected = RequestRejectedError("judge down", status_code=400)
    fake = FakeProvider(replies={"openai/a": ["no line", "Answer: 1"], "openai/s": [rejected, "yes"]})
    result = await moa.run("Q", verify_recipe({"checks": [ANSWER_LINE, judge()], "repairs": 1}), provider=fake)
    assert result.output == "Answer: 1"
    (repair,) = fake.to_model("openai/a")[1:]
    assert repair.messages[-1] == {"role": "user", "content": REPAIR.format(failures=NO_ANSWER_LINE)}
    # Each judge call is one token at temperature 0, with its alternatives' logprobs.
    assert all(r.params["logprobs"] is True and r.params["top_logprobs"] == 5 for r in fake.to_model("openai/s"))
    assert [(o.name, o.step) for o in result.layers[1].outputs] == [
        ("openai/s", 1),
        ("openai/a (repair)", 2),
        ("openai/s", 3),
    ]


async def test_a_repair_of_an_answer_whose_only_failure_is_a_judge_outage_says_no_check_ran() -> None:
    rejected = RequestRejectedError("judge down", status_code=400)
    fake = FakeProvider(
        replies={"openai/a": ["first", "Answer: 1"], "openai/b": ["second"], "openai/s": [rejected, "no", "yes"]}
    )
    result = await moa.run("Q", verify_recipe({"checks": [judge()], "repairs": 1}, "openai/a", "openai/b"),
                           provider=fake)  # fmt: skip
    assert result.output == "Answer: 1"
    assert fake.to_model("openai/a")[1].messages[-1]["content"] == REPAIR.format(failures="- (no check ran)")
    assert [o.step for o in result.layers[1].outputs] == [1, 2, 3, 4]  # two verdicts, the repair, its verdict


async def test_fallbacks_follow_the_judges_and_the_repairer_in_the_layers_calls() -> None:
    fake = FakeProvider(
        says_yes_to_answer_lines,
        replies={"openai/a": ["no"], "openai/b": ["still no"], "openai/f": ["nor this"], "openai/g": ["Answer: 5"]},
    )
    verify = {
        "checks": [judge()],
        "repairs": 1,
        "repair_with": {"model": "openai/b"},
        "fallback": [{"model": "openai/f"}, {"model": "openai/g"}],
    }
    result = await moa.run("Q", verify_recipe(verify), provider=fake)
    assert result.output == "Answer: 5"
    models = ["openai/a", "openai/s", "openai/b", "openai/s", "openai/f", "openai/s", "openai/g", "openai/s"]
    assert [r.model for r in fake.requests] == models


async def test_a_later_verify_keeps_the_agreement_an_earlier_one_counted() -> None:
    fake = FakeProvider(replies={"openai/a": ["Answer: 12"], "openai/b": ["Answer: 12"], "openai/f": ["Answer: 13"]})
    recipe = verify_recipe({"checks": [{"type": "agree"}]}, "openai/a", "openai/b", "openai/f")
    recipe["layers"].append({"kind": "verify", "checks": [ANSWER_LINE]})
    result = await moa.run("Q", recipe, provider=fake)
    assert [c.agreement for c in result.layers[2].candidates] == [2, 2]


async def test_agreement_compares_phrases_without_the_questions_own_words() -> None:
    fake = FakeProvider(
        replies={"openai/a": ["The capital of France is Paris."], "openai/b": ["Paris."], "openai/f": ["Lyon."]}
    )
    recipe = verify_recipe({"checks": [{"type": "agree", "extract": "phrase"}]}, "openai/a", "openai/b", "openai/f")
    result = await moa.run("What is the capital of France?", recipe, provider=fake)
    assert [c.text for c in result.layers[1].candidates] == ["The capital of France is Paris.", "Paris."]


class SettingsFake(PricedFake):
    """Notes the settings each call is priced with, too."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings: list[dict[str, Any]] = []

    def worst_case_cost(self, model: str, params: Any, prompt_tokens: int) -> float | None:
        self.settings.append(dict(params))
        return super().worst_case_cost(model, params, prompt_tokens)


def test_the_plan_of_verify_prices_every_repair_fallback_and_verdict() -> None:
    # Layer 1 (by pieces): a ("SA", "Q") 13 tokens, b 7.  Each repair goes to the costliest writer with the
    # longest system prompt ("SA"), an empty answer and every check failing at its longest message (267 tokens),
    # twice; the fallback sees "Be exact." and "Q" ((9 + 1 + 32) // 3 + 1 = 15); the judge is asked about each
    # of the 5 answers (2 inputs, 2 repairs, 1 fallback), quoting the longest answer (f's 9 tokens): 79 tokens.
    verify = {
        "checks": [ANSWER_LINE, judge()],
        "repairs": 2,
        "fallback": [{"model": "openai/f", "system": "Be exact."}],
    }
    recipe = verify_recipe(verify, "openai/a", "openai/b")
    recipe["layers"][0]["agents"][0]["system"] = "SA"
    fake = SettingsFake()
    assert [p.worst_case_usd for p in moa.plan(recipe, "Q", provider=fake)] == [20.0, 2 * 267 + 15 + 5 * 79]
    assert fake.priced[2:] == [("openai/a", 267), ("openai/b", 267)] * 2 + [("openai/f", 15), ("openai/s", 79)]
    # The judge's calls are priced with the settings they are made with: one token, with logprobs.
    verdict = {**VERDICT_SETTINGS, "logprobs": True, "top_logprobs": 5, "drop_params": True}
    assert {key: fake.settings[-1].get(key) for key in verdict} == verdict


def test_the_plan_of_verify_with_repair_with_prices_that_agent_and_each_fallback_in_turn() -> None:
    # One repair by b ("Fix it.", 165 tokens: one check's longest message), then f ("Q": 7) and a ("S", "Q": 13);
    # the judge sees 2 + 1 + 2 answers, quoting the longest (f's 9 tokens): 79 each.
    verify = {
        "checks": [judge()],
        "repairs": 1,
        "repair_with": {"model": "openai/b", "system": "Fix it."},
        "fallback": [{"model": "openai/f"}, {"model": "openai/a", "system": "S"}],
    }
    fake = PricedFake()
    plans = moa.plan(verify_recipe(verify, "openai/a", "openai/b"), "Q", provider=fake)
    assert [p.worst_case_usd for p in plans] == [14.0, 165 + 7 + 13 + 5 * 79]
    assert fake.priced[2:] == [("openai/b", 165), ("openai/f", 7), ("openai/a", 13), ("openai/s", 79)]


async def test_a_second_verify_repairs_a_repaired_answer_with_the_writers_system_prompt() -> None:
    fake = FakeProvider(replies={"openai/a": ["first try", "Answer: 2", "Answer: 2 and long enough"]})
    recipe = verify_recipe({"checks": [ANSWER_LINE], "repairs": 1})
    recipe["layers"][0]["agents"] = [{"model": "openai/a", "system": "SA"}]
    recipe["layers"].append({"kind": "verify", "checks": [{"type": "regex", "pattern": "long enough"}], "repairs": 1})
    result = await moa.run("Q", recipe, provider=fake)
    assert result.output == "Answer: 2 and long enough"
    assert [r.messages[0] for r in fake.requests] == [{"role": "system", "content": "SA"}] * 3


async def test_without_repairs_a_reused_answer_says_nothing_of_repairs() -> None:
    fake = FakeProvider(replies={"openai/a": ["no line"]})
    first = await moa.run("Q", {"name": "p", "layers": [{"kind": "propose", "agents": [{"model": "openai/a"}]}]},
                          provider=fake)  # fmt: skip
    with pytest.raises(moa.VerificationError) as info:
        await moa.run("Q", verify_recipe({"checks": [ANSWER_LINE]}, "openai/b"), provider=fake, reuse=first.layers[:1])
    assert info.value.failures == [f"the answer of layer 1, openai/a:\n{NO_ANSWER_LINE}"]


def test_a_writers_repair_is_planned_with_the_longest_of_their_system_prompts() -> None:
    def repair_tokens(*systems: str | None) -> int:
        recipe = verify_recipe({"checks": [ANSWER_LINE], "repairs": 1}, "openai/a", "openai/b")
        for agent, system in zip(recipe["layers"][0]["agents"], systems, strict=True):
            agent["system"] = system
        fake = PricedFake()
        moa.plan(recipe, "Q", provider=fake)
        return fake.priced[-1][1]

    longest = repair_tokens("Be brief, and say what you did.", None)
    assert repair_tokens("Be brief, and say what you did.", "Z") == longest > repair_tokens("Z", None)


async def test_repairs_and_verdicts_reserve_the_answer_they_quote_at_its_token_count() -> None:
    # The answer (54 characters, 11 words: the fake's 11 completion tokens) counts 11 tokens in each prompt quoting it.
    wrong = "this answer has many letters and no answer line at all"
    fake = PricedFake(replies={"openai/a": [wrong, "Answer: 1"], "openai/s": ["no", "yes"]})
    recipe = verify_recipe({"checks": [judge()], "repairs": 1})
    await moa.run("Q", recipe, provider=fake, max_cost_usd=10_000)
    failures = "- llm: the judge says no: right"
    repair = [
        USER,
        {"role": "assistant", "content": wrong},
        {"role": "user", "content": REPAIR.format(failures=failures)},
    ]
    judged = llm_messages(moa.load_recipe(recipe).layers[1].checks[0], "Q", wrong)
    quoted = [(len(wrong), 11)]
    assert [tokens for _, tokens in fake.priced[-4:]] == [
        prompt_tokens([USER]),
        prompt_tokens(judged, quoted),
        prompt_tokens(repair, quoted),
        prompt_tokens(llm_messages(moa.load_recipe(recipe).layers[1].checks[0], "Q", "Answer: 1"), [(9, 2)]),
    ]
    assert prompt_tokens(judged, quoted) < prompt_tokens(judged) and prompt_tokens(repair, quoted) < prompt_tokens(
        repair
    )


def test_the_plan_of_verify_quotes_planned_answers_as_tokens_only() -> None:
    # A planned answer has no characters to take off a prompt, only its tokens (a's 7).  The lengths here put
    # the repair's and the verdict's prompts each on a multiple of 3 characters, where one character less
    # would be a token less.  The aggregator after it quotes the answer verify plans to pass on.
    recipe = verify_recipe({"checks": [judge()], "repairs": 1})
    recipe["layers"][0]["agents"][0]["system"] = "SS"
    recipe["layers"].append({"kind": "aggregate", "agents": [{"model": "openai/f", "system": "AAA"}]})
    fake = PricedFake()
    assert [p.worst_case_usd for p in moa.plan(recipe, "QQ", provider=fake)] == [13.0, 164 + 2 * 78, 208.0]
    assert fake.priced == [("openai/a", 13), ("openai/a", 164), ("openai/s", 78), ("openai/f", 208)]


def test_verifys_planned_answers_are_tokens_only() -> None:
    loaded = moa.load_recipe(verify_recipe({"checks": [ANSWER_LINE]}, "openai/a", "openai/b"))
    context = EstimateContext(1, loaded.layers[1], [USER], plan_layer(loaded, 1), PricedFake())
    assert moa._stages.STAGES["verify"].estimate(context, [(0, 7), (0, 5)]).outputs == [(0, 7), (0, 7)]


# --- execute: what each program's run makes of its candidate (a scripted sandbox: no program runs) ------------


def run_of(stdout: str = "", exit_status: int | None = 0, limit: str | None = None, reason: str | None = None) -> Any:
    from moa._sandbox import Execution

    return lambda code: Execution(code, exit_status, stdout, "", 0.5, limit, reason, ("scripted",))


#: What each program "prints": a program is its own name.
PROGRAMS = {
    "twelve": run_of("it is 12\n"),
    "silent": run_of(" \n"),
    "words": run_of("no digits here\n"),
    "slow": run_of(exit_status=None, limit="wall_time", reason="it ran past its 2 s"),
    "crash": run_of(exit_status=1),
    "exit(13)": run_of(exit_status=13),
}
EXECUTE_LIMITS = {"wall_s": 2, "cpu_s": 1, "memory_mb": 64, "processes": 4, "output_bytes": 2000}


class ScriptedBox:
    """A sandbox that runs nothing: each program's result is ``PROGRAMS[code]``; notes the runs, at most how
    many at once."""

    name = "scripted"

    def __init__(self) -> None:
        self.runs: list[tuple[str, Any]] = []
        self.running = 0
        self.most = 0

    async def run(self, code: str, *, limits: Any = None, stdin: str = "") -> Any:
        self.runs.append((code, limits))
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0)  # the other programs of the layer start meanwhile, as many as it allows
        self.running -= 1
        return PROGRAMS[code.strip()](code)


@pytest.fixture
def box(monkeypatch: pytest.MonkeyPatch) -> ScriptedBox:
    import moa._sandbox

    scripted = ScriptedBox()
    monkeypatch.setattr(moa._sandbox, "sandbox", lambda backend="local", **options: scripted)
    return scripted


def fenced(program: str) -> str:
    return f"Here:\n```python\n{program}\n```"


def execute_recipe(replies: dict[str, Any], **execute: Any) -> tuple[dict[str, Any], FakeProvider]:
    agents = [{"model": model} for model in replies]
    layers = [{"kind": "propose", "agents": agents}, {"kind": "execute", "limits": EXECUTE_LIMITS, **execute}]
    return {"name": "x", "retry": {"max_attempts": 1}, "layers": layers}, FakeProvider(replies=replies)


def execute_summary(result: moa.Result, layer: int = 2) -> str | None:
    found = result.layers[layer - 1]
    return moa._stages.STAGES["execute"].summary(Outcome(found.candidates, found.considered), layer)


async def test_each_program_that_gives_no_answer_says_why_and_the_summary_counts_them(box: ScriptedBox) -> None:
    programs = ("twelve", "silent", "words", "slow", "crash")
    replies: dict[str, Any] = {f"openai/{p}": [fenced(p)] for p in programs}
    replies["openai/quiet"] = [fenced("silent")]
    recipe, fake = execute_recipe({**replies, "openai/prose": ["no code, just 7"]}, no_code="pass")
    result = await moa.run("Q", recipe, provider=fake)
    layer = result.layers[1]
    assert [c.text for c in layer.candidates] == ["12", "no code, just 7"]
    assert [(c.execution or {}).get("no_answer") for c in layer.considered] == [
        None,
        "printed nothing",
        "printed no number",
        "it ran past its 2 s",
        "the program failed",
        "printed nothing",
        None,
    ]
    assert layer.considered[-1].execution is None  # passed on as written
    assert execute_summary(result) == (
        "programs: 1 of 6 gave an answer (2 printed nothing, 1 printed no number, 1 wall_time, "
        "1 the program failed); 1 without code went on as written"
    )
    from moa._sandbox import Limits

    assert [limits for _, limits in box.runs] == [Limits(**EXECUTE_LIMITS)] * 6


async def test_no_answer_at_all_is_an_execution_error_naming_each_candidates_reason(box: ScriptedBox) -> None:
    cut = Completion(fenced("twelve"), completion_tokens=5, finish_reason="length")
    replies: dict[str, Any] = {"openai/a": [fenced("silent")], "openai/b": [cut], "openai/f": ["no code"]}
    recipe, fake = execute_recipe(replies, answer="last_line")
    recipe["layers"][0]["agents"][0]["n"] = 2
    with pytest.raises(moa.ExecutionError) as info:
        await moa.run("Q", recipe, provider=fake)
    assert info.value.failures == [
        "the answer of layer 1, openai/a: printed nothing",
        "the answer of layer 1, openai/a #2: printed nothing",
        "the answer of layer 1, openai/b: it was cut by max_tokens: its program may be incomplete",
        "the answer of layer 1, openai/f: no code found in it",
    ]
    assert [code.strip() for code, _ in box.runs] == ["silent", "silent"]  # the cut program never runs
    assert [c.execution for c in info.value.considered][2:] == [
        {"code": None, "no_answer": "it was cut by max_tokens: its program may be incomplete"},
        {"code": None, "no_answer": "no code found in it"},
    ]


async def test_a_second_execute_finding_no_code_takes_the_earlier_answer_away(box: ScriptedBox) -> None:
    recipe, fake = execute_recipe({"openai/a": [fenced("twelve")]})
    recipe["layers"].append({"kind": "execute", "unanswered": "keep"})
    result = await moa.run("Q", recipe, provider=fake)
    assert [(c.text, c.answer) for c in result.layers[1].candidates] == [("12", "12")]
    assert [(c.text, c.answer) for c in result.layers[2].candidates] == [("12", None)]
    assert execute_summary(result, 2) == "programs: 1 of 1 gave an answer"
    assert execute_summary(result, 3) == "programs: 0 of 1 gave an answer (1 no code found in it)"


async def test_only_runs_a_reused_answer_of_the_agent_named(box: ScriptedBox) -> None:
    first = await moa.run("Q", {"name": "p", "layers": [{"kind": "propose", "agents": [{"model": "openai/a"}]}]},
                          provider=FakeProvider(replies={"openai/a": [fenced("twelve")]}))  # fmt: skip
    recipe, fake = execute_recipe({"openai/b": ["unused"]}, only=["openai/a"])
    result = await moa.run("Q", recipe, provider=fake, reuse=first.layers[:1])
    assert [c.answer for c in result.layers[1].candidates] == ["12"] and fake.requests == []


async def test_programs_run_together_one_per_cpu(box: ScriptedBox, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    recipe, fake = execute_recipe({f"openai/{n}": [fenced("twelve")] for n in "abcd"})
    await moa.run("Q", recipe, provider=fake)
    assert (len(box.runs), box.most) == (4, 3)
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one at a time
    box.most = 0
    await moa.run("Q", recipe, provider=fake)
    assert (len(box.runs), box.most) == (8, 1)


def test_the_code_a_pattern_finds_is_its_group_or_its_whole_match_when_the_group_took_no_part() -> None:
    from moa._stages.execute import answer_of, code_of
    from moa.recipe import ExecuteLayer

    layer = ExecuteLayer(kind="execute", code_pattern=r"(?:CODE:(.+))|print\(\d\)")
    assert code_of(layer, "CODE:x = 1") == "x = 1"
    assert code_of(layer, "then print(7)") == "print(7)"
    assert answer_of(ExecuteLayer(kind="execute", answer="last_line"), " \n\n") is None


def test_executes_planned_answers_are_what_a_program_may_print() -> None:
    recipe, _ = execute_recipe({"openai/a": ["x"]})
    loaded = moa.load_recipe(recipe)
    context = EstimateContext(1, loaded.layers[1], [USER], plan_layer(loaded, 1), PricedFake())
    assert moa._stages.STAGES["execute"].estimate(context, [(0, 7)]).outputs == [(0, 2000)]
    assert moa._stages.STAGES["execute"].estimate(context, [(0, 7), (0, 3000)]).outputs == [(0, 3000)] * 2


# --- vote: who wins, what the extractor is asked, the summary and the plan ---------------------------------------


def vote_recipe(replies: dict[str, Any], **vote: Any) -> tuple[dict[str, Any], FakeProvider]:
    agents = [{"model": model} for model in replies if model != "openai/s"]
    layers = [{"kind": "propose", "agents": agents}, {"kind": "vote", **vote}]
    return {"name": "vote", "retry": {"max_attempts": 1}, "layers": layers}, PricedFake(replies=replies)


def vote_summary(result: moa.Result, layer: int = 2) -> str | None:
    found = result.layers[layer - 1]
    return moa._stages.STAGES["vote"].summary(Outcome(found.candidates, found.considered), layer)


def extractor_asked(question: str, text: str) -> list[dict[str, str]]:
    """What the extractor is sent, written out."""
    return [
        {"role": "system", "content": "You read a response to a question and report only the final answer it gives."},
        {
            "role": "user",
            "content": f"Question:\n{question}\n\nResponse:\n{text}\n\nReply with the final answer the response gives, "
            "as briefly as possible (a number, a word or a short phrase), or NONE if it gives none.",
        },
    ]


async def test_the_extractor_is_asked_each_candidates_answer_and_none_or_a_failure_is_no_vote() -> None:
    texts = {"openai/a": "I get seven.", "openai/b": "No idea.", "openai/f": "Hmm."}
    extracted = ["7", "NONE", RequestRejectedError("bad request", status_code=400)]
    replies: dict[str, Any] = {**{model: [text] for model, text in texts.items()}, "openai/s": extracted}
    recipe, fake = vote_recipe(replies, extract="llm", extractor={"model": "openai/s"})
    result = await moa.run("Q", recipe, provider=fake, max_cost_usd=10_000)
    asked = fake.to_model("openai/s")
    assert [r.messages for r in asked] == [extractor_asked("Q", text) for text in texts.values()]
    assert all(r.params["temperature"] == 0.0 and r.params["max_tokens"] == 32 for r in asked)
    assert [(o.step, o.ok) for o in result.layers[1].outputs] == [(1, True), (2, True), (3, False)]
    assert [(c.answer, c.votes) for c in result.layers[1].considered] == [("7", 1), (None, 0), (None, 0)]
    assert vote_summary(result) == "votes: '7' x1; 2 without an answer"
    # Each extraction reserves its prompt with the candidate's answer counted as its tokens (words, here).
    reserved = [tokens for model, tokens in fake.priced if model == "openai/s"][-3:]
    assert reserved == [prompt_tokens(extractor_asked("Q", t), [(len(t), len(t.split()))]) for t in texts.values()]


async def test_a_tie_goes_to_the_answer_given_first_or_with_ties_all_to_every_tied_answer() -> None:
    replies: dict[str, Any] = {"openai/a": ["12"], "openai/b": ["13"], "openai/f": ["no number"]}
    first = await moa.run("Q", vote_recipe(replies, extract="number")[0], provider=FakeProvider(replies=replies))
    assert [c.text for c in first.layers[1].candidates] == ["12"]
    every = await moa.run(
        "Q", vote_recipe(replies, extract="number", ties="all")[0], provider=FakeProvider(replies=replies)
    )
    assert [c.text for c in every.layers[1].candidates] == ["12", "13"]
    assert vote_summary(every) == "votes: '12' x1, '13' x1; 1 without an answer"


async def test_without_any_answer_the_first_candidate_goes_on() -> None:
    replies: dict[str, Any] = {"openai/a": ["no idea"], "openai/b": ["none either"]}
    result = await moa.run("Q", vote_recipe(replies, extract="number")[0], provider=FakeProvider(replies=replies))
    assert [c.text for c in result.layers[1].candidates] == ["no idea"]
    assert vote_summary(result) == "votes: no answer extracted from 2 candidate(s); the first goes on"


async def test_the_summary_lists_answers_by_votes_and_cuts_long_ones() -> None:
    replies: dict[str, Any] = {"openai/a": ["12"], "openai/b": ["7"], "openai/f": ["7"], "openai/free": ["none"]}
    result = await moa.run("Q", vote_recipe(replies, extract="number")[0], provider=FakeProvider(replies=replies))
    assert vote_summary(result) == "votes: '7' x2, '12' x1; 1 without an answer"
    long = {"openai/a": ["x" * 24], "openai/b": ["y" * 25]}
    result = await moa.run("Q", vote_recipe(long, extract="text")[0], provider=FakeProvider(replies=long))
    assert vote_summary(result) == f"votes: {'x' * 24!r} x1, {'y' * 21 + '...'!r} x1"


async def test_a_program_that_gave_no_answer_does_not_vote_with_its_code(box: ScriptedBox) -> None:
    replies: dict[str, Any] = {"openai/a": [fenced("twelve")], "openai/b": [fenced("exit(13)")]}
    recipe, fake = execute_recipe(replies, unanswered="keep")
    recipe["layers"].append({"kind": "vote", "extract": "number"})
    result = await moa.run("Q", recipe, provider=fake)
    assert [(c.answer, c.votes) for c in result.layers[2].considered] == [("12", 1), (None, 0)]
    assert vote_summary(result, 3) == "votes: '12' x1; 1 without an answer"


def test_the_plan_of_a_vote_prices_an_extraction_per_candidate_and_passes_on_its_longest() -> None:
    replies: dict[str, Any] = {"openai/a": ["x"], "openai/b": ["x"], "openai/s": ["x"]}
    recipe, _ = vote_recipe(replies, extract="llm", extractor={"model": "openai/s"})
    settings = SettingsFake()
    plans = moa.plan(recipe, "Q", provider=settings)
    # Each extraction quotes a planned answer (a's 7 tokens, b's 5) as its tokens only; the question's length
    # puts the prompt on a multiple of 3 characters, where one character less would be a token less.
    asked = extractor_asked("Q", "")
    assert settings.priced[2:] == [
        ("openai/s", prompt_tokens(asked, [(0, 7)])),
        ("openai/s", prompt_tokens(asked, [(0, 5)])),
    ]
    assert prompt_tokens(asked, [(1, 7)]) == prompt_tokens(asked, [(0, 7)]) - 1
    assert {key: settings.settings[-1].get(key) for key in ("temperature", "max_tokens")} == {
        "temperature": 0.0,
        "max_tokens": 32,
    }
    assert plans[1].worst_case_usd == prompt_tokens(asked, [(0, 7)]) + prompt_tokens(asked, [(0, 5)])
    loaded = moa.load_recipe(recipe)
    context = EstimateContext(1, loaded.layers[1], [USER], plan_layer(loaded, 1), PricedFake())
    assert moa._stages.STAGES["vote"].estimate(context, [(0, 7), (0, 5)]).outputs == [(0, 7)]


# --- rank: the judge's prompts, the scores of each mode, the summary and the plan --------------------------------

TASTE = {"worst": 0, "fine": 1, "best": 2}


def judged_pairwise(instruction: str, question: str, a: str, b: str) -> list[dict[str, str]]:
    """What a pairwise judge is sent, written out."""
    return [
        {"role": "system", "content": instruction},
        {
            "role": "user",
            "content": f"Question:\n{question}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\n"
            "Which response answers the question better? Answer A or B.",
        },
    ]


def judged_pointwise(instruction: str, question: str, response: str) -> list[dict[str, str]]:
    """What a pointwise judge is sent, written out."""
    return [
        {"role": "system", "content": instruction},
        {
            "role": "user",
            "content": f"Question:\n{question}\n\nResponse:\n{response}\n\nIs the response correct? Answer yes or no.",
        },
    ]


def prefers_by_taste(request: Any, index: int) -> str:
    shown = request.messages[-1]["content"].split("Response A:\n")[1]
    a, b = shown.split("\n\nResponse B:\n")[0], shown.split("\n\nResponse B:\n")[1].split("\n\n")[0]
    return "A" if TASTE[a] > TASTE[b] else "B"


def rank_recipe(**rank: Any) -> dict[str, Any]:
    agents = [{"model": m} for m in ("openai/a", "openai/b", "openai/f")]
    layers = [{"kind": "propose", "agents": agents}, {"kind": "rank", "judge": {"model": "openai/s"}, **rank}]
    return {"name": "rank", "retry": {"max_attempts": 1}, "layers": layers}


def rank_summary(result: moa.Result, layer: int = 2) -> str | None:
    found = result.layers[layer - 1]
    return moa._stages.STAGES["rank"].summary(Outcome(found.candidates, found.considered), layer)


PROPOSED = {"openai/a": ["worst"], "openai/b": ["best"], "openai/f": ["fine"]}


async def test_a_knockout_plays_each_match_in_both_orders_and_its_champion_ranks_first() -> None:
    fake = PricedFake(responder=prefers_by_taste, replies=PROPOSED)
    recipe = rank_recipe(pairs="knockout", instruction="Pick the better one.")
    result = await moa.run("Q", recipe, provider=fake, max_cost_usd=10_000)
    asked = fake.to_model("openai/s")
    pairs = [("worst", "best"), ("best", "worst"), ("best", "fine"), ("fine", "best")]
    assert [r.messages for r in asked] == [judged_pairwise("Pick the better one.", "Q", a, b) for a, b in pairs]
    # best beats worst in both orders (+2 / -2), then fine (+2 / -2); the champion is then put 1 above the top.
    assert [c.score for c in result.layers[1].considered] == [-2.0, 5.0, -2.0]
    assert [c.text for c in result.layers[1].candidates] == ["best"]
    assert [o.step for o in result.layers[1].outputs] == [1, 2, 3, 4]
    assert rank_summary(result) == "rank: #2 (+5.00), #1 (-2.00), #3 (-2.00); the best 1 go on"
    # Each verdict reserves its prompt with both answers quoted as their tokens (a word each).
    reserved = [tokens for model, tokens in fake.priced if model == "openai/s"][-4:]
    assert reserved == [
        prompt_tokens(judged_pairwise("Pick the better one.", "Q", a, b), [(len(a), 1), (len(b), 1)]) for a, b in pairs
    ]


async def test_a_knockout_tie_keeps_the_champion() -> None:
    fake = FakeProvider(replies={**PROPOSED, "openai/s": ["A"]})  # always the first shown: every match a tie
    result = await moa.run("Q", rank_recipe(pairs="knockout"), provider=fake)
    assert [c.score for c in result.layers[1].considered] == [1.0, 0.0, 0.0]
    assert [c.text for c in result.layers[1].candidates] == ["worst"]


async def test_pointwise_scores_are_p_yes_and_a_failed_verdict_is_a_half() -> None:
    rejected = RequestRejectedError("bad request", status_code=400)
    fake = FakeProvider(replies={**PROPOSED, "openai/s": ["no", rejected, "yes"]})
    recipe = rank_recipe(mode="pointwise", top_k=2, instruction="Is it right?")
    result = await moa.run("Q", recipe, provider=fake)
    assert [r.messages for r in fake.to_model("openai/s")] == [
        judged_pointwise("Is it right?", "Q", text) for text in ("worst", "best", "fine")
    ]
    assert [c.score for c in result.layers[1].considered] == [0.0, 0.5, 1.0]
    assert [c.text for c in result.layers[1].candidates] == ["fine", "best"]
    assert rank_summary(result) == "rank: #3 (+1.00), #2 (+0.50), #1 (+0.00); the best 2 go on"


async def test_pairwise_judges_with_the_layers_instruction() -> None:
    fake = FakeProvider(prefers_by_taste, replies=PROPOSED)
    result = await moa.run("Q", rank_recipe(instruction="Which is better?"), provider=fake)
    assert fake.to_model("openai/s")[0].messages == judged_pairwise("Which is better?", "Q", "worst", "best")
    assert [c.score for c in result.layers[1].considered] == [-4.0, 4.0, 0.0]


@pytest.mark.parametrize("mode", [{"mode": "pointwise"}, {"pairs": "knockout"}])
async def test_a_lone_candidate_goes_on_unjudged_with_a_score_of_zero(mode: dict[str, Any]) -> None:
    fake = FakeProvider(replies={"openai/a": ["only"]})
    recipe = rank_recipe(**mode)
    recipe["layers"][0]["agents"] = [{"model": "openai/a"}]
    result = await moa.run("Q", recipe, provider=fake)
    assert [(c.text, c.score) for c in result.layers[1].considered] == [("only", 0.0)]
    assert [c.score for c in result.layers[1].candidates] == [0.0]
    assert fake.to_model("openai/s") == []
    assert rank_summary(result) == "rank: #1 (+0.00); the best 1 go on"


@pytest.mark.parametrize(
    ("rank", "asked", "quoted", "calls"),
    [
        ({"mode": "pointwise", "instruction": "Right?"}, judged_pointwise("Right?", "Q", ""), 1, 3),
        ({"instruction": "Better?"}, judged_pairwise("Better?", "Q", "", ""), 2, 6),
    ],
)
def test_the_plan_of_a_rank_prices_each_verdict_quoting_the_longest_answer(
    rank: dict[str, Any], asked: list[dict[str, str]], quoted: int, calls: int
) -> None:
    settings = SettingsFake()
    plans = moa.plan(rank_recipe(top_k=2, **rank), "Q", provider=settings)
    tokens = prompt_tokens(asked, [(0, 9)] * quoted)  # f's 9 tokens are the longest answer
    assert settings.priced[3:] == [("openai/s", tokens)]
    assert plans[1].worst_case_usd == tokens * calls
    verdict = {**VERDICT_SETTINGS, "logprobs": True, "top_logprobs": 5}
    assert {key: settings.settings[-1].get(key) for key in verdict} == verdict
    loaded = moa.load_recipe(rank_recipe(top_k=2, **rank))
    context = EstimateContext(1, loaded.layers[1], [USER], plan_layer(loaded, 1), PricedFake())
    assert moa._stages.STAGES["rank"].estimate(context, [(0, 5), (0, 7), (0, 3)]).outputs == [(0, 7), (0, 5)]


# --- debate: what each agent is sent round by round, and the plan ------------------------------------------------


def debate_recipe(templates: dict[str, str], rounds: int = 3, **debate: Any) -> dict[str, Any]:
    agents = [{"model": "openai/a", "system": "SA"}, {"model": "openai/b"}, {"model": "openai/f"}]
    layer = {"kind": "debate", "agents": agents, "rounds": rounds, "template": templates["seq"], **debate}
    return {"name": "debate", "retry": {"max_attempts": 1}, "layers": [layer, {"kind": "vote"}]}


async def test_each_debate_round_shows_an_agent_the_others_latest_answers_and_a_failed_one_drops_out(
    templates: dict[str, str],
) -> None:
    rejected = RequestRejectedError("bad request", status_code=400)
    # Answers of one long word each: quoted at their token count (1), they are far shorter than their characters.
    word = {name: (name[0] + "qrs"[int(name[1]) - 1]) * 12 for name in ("a1", "b1", "b2", "b3", "f1", "f2", "f3")}
    replies: dict[str, list[Any]] = {
        "openai/a": [word["a1"], rejected],
        "openai/b": [word["b1"], word["b2"], word["b3"]],
        "openai/f": [word["f1"], word["f2"], word["f3"]],
    }
    fake = PricedFake(replies=replies)
    result = await moa.run("Q", debate_recipe(templates, min_success=2), provider=fake, max_cost_usd=100_000)
    assert [r.messages for r in fake.to_model("openai/a")][1] == [
        {"role": "system", "content": "SA"},
        USER,
        {"role": "assistant", "content": word["a1"]},
        {"role": "user", "content": f"LxxxSyyyyyy[{word['b1']}][{word['f1']}]"},
    ]
    third = fake.to_model("openai/b")[2].messages
    assert third == [
        USER,
        {"role": "assistant", "content": word["b1"]},
        {"role": "user", "content": f"LxxxSyyyyyy[{word['a1']}][{word['f1']}]"},
        {"role": "assistant", "content": word["b2"]},
        {"role": "user", "content": f"LxxxSyyyyyyyyy[{word['f2']}]"},  # a dropped out in round 2
    ]
    assert [c.text for c in result.layers[0].candidates] == [word["b3"], word["f3"]]
    # Round 3 reserves its prompt with every answer it quotes counted as its tokens (one each).
    quoted = [(24, 1)] * 5  # b1, a1, f1 (round 2), then b2, f2
    reserved = [tokens for model, tokens in fake.priced if model == "openai/b"][-1]
    assert reserved == prompt_tokens(third, quoted) < prompt_tokens(third, quoted[:3])


def test_the_plan_of_a_debate_prices_each_round_with_every_answer_so_far(templates: dict[str, str]) -> None:
    # Round 1: a ("SA", "Q") 13 tokens, b and f 7.  Round r > 1: the conversation, then the turn rendered once per
    # later round so far (it says layer 1, step r: "LxxxS" and 3r y's, "[]" per other agent), quoting every
    # answer so far at the agents' limits: a 7, b 5, f 9 tokens each round.
    fake = PricedFake()
    plans = moa.plan(debate_recipe(templates), "Q", provider=fake)
    turn = [f"LxxxS{'y' * 3 * r}[][]" for r in (2, 3)]
    own = {"openai/a": [{"role": "system", "content": "SA"}, USER], "openai/b": [USER], "openai/f": [USER]}
    limits = {"openai/a": 7, "openai/b": 5, "openai/f": 9}
    expected = [(model, prompt_tokens(own[model])) for model in own]
    for number, text in enumerate(turn, start=2):
        for model in own:
            history = (number - 1) * sum(limits.values())  # each round so far: its own answer and the others'
            messages = [*own[model], {"role": "user", "content": text * (number - 1)}]
            expected.append((model, prompt_tokens(messages, [(0, history)])))
    assert fake.priced == expected
    assert plans[0].worst_case_usd == sum(tokens for _, tokens in expected)
    loaded = moa.load_recipe(debate_recipe(templates))
    context = EstimateContext(0, loaded.layers[0], [USER], plan_layer(loaded, 0), PricedFake())
    assert moa._stages.STAGES["debate"].estimate(context, []).outputs == [(0, 7), (0, 5), (0, 9)]


# --- verify's checks: json_schema and agree, their verdicts word for word ----------------------------------------


def verdicts_of(result: moa.Result, layer: int = 2) -> list[list[tuple[str, bool, str, int]]]:
    return [[(v.check, v.passed, v.message, v.layer) for v in c.verdicts] for c in result.layers[layer - 1].considered]


async def test_a_json_schema_check_finds_the_document_where_the_answer_holds_it() -> None:
    schema = {
        "type": "object",
        "required": ["a"],
        "properties": {"a": {"type": "integer"}, "items": {"type": "array", "items": {"type": "integer"}}},
    }
    texts = [
        'Sure: {"a": 1}',  # after some words
        'First {"a": 2} then {"b": 3}',  # the first document
        '{"a": 1, "items": [1, "x"]}',  # a mismatch deep inside
        "x42",  # no document: not even the number after the first letter
        '{not json} but {"a": 4}',  # nothing parses from the first brace on
    ]
    replies = {f"openai/m{n}": [text] for n, text in enumerate(texts)}
    recipe = verify_recipe(
        {"checks": [{"type": "json_schema", "json_schema": schema}], "if_none_pass": "last"}, *replies
    )
    result = await moa.run("Q", recipe, provider=FakeProvider(replies=replies))
    assert verdicts_of(result) == [
        [("json_schema", True, "", 2)],
        [("json_schema", True, "", 2)],
        [("json_schema", False, "at /items/1: 'x' is not of type 'integer'", 2)],
        [("json_schema", False, "the answer holds no JSON document", 2)],
        [("json_schema", False, "the answer holds no JSON document", 2)],
    ]


async def test_a_json_schema_check_finds_an_array_too_the_first_one_from_the_first_bracket() -> None:
    schema = {"type": "array", "items": {"type": "integer"}}
    replies = {"openai/a": ["Here: [1, 2]"], "openai/b": ['Both [3] and ["x"]'], "openai/f": ["{bad} [5]"]}
    recipe = verify_recipe(
        {"checks": [{"type": "json_schema", "json_schema": schema}], "if_none_pass": "last"}, *replies
    )
    result = await moa.run("Q", recipe, provider=FakeProvider(replies=replies))
    # The first bracket or brace starts the document looked for: from "{bad}" on nothing parses.
    assert [v[0][1:3] for v in verdicts_of(result)] == [
        (True, ""),
        (True, ""),
        (False, "the answer holds no JSON document"),
    ]


async def test_a_schema_that_cannot_be_used_says_so() -> None:
    schema = {"$ref": "#/definitions/missing"}
    recipe = verify_recipe({"checks": [{"type": "json_schema", "json_schema": schema}], "if_none_pass": "last"})
    result = await moa.run("Q", recipe, provider=FakeProvider(replies={"openai/a": ['{"a": 1}']}))
    assert verdicts_of(result) == [
        [
            (
                "json_schema",
                False,
                "the schema cannot be used: _WrappedReferencingError: PointerToNowhere: '/definitions/missing' "
                "does not exist within {'$ref': '#/definitions/missing'}",
                2,
            )
        ]
    ]


async def test_agreement_counts_candidates_when_told_and_lists_answers_by_count_then_cut() -> None:
    replies = {"openai/a": ["9"], "openai/b": ["9"], "openai/f": ["10"]}
    recipe = verify_recipe(
        {"checks": [{"type": "agree", "k": 3, "independent": "candidates"}], "if_none_pass": "last"}, *replies
    )
    result = await moa.run("Q", recipe, provider=FakeProvider(replies=replies))
    assert verdicts_of(result)[2] == [
        ("agree", False, "1 independent candidate(s) gave '10', 3 needed (answers: '9' x2, '10' x1)", 2)
    ]
    long = {"openai/a": ["y" * 24], "openai/b": ["z" * 25]}
    recipe = verify_recipe({"checks": [{"type": "agree", "extract": "text"}], "if_none_pass": "last"}, *long)
    result = await moa.run("Q", recipe, provider=FakeProvider(replies=long))
    shown = f"answers: {'y' * 24!r} x1, {'z' * 21 + '...'!r} x1"
    assert verdicts_of(result)[1] == [
        ("agree", False, f"1 independent agent(s) gave {'z' * 21 + '...'!r}, 2 needed ({shown})", 2)
    ]
    passing = {"openai/a": ["9"], "openai/b": ["9"]}
    result = await moa.run(
        "Q", verify_recipe({"checks": [{"type": "agree"}]}, *passing), provider=FakeProvider(replies=passing)
    )
    assert verdicts_of(result) == [[("agree", True, "", 2)], [("agree", True, "", 2)]]


async def test_agreement_reads_an_earlier_stages_answer_and_no_answer_from_a_cut_one() -> None:
    cut = Completion("It is 12 and", completion_tokens=3, finish_reason="length")
    replies: dict[str, Any] = {"openai/a": ["I think 12."], "openai/b": [cut]}
    recipe = verify_recipe({"checks": [{"type": "agree", "extract": "text"}], "if_none_pass": "last"}, *replies)
    recipe["layers"].insert(1, {"kind": "vote", "extract": "number"})
    result = await moa.run("Q", recipe, provider=FakeProvider(replies=replies))
    # The vote's answer is "12" (the text is the candidate's whole answer): agreement compares "12".
    assert verdicts_of(result, 3) == [
        [("agree", False, "1 independent agent(s) gave '12', 2 needed (answers: '12' x1)", 3)]
    ]
    cut_only = verify_recipe({"checks": [{"type": "agree"}], "if_none_pass": "last"}, "openai/b")
    result = await moa.run("Q", cut_only, provider=FakeProvider(replies=replies))
    assert verdicts_of(result) == [[("agree", False, "no answer could be read from it", 2)]]
    assert result.layers[1].considered[0].agreement is None
