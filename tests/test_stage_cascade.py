"""`cascade` (FrugalGPT's threshold cascade and cost-aware cascade routing) through real litellm and the loopback
server: which tiers are asked, with what, on which score, and what the trace and the errors say."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from conftest import loopback_recipe

import moa
from moa._stages.rank import pointwise_messages

#: Two checks: an answer line (passes "Answer: 5") and an even number (passes only "Answer: 6").
HALF = [{"type": "regex", "pattern": r"^Answer: \d+$"}, {"type": "regex", "pattern": r"[02468]$"}]


def tier(model: str, **fields: Any) -> dict[str, Any]:
    return {"agent": {"model": f"openai/{model}", **fields.pop("agent", {})}, **fields}


def cascade(server: Any, tiers: list[dict[str, Any]], score: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return loopback_recipe(server, [{"kind": "cascade", "tiers": tiers, "score": score, **fields}])


def asked(server: Any) -> list[str]:
    return [r.model for r in server.requests if r.path.endswith("/chat/completions")]


@pytest.mark.parametrize(
    ("accept", "answered_by", "models"),
    [
        (0.4, "openai/small", ["small"]),  # the score (0.5) is above the bar: stop
        (0.5, "openai/small", ["small"]),  # at the bar: stop
        (0.51, "openai/big", ["small", "big"]),  # below it: escalate, and the last tier's answer stands
    ],
)
async def test_a_tier_stops_at_or_above_its_threshold_and_escalates_below(
    script: Any, accept: float, answered_by: str, models: list[str]
) -> None:
    server = script({"small": "Answer: 5", "big": "Answer: 6"})
    recipe = cascade(server, [tier("small", accept=accept, agent={"system": "Be brief."}), tier("big")],
                     {"type": "checks", "checks": HALF})  # fmt: skip
    result = await moa.run("What is 2 + 4?", recipe, api_key="k")
    assert asked(server) == models
    layer = result.layers[0]
    assert layer.answered_by == answered_by and result.output == ("Answer: 5" if len(models) == 1 else "Answer: 6")
    first = layer.decisions[0]
    assert (first.option, first.score, first.threshold) == ("openai/small", 0.5, accept)
    assert first.action == ("accept" if len(models) == 1 else "escalate")
    assert first.reason == (f"score 0.5 >= {accept:g}" if len(models) == 1 else f"score 0.5 < {accept:g}")
    if len(models) == 2:
        last = layer.decisions[1]
        assert (last.option, last.action, last.score, last.reason) == (
            "openai/big",
            "accept",
            1.0,
            "the last tier's answer stands",
        )
    # Each tier is sent the conversation with its own system prompt, and nothing of the tiers before it.
    small, *rest = server.requests
    assert small.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 4?"}]
    assert [r.messages for r in rest] == [[{"role": "user", "content": "What is 2 + 4?"}]] * len(rest)
    assert [(o.name, o.step) for o in layer.outputs] == [(f"openai/{m}", n + 1) for n, m in enumerate(models)]
    assert [round(c.score or 0, 2) for c in layer.considered] == [0.5, 1.0][: len(models)]


async def test_always_escalate_runs_and_scores_every_tier_and_the_last_answers(script: Any) -> None:
    server = script({"small": "Answer: 6", "medium": "Answer: 5", "big": "Answer: 7"})
    tiers = [tier("small", accept=0.1), tier("medium"), tier("big")]  # `accept` is not read: every tier runs
    recipe = cascade(server, tiers, {"type": "checks", "checks": HALF}, strategy="always_escalate")
    result = await moa.run("Q", recipe, api_key="k")
    assert asked(server) == ["small", "medium", "big"] and result.output == "Answer: 7"
    decisions = [(d.option, d.action, d.score, d.reason) for d in result.layers[0].decisions]
    assert decisions == [("openai/small", "escalate", 1.0, "always escalate"),
                         ("openai/medium", "escalate", 0.5, "always escalate"),
                         ("openai/big", "accept", 0.5, "the last tier's answer stands")]  # fmt: skip
    assert all(d.tokens for d in result.layers[0].decisions)


async def test_a_judge_scores_with_its_probability_of_yes_and_is_asked_one_token(script: Any) -> None:
    def judge_logprobs(body: dict[str, Any], text: str) -> dict[str, float]:
        return {"yes": math.log(0.3), "no": math.log(0.7)}

    server = script({"small": "Answer: 5", "big": "Answer: 6", "judge": "no"}, logprobs=judge_logprobs)
    score = {"type": "judge", "judge": {"model": "openai/judge"}, "instruction": "Check the arithmetic."}
    result = await moa.run("What is 2 + 4?", cascade(server, [tier("small", accept=0.25), tier("big")], score),
                           api_key="k")  # fmt: skip
    assert asked(server) == ["small", "judge"]  # P(yes) 0.3 >= 0.25: no escalation
    judge = server.requests[1]
    assert judge.messages == pointwise_messages("Check the arithmetic.", "What is 2 + 4?", "Answer: 5")
    assert judge.body is not None and judge.body["max_tokens"] == 1 and judge.body["logprobs"] is True
    (decision,) = result.layers[0].decisions
    assert decision.action == "accept" and decision.score == pytest.approx(0.3)
    (candidate,) = result.layers[0].candidates
    assert [(v.check, v.passed, v.message) for v in candidate.verdicts] == [("judge", False, "P(yes) = 0.3")]


async def test_confidence_is_exp_of_the_mean_token_logprob_asked_with_the_tiers_own_call(script: Any) -> None:
    confidence = {"small": 0.55, "medium": 0.8, "big": 0.99}

    def token_logprob(body: dict[str, Any], text: str) -> float:
        return math.log(confidence[str(body["model"])])

    server = script({"small": "Answer: 5", "medium": "Answer: 6", "big": "Answer: 7"}, token_logprob=token_logprob)
    tiers = [tier("small", accept=0.6), tier("medium", accept=0.75), tier("big")]
    result = await moa.run("Q", cascade(server, tiers, {"type": "confidence"}), api_key="k")
    assert asked(server) == ["small", "medium"] and result.output == "Answer: 6"
    assert all(r.body is not None and r.body["logprobs"] is True for r in server.requests)
    scores = [(d.option, d.action, round(d.score or 0, 6)) for d in result.layers[0].decisions]
    assert scores == [("openai/small", "escalate", 0.55), ("openai/medium", "accept", 0.8)]
    assert [round(o.mean_logprob or 0, 6) for o in result.layers[0].outputs] == [
        round(math.log(0.55), 6), round(math.log(0.8), 6)
    ]  # fmt: skip


async def test_agreement_with_an_earlier_tier_closes_the_cascade(script: Any) -> None:
    server = script({"small": "I get 42.", "medium": "It is 42", "big": "41"})
    score = {"type": "checks", "checks": [{"type": "agree", "k": 2}]}
    tiers = [tier("small", accept=1.0), tier("medium", accept=1.0), tier("big")]
    result = await moa.run("Q", cascade(server, tiers, score), api_key="k")
    assert asked(server) == ["small", "medium"] and result.output == "It is 42"
    small, medium = result.layers[0].considered
    assert small.score == 0.0 and small.verdicts[0].message.startswith("1 independent agent(s) gave '42', 2 needed")
    assert medium.score == 1.0 and medium.agreement == 2


@pytest.mark.parametrize(
    ("weight", "models", "answered_by"),
    [
        # Cost is no object: the best tier first; after its answer (score 1.0) nothing can gain.
        (0.0, ["big"], "openai/big"),
        # Cost counts: the cheap tier first (gain 0.6 - 0.1 = 0.5 against 0.9 - 1.0 < 0); its answer scores 0.5, and
        # the big tier's gain, max(0, 0.9 - 0.5) - 0.1 x 10 < 0: stop.
        (0.1, ["small"], "openai/small"),
        # A little cost: the big tier still gains more (0.9 - 0.1 = 0.8 against 0.6 - 0.01 = 0.59).
        (0.01, ["big"], "openai/big"),
    ],
)
async def test_cost_aware_chooses_each_next_tier_by_quality_gained_minus_lambda_times_cost(
    script: Any, weight: float, models: list[str], answered_by: str
) -> None:
    server = script({"small": "Answer: 5", "big": "Answer: 6"})
    tiers = [tier("small", quality=0.6, cost=1), tier("big", quality=0.9, cost=10)]
    recipe = cascade(server, tiers, {"type": "checks", "checks": HALF}, strategy="cost_aware", cost_weight=weight)
    result = await moa.run("Q", recipe, api_key="k")
    assert asked(server) == models and result.layers[0].answered_by == answered_by
    runs = [d for d in result.layers[0].decisions if d.action == "run"]
    assert [d.option for d in runs] == [f"openai/{m}" for m in models]


async def test_cost_aware_goes_on_while_a_tier_gains_and_keeps_the_best_scored_answer(script: Any) -> None:
    server = script({"small": "Answer: 5", "medium": "Answer: 7", "big": "Answer: 6"})
    tiers = [tier("small", quality=0.6, cost=1), tier("medium", quality=0.7, cost=2), tier("big", quality=0.95, cost=4)]
    recipe = cascade(server, tiers, {"type": "checks", "checks": HALF}, strategy="cost_aware", cost_weight=0.05)
    result = await moa.run("Q", recipe, api_key="k")
    # First: small 0.55, medium 0.6, big 0.75 -> big (score 1.0); then nothing gains: stop.
    assert asked(server) == ["big"] and result.output == "Answer: 6"
    (run, accept) = result.layers[0].decisions
    assert run.gain == pytest.approx(0.75)
    assert run.reason == "gain +0.75 = max(0, quality 0.95 - best 0) - 0.05 x cost 4"
    assert (accept.action, accept.score, accept.reason) == ("accept", 1.0, "the highest score of the tiers run")
    # With the big tier failing (400), the next best runs, and every answer it got is kept to choose from.
    server.add_fault("400", times=1, model="big")
    result = await moa.run("Q", recipe, api_key="k")
    # Then medium (0.7 - 0.1 = 0.6 against 0.55) scores 0.5; small still gains max(0, 0.6 - 0.5) - 0.05 > 0 and
    # scores 0.5 too: of the tie, the later tier in the cascade's order (medium) answers.
    actions = [(d.option, d.action) for d in result.layers[0].decisions]
    assert actions == [("openai/big", "run"), ("openai/big", "failed"), ("openai/medium", "run"),
                       ("openai/small", "run"), ("openai/medium", "accept")]  # fmt: skip
    assert result.output == "Answer: 7"


async def test_a_failed_tier_is_passed_over_and_a_failed_last_tier_is_a_cascade_error(script: Any) -> None:
    server = script({"small": "Answer: 5", "big": "Answer: 6"})
    recipe = cascade(server, [tier("small", accept=0.9), tier("big")], {"type": "checks", "checks": HALF})
    server.add_fault("400", times=1, model="small")
    result = await moa.run("Q", recipe, api_key="k")
    assert result.output == "Answer: 6"
    assert [(d.option, d.action) for d in result.layers[0].decisions] == [
        ("openai/small", "failed"), ("openai/big", "accept")
    ]  # fmt: skip
    assert result.layers[0].decisions[0].reason.startswith("its call failed (RequestRejectedError: ")
    server.add_fault("400", times=1, model="big")
    with pytest.raises(moa.CascadeError) as caught:
        await moa.run("Q", recipe, api_key="k")
    error = caught.value
    assert str(error).startswith("layer 1 (cascade): the last tier, openai/big, gave no answer\n  openai/big: ")
    assert [(d.option, d.action) for d in error.decisions] == [("openai/small", "escalate"), ("openai/big", "failed")]
    partial = error.partial
    assert [o.name for o in partial.calls] == ["openai/small", "openai/big"] and partial.calls[1].error is not None
    assert [(d.option, d.action) for d in partial.layers[0].decisions] == [
        ("openai/small", "escalate"), ("openai/big", "failed")
    ]  # fmt: skip


async def test_a_recipe_tier_answers_the_whole_conversation_and_its_calls_are_in_the_layer(
    script: Any, tmp_path: Path
) -> None:
    server = script({"small": "Answer: 5", "s": "Answer: 8", "fuse": "Answer: 6"})
    strong = loopback_recipe(server, [
        {"kind": "propose", "agents": [{"model": "openai/s", "n": 2}]},
        {"kind": "aggregate", "agents": [{"model": "openai/fuse"}]},
    ])  # fmt: skip
    strong["name"] = "strong"
    (tmp_path / "strong.yaml").write_text(__import__("json").dumps(strong))
    tiers = [tier("small", accept=1.0), {"name": "self-moa", "recipe": "strong.yaml"}]
    recipe = cascade(server, tiers, {"type": "checks", "checks": HALF})
    (tmp_path / "cascade.yaml").write_text(__import__("json").dumps(recipe))
    conversation = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                    {"role": "user", "content": "Q2"}]  # fmt: skip
    loaded = moa.load_recipe(tmp_path / "cascade.yaml")
    assert loaded.calls_per_query == 1 + 3 and loaded.models == ["openai/small", "openai/s", "openai/fuse"]
    result = await moa.run(conversation, loaded, api_key="k")
    assert result.output == "Answer: 6" and result.layers[0].answered_by == "self-moa"
    layer = result.layers[0]
    assert [o.name for o in layer.outputs] == ["openai/small", "self-moa: openai/s", "self-moa: openai/s",
                                               "self-moa: openai/fuse"]  # fmt: skip
    assert all(o.layer == 1 for o in layer.outputs) and len({o.agent for o in layer.outputs}) == 4
    assert result.usage.total_tokens == sum(o.usage.total_tokens for o in layer.outputs) > 0
    proposers = [r for r in server.requests if r.model == "s"]
    assert [r.messages for r in proposers] == [conversation, conversation]  # the whole conversation, not its question


def problems(layer: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(moa.RecipeError) as caught:
        moa.load_recipe({"name": "c", "layers": [layer]})
    return caught.value.problems


def cascade_layer(**fields: Any) -> dict[str, Any]:
    layer = {"kind": "cascade", "tiers": [tier("a", accept=0.5), tier("b")], "score": {"type": "confidence"}}
    return {**layer, **fields}


@pytest.mark.parametrize(
    ("fields", "where", "message"),
    [
        ({"tiers": [tier("a"), tier("b")]}, "layers[0]", "tiers[0].accept: every tier but the last needs one"),
        ({"tiers": [tier("a", accept=0.5), tier("b", accept=0.5)]}, "layers[0]", "the last tier's answer stands"),
        ({"tiers": [tier("a", accept=0.5)]}, "layers[0].tiers", "at least 2 items"),
        ({"tiers": [tier("a", accept=1.5), tier("b")]}, "layers[0].tiers[0].accept",
         "must be a number from 0 to 1, or `never` (got 1.5)"),
        ({"tiers": [{"accept": 0.5}, tier("b")]}, "layers[0].tiers[0]", "give exactly one of `agent` and `recipe`"),
        ({"tiers": [tier("a", accept=0.5, agent={"n": 2}), tier("b")]}, "layers[0].tiers[0]", "its `n` must be 1"),
        ({"tiers": [tier("a", accept=0.5), tier("a")]}, "layers[0]", "two tiers are called 'openai/a'"),
        ({"strategy": "cost_aware"}, "layers[0]", "`strategy: cost_aware` needs `cost_weight`"),
        ({"strategy": "cost_aware", "cost_weight": 1, "tiers": [tier("a", quality=0.5, cost=1), tier("b", cost=2)]},
         "layers[0]", "tiers[1]: `strategy: cost_aware` needs quality"),
        ({"cost_weight": 0.1}, "layers[0]", "cost_weight: only `strategy: cost_aware` reads them"),
        ({"cost_unit": "tokens"}, "layers[0]", "cost_unit: only `strategy: cost_aware` reads them"),
        ({"tiers": [tier("a", accept=0.5), {"recipe": "self-moa"}]}, "layers[0]",
         "tiers[1]: a recipe's answer has no token logprobs to score"),
        ({"score": {"type": "checks", "checks": [{"type": "agree", "k": 3}]}}, "layers[0]",
         "score.checks[0].k: 3 tiers can never agree: there are 2"),
        ({"score": {"type": "vibes"}}, "layers[0].score.type", "vibes"),
    ],
)  # fmt: skip
def test_a_cascade_that_cannot_work_is_refused_naming_its_field(
    fields: dict[str, Any], where: str, message: str
) -> None:
    found = problems(cascade_layer(**fields))
    assert any(path == where and message in text for path, text in found), found


def test_a_tier_recipe_that_does_not_load_is_named_with_the_field(tmp_path: Path) -> None:
    layer = cascade_layer(tiers=[tier("a", accept=0.5), {"recipe": str(tmp_path / "missing.yaml")}],
                          score={"type": "checks", "checks": HALF})  # fmt: skip
    missing = f"{tmp_path / 'missing.yaml'} does not load: file not found"
    assert problems(layer) == [("layers[0].tiers[1].recipe", missing)]


def test_plans_and_listings_count_every_tier_and_every_judge_call() -> None:
    layer = cascade_layer(tiers=[tier("a", accept=0.5), tier("b", accept=0.5), tier("c")],
                          score={"type": "judge", "judge": {"model": "openai/j"}})  # fmt: skip
    recipe = moa.load_recipe({"name": "c", "layers": [layer]})
    assert recipe.calls_per_query == 3 + 3 and recipe.layers[0].calls_vary
    (plan,) = moa.plan(recipe)
    assert plan.calls == 6 and plan.agents == ["openai/a", "openai/b", "openai/c", "openai/j"]
    lines = recipe.layers[0].describe(0)
    assert lines[1] == "openai/a (stop at 0.5) -> openai/b (stop at 0.5) -> openai/c (its answer stands)"


def test_an_eval_says_who_answered_how_often_and_what_escalating_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four questions; the small tier is sure (confidence 0.9) of the first three and unsure of the last."""
    import json

    from moa.cli import main
    from moa.testing import LoopbackServer

    def reply(body: dict[str, Any], index: int) -> str:
        question = body["messages"][-1]["content"]
        return "Answer: 4 is right here" if body["model"] == "big" else f"Answer: {question[-1]}"

    def token_logprob(body: dict[str, Any], text: str) -> float:
        unsure = body["model"] == "small" and body["messages"][-1]["content"].endswith("4")
        return math.log(0.3 if unsure else 0.9)

    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{n}", "prompt": f"Say {n}", "answers": [str(n)]}) + "\n"
                                 for n in (1, 2, 3, 4)))  # fmt: skip
    with LoopbackServer(responder=reply, token_logprob=token_logprob) as server:
        recipe = cascade(server, [tier("small", accept=0.5), tier("big")], {"type": "confidence"})
        (tmp_path / "c.yaml").write_text(json.dumps(recipe))
        out = tmp_path / "out"
        assert main(["eval", "qa", "-r", str(tmp_path / "c.yaml"), "--data", str(questions), "--out", str(out)]) == 0
        assert len(server.completions("small")) == 4 and len(server.completions("big")) == 1
    control = json.loads((out / "summary.json").read_text())["control"]
    # In tokens: the loopback models are unpriced.  Each decision carries what its tier's answer took.
    (layer,) = json.loads((out / "items.jsonl").read_text().splitlines()[0])["traces"][0]["layers"]
    assert layer["decisions"][0]["tokens"] == layer["outputs"][0]["usage"]["total_tokens"] > 0
    found = control["layer 1 (cascade)"]
    assert found["runs"] == 4 and found["answered_by"] == {"openai/small": 0.75, "openai/big": 0.25}
    assert found["ran"] == {"openai/small": 1.0, "openai/big": 0.25} and found["unit"] == "tokens"
    small_cost, big_cost = found["cost_if_always"]["openai/small"], found["cost_if_always"]["openai/big"]
    assert found["costliest"] == "openai/big" and big_cost > small_cost
    assert found["cost_per_run"] == pytest.approx(small_cost + big_cost / 4)
    assert found["saved_vs_costliest"] == pytest.approx(1 - (small_cost + big_cost / 4) / big_cost)
    printed = capsys.readouterr().out
    saved = round(100 * found["saved_vs_costliest"])
    assert (f"loopback: layer 1 (cascade) answered by openai/small 75 %, openai/big 25 %; {saved} % fewer tokens than "
            "always openai/big (its mean where it ran)\n") in printed  # fmt: skip
