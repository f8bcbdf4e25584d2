"""Cost-aware control, exactly: the decisions, reasons, costs and errors of `cascade` and `route` (rules, classifier,
neighbours), the answers of recipe tiers and routes, and the worst cases each plans.

Written against the mutants that survived the rest of the suite (``benchmarks/mutation_score.py``, the
``_CONTROL_STAGES`` and ``_CONTROL_EVAL`` selections).  In-process, with ``moa.testing.FakeProvider``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import moa
from moa import Completion, RequestRejectedError
from moa._call.cost import prompt_tokens
from moa._prompt import build_messages
from moa._stages.base import Outcome
from moa._stages.cascade import CONFIDENCE, Cascade
from moa._stages.checks import llm_messages
from moa._stages.rank import pointwise_messages
from moa.recipe import LLMCheck
from moa.result import Decision
from moa.testing import FakeProvider

#: The most tokens each model answers (the worst case of a call without ``max_tokens``).
LIMITS = {"openai/a": 7, "openai/b": 5, "openai/f": 9, "openai/s": 11, "openai/t": 13}


class PricedFake(FakeProvider):
    """Every call costs $1 a prompt token (a worst case counts tokens); notes every price asked, with its settings."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.priced: list[tuple[str, int]] = []
        self.settings: list[dict[str, Any]] = []

    def worst_case_cost(self, model: str, params: Any, prompt_tokens: int) -> float | None:
        self.priced.append((model, prompt_tokens))
        self.settings.append(dict(params))
        return float(prompt_tokens)

    def max_output_tokens(self, model: str) -> int:
        return LIMITS.get(model, 4096)


def mentions_the_question(text: str, question: str) -> tuple[bool, str]:
    """A python check: whether the answer holds the question's last character."""
    found = question[-1] in text
    return found, "" if found else f"{question[-1]!r} is not in the answer"


def tier(model: str, **fields: Any) -> dict[str, Any]:
    return {"agent": {"model": f"openai/{model}", **fields.pop("agent", {})}, **fields}


def cascade(tiers: list[dict[str, Any]], score: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "c", "layers": [{"kind": "cascade", "tiers": tiers, "score": score, **fields}]}


def llm(model: str, criterion: str = "right") -> dict[str, Any]:
    return {"type": "llm", "judge": {"model": f"openai/{model}"}, "criterion": criterion}


def said(text: str, *, usd: float | None = None, tokens: int = 3, **fields: Any) -> Completion:
    return Completion(text, prompt_tokens=tokens - 1, completion_tokens=1, cost_usd=usd, **fields)


def decisions(result: Any) -> list[tuple[Any, ...]]:
    """(option, action, reason) of each decision of a run's first layer, or of an error's."""
    found = result.layers[0].decisions if hasattr(result, "layers") else result.decisions
    return [(d.option, d.action, d.reason) for d in found]


# --- cascade: how answers are scored ---------------------------------------------------------------------------------

SCHEMA = {"type": "json_schema", "json_schema": {"type": "object", "required": ["n"]}}
PYTHON = {"type": "python", "function": "test_mutation_control:mentions_the_question"}


async def test_every_kind_of_check_scores_a_tier_and_each_judge_sees_that_tiers_answer() -> None:
    # a's answer: the JSON document and the question's "5" pass, s says yes and t no: 3 of 4.  b's: no JSON, no "5".
    fake = FakeProvider(replies={"openai/a": ['{"n": 5}'], "openai/b": ["seven"], "openai/s": ["yes"],
                                 "openai/t": ["no"]})  # fmt: skip
    checks = [llm("s", "is right"), SCHEMA, PYTHON, llm("t", "is short")]
    result = await moa.run("Q5", cascade([tier("a", accept=0.8), tier("b")], {"type": "checks", "checks": checks}),
                           provider=fake)  # fmt: skip
    layer = result.layers[0]
    first, second = layer.considered
    assert [(v.check, v.passed, v.message, v.layer) for v in first.verdicts] == [
        ("llm", True, "", 1),
        ("json_schema", True, "", 1),
        ("python", True, "", 1),
        ("llm", False, "the judge says no: is short", 1),
    ]
    assert first.score == 0.75 and second.score == 0.25
    assert [(v.check, v.passed) for v in second.verdicts] == [("llm", True), ("json_schema", False),
                                                              ("python", False), ("llm", False)]  # fmt: skip
    assert second.verdicts[2].message == "'5' is not in the answer"
    assert second.verdicts[1].message == "the answer holds no JSON document"
    assert decisions(result) == [("openai/a", "escalate", "score 0.75 < 0.8"),
                                 ("openai/b", "accept", "the last tier's answer stands")]  # fmt: skip
    # Each judge is sent its own criterion about the answer of the tier it scores, asked with logprobs, one token.
    judged = [(r.model, r.messages) for r in fake.requests if r.model in ("openai/s", "openai/t")]
    criteria = [LLMCheck.model_validate(llm(m, c)) for m, c in (("s", "is right"), ("t", "is short"))]
    assert judged == [
        ("openai/s", llm_messages(criteria[0], "Q5", '{"n": 5}')),
        ("openai/t", llm_messages(criteria[1], "Q5", '{"n": 5}')),
        ("openai/s", llm_messages(criteria[0], "Q5", "seven")),
        ("openai/t", llm_messages(criteria[1], "Q5", "seven")),
    ]
    assert all(r.params.get("logprobs") is True and r.params.get("max_tokens") == 1
               for r in fake.requests if r.model in ("openai/s", "openai/t"))  # fmt: skip
    # The tiers are asked without logprobs (only a confidence score reads them).
    assert all("logprobs" not in r.params for r in fake.requests if r.model in ("openai/a", "openai/b"))
    # Steps: a tier's call is its tier's; its judges' calls follow every call made before them.
    assert [(o.name, o.step) for o in layer.outputs] == [("openai/a", 1), ("openai/s", 2), ("openai/t", 3),
                                                         ("openai/b", 2), ("openai/s", 5), ("openai/t", 6)]  # fmt: skip


async def test_a_judge_that_fails_is_a_failed_check_and_the_cascade_goes_on() -> None:
    fake = FakeProvider(replies={"openai/a": ["Answer: 5"], "openai/b": ["Answer: 6"],
                                 "openai/s": [RequestRejectedError("bad judge request"), "yes"]})  # fmt: skip
    result = await moa.run("Q", cascade([tier("a", accept=0.5), tier("b")], {"type": "checks", "checks": [llm("s")]}),
                           provider=fake)  # fmt: skip
    first = result.layers[0].considered[0]
    assert [(v.check, v.passed, v.message) for v in first.verdicts] == [
        (
            "llm",
            False,
            "the judge could not be asked (RequestRejectedError: layer 1, agent 2 (openai/s), sample 0, model "
            "openai/s: bad judge request)",
        )
    ]
    assert decisions(result)[0] == ("openai/a", "escalate", "score 0 < 0.5") and result.output == "Answer: 6"


async def test_a_judge_score_at_one_half_passes_its_verdict_and_an_unreadable_or_failed_judge_is_no_score() -> None:
    half = said("yes", top_logprobs={"yes": math.log(0.5), "no": math.log(0.5)})
    fake = FakeProvider(replies={"openai/a": ["Answer: 5"], "openai/b": ["Answer: 6"], "openai/c": ["Answer: 7"],
                                 "openai/s": [half, "maybe", RequestRejectedError("judge down")]})  # fmt: skip
    score = {"type": "judge", "judge": {"model": "openai/s"}}
    tiers = [tier("a", accept=0.6), tier("b", accept=0.1), tier("c")]
    result = await moa.run("Q", cascade(tiers, score), provider=fake)
    a, b, c = result.layers[0].considered
    assert (a.score, [(v.check, v.passed, v.message, v.layer) for v in a.verdicts]) == (
        0.5, [("judge", True, "P(yes) = 0.5", 1)]
    )  # fmt: skip
    assert b.score is None and [(v.passed, v.message) for v in b.verdicts] == [
        (False, "the judge gave no verdict (it said 'maybe')")
    ]
    assert c.score is None and [(v.passed, v.message) for v in c.verdicts] == [
        (
            False,
            "the judge could not be asked (RequestRejectedError: layer 1, agent 3 (openai/s), sample 0, "
            "model openai/s: judge down)",
        )
    ]
    assert decisions(result) == [("openai/a", "escalate", "score 0.5 < 0.6"), ("openai/b", "escalate", "no score"),
                                 ("openai/c", "accept", "the last tier's answer stands")]  # fmt: skip


async def test_a_confidence_score_without_logprobs_is_no_score_and_never_lets_a_tier_stop() -> None:
    fake = FakeProvider(replies={"openai/a": ["Answer: 5"], "openai/b": [said("Answer: 6", mean_logprob=-0.1)]})
    result = await moa.run("Q", cascade([tier("a", accept=0.1), tier("b")], {"type": "confidence"}), provider=fake)
    assert decisions(result) == [("openai/a", "escalate", "no score"),
                                 ("openai/b", "accept", "the last tier's answer stands")]  # fmt: skip
    assert result.layers[0].decisions[1].score == pytest.approx(math.exp(-0.1))
    assert all({k: r.params.get(k) for k in CONFIDENCE} == CONFIDENCE for r in fake.requests)


async def test_a_tier_that_never_stops_escalates_with_its_score_and_the_next_tier_runs() -> None:
    fake = FakeProvider(replies={"openai/a": ["Answer: 5"], "openai/b": ["Answer: 6"], "openai/f": ["Answer: 8"]})
    regex = {"type": "checks", "checks": [{"type": "regex", "pattern": "^Answer"}]}
    tiers = [tier("a", accept="never"), tier("b", accept=0.5), tier("f")]
    result = await moa.run("Q", cascade(tiers, regex), provider=fake)
    assert decisions(result) == [("openai/a", "escalate", "this tier never stops the cascade"),
                                 ("openai/b", "accept", "score 1 >= 0.5")]  # fmt: skip
    assert [(d.index, d.score, d.threshold) for d in result.layers[0].decisions] == [(0, 1.0, None), (1, 1.0, 0.5)]
    assert result.output == "Answer: 6"


async def test_every_decision_carries_what_its_tiers_answer_cost() -> None:
    fake = FakeProvider(replies={"openai/a": [said("Answer: 5", usd=0.25, tokens=4)],
                                 "openai/b": [said("Answer: 6", usd=0.5, tokens=9)]})  # fmt: skip
    regex = {"type": "checks", "checks": [{"type": "regex", "pattern": "6"}]}
    result = await moa.run("Q", cascade([tier("a", accept=0.5), tier("b")], regex), provider=fake)
    assert [(d.action, d.cost_usd, d.tokens) for d in result.layers[0].decisions] == [
        ("escalate", 0.25, 4), ("accept", 0.5, 9)
    ]  # fmt: skip


def test_the_cascades_summary_line_names_each_tiers_score_and_action() -> None:
    steps = [
        Decision(option="a", index=0, action="run", reason="gain"),
        Decision(option="a", index=0, action="escalate", score=0.5, reason="low"),
        Decision(option="b", index=1, action="failed", reason="400"),
        Decision(option="c", index=2, action="accept", score=1.0, reason="the last"),
    ]
    assert Cascade().summary(Outcome([], [], steps), 1) == "cascade: a 0.50 escalate -> b failed -> c 1.00 accept"
    assert Cascade().summary(Outcome([], [], []), 1) is None


# --- cascade: cost-aware ---------------------------------------------------------------------------------------------

#: Two checks: an answer line (passes "Answer: 5") and an even number (passes only "Answer: 6").
HALF = {
    "type": "checks",
    "checks": [{"type": "regex", "pattern": r"^Answer: \d+$"}, {"type": "regex", "pattern": "[02468]$"}],
}


async def test_cost_aware_reads_a_zero_score_as_no_gain_yet_and_keeps_the_best_answer_not_the_last() -> None:
    # big first (0.9 - 0.2 = 0.7 against 0.6 - 0.1 = 0.5); it scores 0, so small still gains 0.5: it runs and scores
    # 0.5, and its answer (the earlier tier's) is the best.
    fake = FakeProvider(replies={"openai/a": ["Answer: 5"], "openai/b": ["nothing"]})
    tiers = [tier("a", quality=0.6, cost=1), tier("b", quality=0.9, cost=2)]
    result = await moa.run("Q", cascade(tiers, HALF, strategy="cost_aware", cost_weight=0.1), provider=fake)
    assert decisions(result) == [
        ("openai/b", "run", "gain +0.7 = max(0, quality 0.9 - best 0) - 0.1 x cost 2"),
        ("openai/a", "run", "gain +0.5 = max(0, quality 0.6 - best 0) - 0.1 x cost 1"),
        ("openai/a", "accept", "the highest score of the tiers run"),
    ]
    assert result.output == "Answer: 5" and [d.index for d in result.layers[0].decisions] == [1, 0, 0]
    # Each run decision carries what its tier's answer took, once it ran (the fake counts words: 1 + 1 and 1 + 2).
    assert [d.tokens for d in result.layers[0].decisions] == [2, 3, 3]


async def test_cost_aware_runs_the_earlier_of_tiers_that_gain_alike_and_a_free_or_worthless_tier_counts_as_such() -> (
    None
):
    # a and b gain alike (0.5 - 0.1 x 1): a, the earlier, runs first; it scores 1.0, after which nothing gains.
    fake = FakeProvider(replies={"openai/a": ["Answer: 6"], "openai/b": ["Answer: 8"]})
    tiers = [tier("a", quality=0.5, cost=1), tier("b", quality=0.5, cost=1)]
    result = await moa.run("Q", cascade(tiers, HALF, strategy="cost_aware", cost_weight=0.1), provider=fake)
    assert [(d.option, d.action) for d in result.layers[0].decisions] == [("openai/a", "run"), ("openai/a", "accept")]
    # A tier of quality 0 gains nothing however cheap; one of cost 0 loses nothing to its cost: b (0.3) before
    # a (0 - 0), and a never runs after it.
    tiers = [tier("a", quality=0.0, cost=0), tier("b", quality=0.3, cost=0)]
    result = await moa.run("Q", cascade(tiers, HALF, strategy="cost_aware", cost_weight=0.5), provider=fake)
    assert decisions(result) == [("openai/b", "run", "gain +0.3 = max(0, quality 0.3 - best 0) - 0.5 x cost 0"),
                                 ("openai/b", "accept", "the highest score of the tiers run")]  # fmt: skip


async def test_cost_aware_runs_the_best_tier_when_none_gains_and_says_why() -> None:
    # Gains: a 0.5 - 0.5 x 1 = 0 exactly, b 0.9 - 0.5 x 2 = -0.1: a runs (an answer is needed), and then nothing gains.
    fake = FakeProvider(replies={"openai/a": ["Answer: 5"], "openai/b": ["Answer: 6"]})
    tiers = [tier("a", quality=0.5, cost=1), tier("b", quality=0.9, cost=2)]
    result = await moa.run("Q", cascade(tiers, HALF, strategy="cost_aware", cost_weight=0.5), provider=fake)
    assert decisions(result) == [
        ("openai/a", "run", "gain +0 = max(0, quality 0.5 - best 0) - 0.5 x cost 1; no answer yet, so the best of "
                            "the tiers left runs"),
        ("openai/a", "accept", "the highest score of the tiers run"),
    ]  # fmt: skip


async def test_a_cost_aware_cascade_whose_every_tier_fails_is_a_cascade_error_naming_each_failure() -> None:
    fake = FakeProvider(replies={"openai/a": [RequestRejectedError("a is down")],
                                 "openai/b": [RequestRejectedError("b is down")]})  # fmt: skip
    tiers = [tier("a", quality=0.6, cost=1), tier("b", quality=0.9, cost=2)]
    with pytest.raises(moa.CascadeError) as caught:
        await moa.run("Q", cascade(tiers, HALF, strategy="cost_aware", cost_weight=0.1), provider=fake)
    assert str(caught.value) == (
        "layer 1 (cascade): none of the 2 tiers it ran gave an answer\n"
        "  openai/b: its call failed (RequestRejectedError: layer 1, agent 1 (openai/b), sample 0, model openai/b: "
        "b is down)\n"
        "  openai/a: its call failed (RequestRejectedError: layer 1, agent 0 (openai/a), sample 0, model openai/a: "
        "a is down)"
    )
    assert [(d.option, d.action) for d in caught.value.decisions] == [
        ("openai/b", "run"), ("openai/b", "failed"), ("openai/a", "run"), ("openai/a", "failed")
    ]  # fmt: skip


# --- cascade: worst cases --------------------------------------------------------------------------------------------

USER = {"role": "user", "content": "Q"}


def test_the_plan_of_a_cascade_prices_every_tier_and_a_judge_per_tier_quoting_the_longest_answer() -> None:
    # a (system "SA") answers at most 7 tokens, b 5: the judge quotes 7 tokens, once for each of the 2 tiers.
    fake = PricedFake()
    score = {"type": "judge", "judge": {"model": "openai/s"}, "instruction": "Judge."}
    plans = moa.plan(cascade([tier("a", accept=0.5, agent={"system": "SA"}), tier("b")], score), "Q", provider=fake)
    tier_a = prompt_tokens(build_messages([USER], system="SA"))
    tier_b = prompt_tokens([USER])
    judge = prompt_tokens(pointwise_messages("Judge.", "Q", ""), [(0, 7)])
    assert fake.priced == [("openai/a", tier_a), ("openai/b", tier_b), ("openai/s", judge)]
    assert [p.worst_case_usd for p in plans] == [tier_a + tier_b + 2 * judge]
    assert "logprobs" not in fake.settings[0] and fake.settings[2]["logprobs"] is True
    # A confidence score asks each tier for logprobs, and no judge.
    fake = PricedFake()
    moa.plan(cascade([tier("a", accept=0.5), tier("b")], {"type": "confidence"}), "Q", provider=fake)
    assert [m for m, _ in fake.priced] == ["openai/a", "openai/b"]
    assert all({k: s.get(k) for k in CONFIDENCE} == CONFIDENCE for s in fake.settings)


def test_the_plan_of_a_cascade_with_checks_and_a_recipe_tier_prices_the_recipe_and_each_llm_check(
    tmp_path: Path,
) -> None:
    # The recipe tier's answer (f's, 9 tokens) is the longest: each llm check quotes it, 2 tiers x 2 judges.
    (tmp_path / "strong.json").write_text(
        '{"name": "strong", "layers": [{"kind": "propose", "agents": [{"model": "openai/f"}]}]}'
    )
    checks = [llm("s", "one"), {"type": "regex", "pattern": "x"}, llm("t", "two")]
    recipe = cascade([tier("a", accept=0.5), {"name": "strong", "recipe": str(tmp_path / "strong.json")}],
                     {"type": "checks", "checks": checks})  # fmt: skip
    fake = PricedFake()
    (plan,) = moa.plan(recipe, "Q", provider=fake)
    one, two = (LLMCheck.model_validate(llm(m, c)) for m, c in (("s", "one"), ("t", "two")))
    judges = [prompt_tokens(llm_messages(one, "Q", ""), [(0, 9)]), prompt_tokens(llm_messages(two, "Q", ""), [(0, 9)])]
    tier_tokens = prompt_tokens([USER])
    assert fake.priced == [("openai/a", tier_tokens), ("openai/f", tier_tokens), ("openai/s", judges[0]),
                           ("openai/t", judges[1])]  # fmt: skip
    assert plan.worst_case_usd == 2 * tier_tokens + 2 * sum(judges)


async def test_a_judge_reserves_the_answer_it_quotes_at_that_answers_tokens() -> None:
    wrong = "this answer has many letters and no answer line at all"
    fake = PricedFake(replies={"openai/a": [wrong], "openai/b": ["Answer: 1"], "openai/s": ["no"]})
    score = {"type": "judge", "judge": {"model": "openai/s"}}
    await moa.run("Q", cascade([tier("a", accept=0.5), tier("b")], score), provider=fake, max_cost_usd=10_000)
    judged = pointwise_messages(None, "Q", wrong)
    assert fake.priced[-3] == ("openai/s", prompt_tokens(judged, [(len(wrong), 11)]))
    assert prompt_tokens(judged, [(len(wrong), 11)]) < prompt_tokens(judged)


async def test_agreement_reads_answers_against_the_question() -> None:
    # As phrases, less the question's own words: both answers say "paris".
    fake = FakeProvider(replies={"openai/a": ["The capital of France is Paris."], "openai/b": ["Paris."],
                                 "openai/f": ["Lyon"]})  # fmt: skip
    score = {"type": "checks", "checks": [{"type": "agree", "k": 2, "extract": "phrase"}]}
    tiers = [tier("a", accept=1.0), tier("b", accept=1.0), tier("f")]
    result = await moa.run("Which city is the capital of France?", cascade(tiers, score), provider=fake)
    assert result.output == "Paris." and result.layers[0].considered[1].agreement == 2


def test_a_cascade_plans_to_pass_on_its_longest_answer_as_tokens_only() -> None:
    from moa._call import plan_layer
    from moa._stages import STAGES, EstimateContext

    loaded = moa.load_recipe(cascade([tier("a", accept=0.5), tier("b")], {"type": "confidence"}))
    context = EstimateContext(0, loaded.layers[0], [USER], plan_layer(loaded, 0), PricedFake())
    assert STAGES["cascade"].estimate(context, []).outputs == [(0, 7)]


# --- recipe tiers and routes: their answer, their calls, what they cost ----------------------------------------------


def recipe_file(tmp_path: Path, name: str, layers: list[dict[str, Any]]) -> str:
    import json

    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "layers": layers}))
    return str(path)


PROPOSE_THEN_FUSE = [
    {"kind": "propose", "agents": [{"model": "openai/s"}, {"model": "openai/t"}]},
    {"kind": "aggregate", "agents": [{"model": "openai/f"}]},
]


async def test_a_recipe_tiers_answer_is_its_last_layers_and_its_calls_are_the_layers_named_by_the_tier(
    tmp_path: Path,
) -> None:
    fused = said("Answer: 6 fused", usd=0.25, tokens=9, finish_reason="stop")
    fake = FakeProvider(replies={"openai/a": ["no"], "openai/s": [said("S says", usd=0.0, tokens=4)],
                                 "openai/t": [said("T says", usd=0.5, tokens=6)], "openai/f": [fused]})  # fmt: skip
    regex = {"type": "checks", "checks": [{"type": "regex", "pattern": "^Answer"}]}
    tiers = [tier("a", accept=0.5), {"name": "strong", "recipe": recipe_file(tmp_path, "strong", PROPOSE_THEN_FUSE)}]
    result = await moa.run("Q", cascade(tiers, regex), provider=fake)
    layer = result.layers[0]
    answer = layer.considered[1]
    assert (answer.text, answer.layer, answer.agent, answer.sample, answer.step, answer.model) == (
        "Answer: 6 fused", 1, 1, 0, 2, "recipe:strong"
    )  # fmt: skip
    assert (answer.completion_tokens, answer.finish_reason, answer.score) == (1, "stop", 1.0)
    assert [(o.name, o.layer, o.agent, o.step) for o in layer.outputs] == [
        ("openai/a", 1, 0, 1), ("strong: openai/s", 1, 2, 2), ("strong: openai/t", 1, 3, 2),
        ("strong: openai/f", 1, 4, 2),
    ]  # fmt: skip
    # What the tier's answer cost: every call of its run (one of them free), in USD and tokens.
    accept = layer.decisions[1]
    assert (accept.option, accept.action, accept.cost_usd, accept.tokens) == ("strong", "accept", 0.75, 19)
    # An unpriced call makes the run's cost unknown.
    fake.replies["openai/t"] = ["T says"]
    result = await moa.run("Q", cascade(tiers, regex), provider=fake)
    assert result.layers[0].decisions[1].cost_usd is None


async def test_a_failed_recipe_tier_is_passed_over_with_its_error_causes_and_calls(tmp_path: Path) -> None:
    fake = FakeProvider(replies={"openai/s": [said("S says", usd=0.5, tokens=4)],
                                 "openai/t": [said("T says", usd=0.25, tokens=6)],
                                 "openai/f": [RequestRejectedError("no fusing today")],
                                 "openai/b": ["Answer: 6"]})  # fmt: skip
    regex = {"type": "checks", "checks": [{"type": "regex", "pattern": "^Answer"}]}
    tiers = [{"name": "strong", "recipe": recipe_file(tmp_path, "strong", PROPOSE_THEN_FUSE), "accept": 0.5},
             tier("b")]  # fmt: skip
    result = await moa.run("Q", cascade(tiers, regex), provider=fake)
    failed = result.layers[0].decisions[0]
    assert (failed.option, failed.action) == ("strong", "failed")
    # The error on one line, its causes included.
    assert failed.reason == (
        "its recipe failed (QuorumError: layer 2 failed: 0 of 1 calls succeeded, min_success is 1; causes: "
        "RequestRejectedError: layer 2, agent 0 (openai/f), sample 0, model openai/f: no fusing today)"
    )
    assert (failed.cost_usd, failed.tokens) == (0.75, 10)
    assert [(o.name, o.agent, o.step) for o in result.layers[0].outputs] == [
        ("strong: openai/s", 2, 1), ("strong: openai/t", 3, 1), ("strong: openai/f", 4, 1), ("openai/b", 0, 2)
    ]  # fmt: skip
    assert result.output == "Answer: 6"


async def test_a_one_layer_recipe_route_answers_with_its_only_layer(tmp_path: Path) -> None:
    fake = FakeProvider(replies={"openai/s": [said("S says", usd=0.5, tokens=4, finish_reason="stop")]})
    one = recipe_file(tmp_path, "one", [{"kind": "propose", "agents": [{"model": "openai/s"}]}])
    routes = [{"name": "r", "recipe": one}]
    result = await moa.run("Q", {"name": "r", "layers": [{"kind": "route", "routes": routes,
                                                            "router": {"type": "rules"}}]}, provider=fake)  # fmt: skip
    (decision,) = result.layers[0].decisions
    assert (decision.cost_usd, decision.tokens, result.output) == (0.5, 4, "S says")
    assert result.layers[0].candidates[0].finish_reason == "stop"


async def test_a_tier_whose_paid_call_failed_carries_its_cost() -> None:
    fake = FakeProvider(replies={"openai/a": [said("", usd=0.125, tokens=3)], "openai/b": ["Answer: 6"]})
    regex = {"type": "checks", "checks": [{"type": "regex", "pattern": "^Answer"}]}
    result = await moa.run("Q", cascade([tier("a", accept=0.5), tier("b")], regex), provider=fake)
    failed = result.layers[0].decisions[0]
    assert (failed.action, failed.cost_usd, failed.tokens) == ("failed", 0.125, 3)


# --- route -----------------------------------------------------------------------------------------------------------


def route(routes: list[dict[str, Any]], router: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "r", "layers": [{"kind": "route", "routes": routes, "router": router, **fields}]}


CLASSIFIED = [{"name": "math", "agent": {"model": "openai/a"}, "description": "sums"},
              {"name": "code", "agent": {"model": "openai/b"}}]  # fmt: skip


async def test_a_classifier_is_the_first_step_and_its_long_or_failed_reply_is_cut_to_80_characters() -> None:
    long = "code " + "x" * 100
    fake = FakeProvider(replies={"openai/s": [long, RequestRejectedError("y" * 200)]})
    config = route(CLASSIFIED, {"type": "classifier", "agent": {"model": "openai/s"}}, default="math")
    result = await moa.run("Q", config, provider=fake)
    (decision,) = result.layers[0].decisions
    assert decision.option == "code" and decision.reason == f"the classifier said {long[:80]!r}"
    assert [(o.name, o.step) for o in result.layers[0].outputs] == [("openai/s", 1), ("openai/b", 2)]
    result = await moa.run("Q", config, provider=fake)
    error = result.layers[0].outputs[0].error
    assert error is not None and len(error.message) > 80
    assert result.layers[0].decisions[0].reason == (
        f"the classifier gave no answer (RequestRejectedError: {error.message[:80]}); the default route"
    )
    assert result.layers[0].answered_by == "math"


def test_a_rules_length_bounds_hold_at_their_ends_and_a_reply_names_a_route_exactly_before_by_a_word() -> None:
    from moa._stages.route import matches, named
    from moa.recipe import RouteRule

    assert matches(RouteRule(min_chars=3), "abc") and not matches(RouteRule(min_chars=4), "abc")
    assert matches(RouteRule(max_chars=3), "abc") and not matches(RouteRule(max_chars=2), "abc")
    assert named("`math-hard`.", ["math", "math-hard"]) == "math-hard"
    assert named("Xcode", ["code"]) is None


def test_the_route_summary_names_the_route_and_why() -> None:
    from moa._stages.route import Route

    steps = [Decision(option="math", index=0, action="route", reason="its rule holds"),
             Decision(option="code", index=1, action="route", reason="other")]  # fmt: skip
    assert Route().summary(Outcome([], [], steps), 1) == "route: math (its rule holds)"
    assert Route().summary(Outcome([], [], []), 1) is None


class CheapFake(PricedFake):
    """A thousandth of a dollar a prompt token; openai/free is unpriced."""

    def worst_case_cost(self, model: str, params: Any, prompt_tokens: int) -> float | None:
        super().worst_case_cost(model, params, prompt_tokens)
        return None if model == "openai/free" else prompt_tokens / 1000


def test_the_plan_of_a_route_is_its_costliest_route_and_the_routers_call(tmp_path: Path) -> None:
    from moa._engine import run_worst_case
    from moa._stages.route import classifier_messages
    from moa.recipe import ClassifierRouter
    from moa.recipe.routing import CLASSIFIER_SETTINGS

    one = recipe_file(tmp_path, "one", [{"kind": "propose", "agents": [{"model": "openai/f"}]}])
    routes = [{"name": "math", "agent": {"model": "openai/a", "system": "Be exact and brief."}, "description": "sums"},
              {"name": "code", "recipe": one}]  # fmt: skip
    router = {"type": "classifier", "agent": {"model": "openai/s"}}
    fake = CheapFake()
    (plan,) = moa.plan(route(routes, router), "Q", provider=fake)
    math_tokens = prompt_tokens(build_messages([USER], system="Be exact and brief."))
    sorted_by = classifier_messages(ClassifierRouter.model_validate(router), ["math", "code"], ["sums", None], "Q")
    assert fake.priced == [("openai/a", math_tokens), ("openai/f", prompt_tokens([USER])),
                           ("openai/s", prompt_tokens(sorted_by))]  # fmt: skip
    assert {k: fake.settings[-1][k] for k in CLASSIFIER_SETTINGS} == CLASSIFIER_SETTINGS
    assert plan.worst_case_usd == pytest.approx((max(math_tokens, prompt_tokens([USER])) + prompt_tokens(sorted_by))
                                                / 1000)  # fmt: skip
    # A neighbours router pays for the prompt's embedding (its examples' are paid once).
    neighbours = {"type": "neighbours", "embedding": {"model": "openai/t"}, "k": 1,
                  "examples": [{"prompt": "p", "scores": {"math": 1, "code": 0}}]}  # fmt: skip
    fake = CheapFake()
    moa.plan(route(routes, neighbours), "Q", provider=fake)
    assert fake.priced[-1] == ("openai/t", prompt_tokens([USER])) and fake.settings[-1]["max_tokens"] == 1
    # An unpriced route makes the layer's worst case unknown, and is named, whatever the route after it costs.
    routes[0]["agent"]["model"] = "openai/free"
    loaded = moa.load_recipe(route(routes, router))
    assert run_worst_case(CheapFake(), loaded, [USER]) == (None, ["openai/free"])
    (plan,) = moa.plan(loaded, "Q", provider=CheapFake())
    assert plan.worst_case_usd is None


def test_a_route_plans_to_pass_on_its_longest_answer_as_tokens_only() -> None:
    from moa._call import plan_layer
    from moa._stages import STAGES, EstimateContext

    routes = [{"name": "x", "agent": {"model": "openai/b"}, "when": {"pattern": "x"}},
              {"name": "y", "agent": {"model": "openai/a"}}]  # fmt: skip
    loaded = moa.load_recipe(route(routes, {"type": "rules"}))
    context = EstimateContext(0, loaded.layers[0], [USER], plan_layer(loaded, 0), PricedFake())
    assert STAGES["route"].estimate(context, []).outputs == [(0, 7)]


# --- neighbours ------------------------------------------------------------------------------------------------------


def neighbours_router(rows: list[dict[str, Any]], **fields: Any) -> Any:
    from moa.recipe import NeighboursRouter

    config = {"type": "neighbours", "embedding": {"model": "openai/e"}, "examples": rows, "k": 2, **fields}
    return NeighboursRouter.model_validate(config)


def test_cosine_is_the_dot_product_over_the_product_of_the_norms() -> None:
    from moa._stages.neighbours import cosine

    assert cosine((1.0, 2.0), (3.0, 4.0)) == pytest.approx(11 / math.sqrt(5 * 25))


def test_pick_weighs_by_similarity_says_its_range_and_ties_go_to_the_route_listed_first() -> None:
    from moa._stages.neighbours import pick

    rows = [{"prompt": "a", "scores": {"x": 1.0, "y": 0.0}}, {"prompt": "b", "scores": {"x": 0.0, "y": 1.0}},
            {"prompt": "c", "scores": {"x": 0.5, "y": 0.5}}]  # fmt: skip
    vectors = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)]
    # Similarities 0.6 and 0.3 (they add up to less than 1): x = 0.6 / 0.9, y = 0.3 / 0.9.
    choice = pick(neighbours_router(rows), ["x", "y"], (0.6, 0.3), vectors)
    sims = (0.6 / math.sqrt(0.45), 0.3 / math.sqrt(0.45))
    assert choice.index == 0 and choice.quality == pytest.approx(sims[0] / sum(sims))
    assert choice.reason == (f"its 2 nearest examples (similarity {sims[0]:.2f} to {sims[1]:.2f}): "
                             f"x {sims[0] / sum(sims):.2f}, y {sims[1] / sum(sims):.2f}")  # fmt: skip
    # Equal values: the route listed first.
    assert pick(neighbours_router(rows), ["y", "x"], (1.0, 1.0), vectors).index == 0
    # Nearest examples that are all opposite the prompt (weights 0): their plain mean.
    far = pick(neighbours_router(rows[2:] + rows[:1], k=2), ["x", "y"], (1.0, 0.0), [(-1.0, 0.0), (-1.0, -0.1)])
    assert far.quality == pytest.approx(0.75) and far.index == 0


def test_a_route_without_a_cost_on_the_nearest_examples_costs_its_mean_over_every_example() -> None:
    from moa._stages.neighbours import pick

    rows = [{"prompt": "a", "scores": {"x": 1.0, "y": 0.9}, "costs": {"x": 1.0}},
            {"prompt": "b", "scores": {"x": 1.0, "y": 0.9}, "costs": {"x": 0.0, "y": 0.5}},
            {"prompt": "c", "scores": {"x": 1.0, "y": 0.9}, "costs": {"x": 0.0, "y": 0.1}}]  # fmt: skip
    # Nearest a: x costs 1.0 there; y has no cost there, so its mean over b and c (0.3).
    choice = pick(neighbours_router(rows, k=1, cost_weight=1.0), ["x", "y"], (1.0, 0.0),
                  [(1.0, 0.0), (0.0, 1.0), (0.0, 1.0)])  # fmt: skip
    assert choice.index == 1 and choice.value == pytest.approx(0.9 - 0.3)
    assert choice.reason.endswith("x 1.00 - 1 x 1, y 0.90 - 1 x 0.3")


GEO_ROWS = [{"prompt": "the sum of two numbers", "scores": {"math": 1.0, "geo": 0.0}},
            {"prompt": "the river of the city", "scores": {"math": 0.0, "geo": 1.0}}]  # fmt: skip
NEIGHBOUR_ROUTES = [{"name": "math", "agent": {"model": "openai/a"}}, {"name": "geo", "agent": {"model": "openai/b"}}]


def neighbours_recipe(rows: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    router = {"type": "neighbours", "embedding": {"model": "openai/e"}, "examples": rows, "k": 1}
    return route(NEIGHBOUR_ROUTES, router, **fields)


async def test_a_failed_embedding_of_the_examples_is_tried_again_by_the_next_prompt_and_reasons_are_cut() -> None:
    fake = FakeProvider(replies={"openai/e": [RequestRejectedError("z" * 200), "ok"]})
    loaded = moa.load_recipe(neighbours_recipe(GEO_ROWS, default="geo"))
    result = await moa.run("the sum of 2 and 3", loaded, provider=fake)
    error = result.layers[0].outputs[0].error
    assert error is not None and len(error.message) > 80
    assert result.layers[0].decisions[0].reason == (
        f"the examples' embeddings failed (RequestRejectedError: {error.message[:80]}); the default route"
    )
    result = await moa.run("the sum of 2 and 3", loaded, provider=fake)
    assert result.layers[0].answered_by == "math"
    # The embedding calls are the layer's first steps, asked with the embedding settings.
    assert [(o.model, o.step) for o in result.layers[0].outputs] == [("openai/e", 1), ("openai/e", 1), ("openai/a", 1)]
    assert all(r.params.get("max_tokens") == 1 for r in fake.requests if r.model == "openai/e")
    # A failed prompt embedding: its error, cut.
    fake.replies["openai/e"] = [RequestRejectedError("w" * 200)]
    result = await moa.run("the sum of 2 and 3", loaded, provider=fake)
    error = result.layers[0].outputs[0].error
    assert error is not None and result.layers[0].decisions[0].reason == (
        f"the prompt's embedding failed (RequestRejectedError: {error.message[:80]}); the default route"
    )


def test_examples_embedded_once_per_event_loop() -> None:
    import asyncio

    fake = FakeProvider()
    loaded = moa.load_recipe(neighbours_recipe(GEO_ROWS))
    for _ in range(2):
        result = asyncio.run(moa.run("the sum of 2 and 3", loaded, provider=fake))
        assert result.layers[0].answered_by == "math"
    assert [len(r.messages) for r in fake.requests if r.model == "openai/e"] == [2, 1, 2, 1]


async def test_stored_embeddings_and_run_time_ones_of_two_lengths_are_a_route_error() -> None:
    # One example's vector is stored (2 numbers); the other is embedded now (the fake gives 64): they cannot be
    # compared. (Stored vectors of one model with two lengths are refused when the recipe loads.)
    rows = [{**GEO_ROWS[0], "embedding": [1.0, 0.0], "embedded_with": "openai/e"}, GEO_ROWS[1]]
    with pytest.raises(moa.RouteError) as caught:
        await moa.run("Q", neighbours_recipe(rows), provider=FakeProvider())
    assert str(caught.value) == (
        "layer 1 (route): router.examples: the examples' embeddings by openai/e are not all of one length: embed "
        "the examples again (moa calibrate)"
    )


def test_similarities_that_add_up_to_less_than_one_still_weigh_the_mean() -> None:
    from moa._stages.neighbours import pick

    rows = [{"prompt": "a", "scores": {"x": 1.0, "y": 0.0}}, {"prompt": "b", "scores": {"x": 0.0, "y": 0.0}}]
    # Similarities 0.5 and 0.3: x = (0.5 x 1 + 0.3 x 0) / 0.8, not the plain mean 0.5.
    choice = pick(neighbours_router(rows), ["x", "y"], (1.0, 0.0), [(0.5, math.sqrt(0.75)), (0.3, math.sqrt(0.91))])
    assert choice.quality == pytest.approx(0.625)


async def test_a_provider_that_gives_no_embedding_or_too_few_is_no_route_chosen() -> None:
    one = Completion("", prompt_tokens=1, embeddings=((1.0, 0.0),))
    fake = FakeProvider(replies={"openai/e": [one]})  # one vector for the two examples
    loaded = moa.load_recipe(neighbours_recipe(GEO_ROWS, default="geo"))
    result = await moa.run("the sum of 2 and 3", loaded, provider=fake)
    assert result.layers[0].decisions[0].reason == "the examples' embeddings failed (no embeddings); the default route"
    # The examples' vectors, then none for the prompt.
    fake.replies["openai/e"] = [Completion("", prompt_tokens=1, embeddings=((1.0, 0.0), (0.0, 1.0))),
                                Completion("", prompt_tokens=1)]  # fmt: skip
    result = await moa.run("the sum of 2 and 3", loaded, provider=fake)
    assert result.layers[0].decisions[0].reason == "no embedding; the default route"


# --- what an eval says of its controlling layers ---------------------------------------------------------------------


def trace(*decisions: dict[str, Any], kind: str = "cascade") -> dict[str, Any]:
    return {"traces": [{"layers": [{"index": 1, "kind": kind, "decisions": list(decisions)}]}]}


def test_the_control_summary_in_usd_counts_free_answers_as_free() -> None:
    from moa.eval._control import control_lines, control_summary

    records = [
        trace({"option": "a", "action": "escalate", "cost_usd": 0.0, "tokens": 10},
              {"option": "b", "action": "accept", "cost_usd": 0.5, "tokens": 30}),
        trace({"option": "a", "action": "accept", "cost_usd": 0.0, "tokens": 20}),
    ]  # fmt: skip
    summary = control_summary(records)
    assert summary == {
        "layer 1 (cascade)": {
            "runs": 2,
            "answered_by": {"b": 0.5, "a": 0.5},
            "ran": {"a": 1.0, "b": 0.5},
            "unit": "usd",
            "cost_per_run": 0.25,
            "cost_if_always": {"a": 0.0, "b": 0.5},
            "costliest": "b",
            "saved_vs_costliest": 0.5,
        }
    }
    assert control_lines("n", {"control": summary}) == [
        "n: layer 1 (cascade) answered by b 50 %, a 50 %; 50 % less cost than always b (its mean where it ran)"
    ]
    # A layer whose decisions say nothing of what they took: no cost to compare.
    (found,) = control_summary([trace({"option": "a", "action": "route"}, kind="route")]).values()
    assert (found["cost_if_always"], found["costliest"], found["saved_vs_costliest"]) == ({}, None, None)


@pytest.mark.parametrize(
    ("unit", "saved", "costliest", "said"),
    [
        ("usd", 0.9, "x", "; 90 % less cost than always x (its mean where it ran)"),
        ("usd", -0.9, "x", "; 90 % more cost than always x (its mean where it ran)"),
        ("usd", 0.0, "x", "; 0 % less cost than always x (its mean where it ran)"),
        ("tokens", 0.9, "x", "; 90 % fewer tokens than always x (its mean where it ran)"),
        ("tokens", -0.9, "x", "; 90 % more tokens than always x (its mean where it ran)"),
        ("tokens", 0.0, "x", "; 0 % fewer tokens than always x (its mean where it ran)"),
        ("usd", None, "x", ""),
    ],
)
def test_a_control_line_says_what_was_saved_or_spent_more_in_its_unit(
    unit: str, saved: float | None, costliest: str, said: str
) -> None:
    from moa.eval._control import control_lines

    found = {"answered_by": {}, "unit": unit, "saved_vs_costliest": saved, "costliest": costliest}
    assert control_lines("n", {"control": {"layer 1 (route)": found}}) == [f"n: layer 1 (route) answered by none{said}"]


# --- embedding responses ---------------------------------------------------------------------------------------------


def embedding_request(*texts: str) -> Any:
    from moa._provider import Request

    return Request("openai/e", [{"role": "user", "content": text} for text in texts], embed=True)


def refused_embedding(response: Any, texts: int = 2) -> str:
    from moa._embeddings import embedding_completion
    from moa._errors import BadResponseError

    with pytest.raises(BadResponseError) as caught:
        embedding_completion(response, embedding_request(*["t"] * texts), None)
    return str(caught.value)


def test_embedding_vectors_come_back_in_the_order_of_their_index_with_the_prompt_tokens() -> None:
    from types import SimpleNamespace

    from moa._embeddings import embedding_completion, texts
    from moa._provider import Request

    data = [{"index": 1, "embedding": [0, 1]}, {"index": 0, "embedding": [1.5, 0]}]
    found = embedding_completion({"data": data, "usage": {"prompt_tokens": 5}}, embedding_request("a", "b"), 0.25)
    assert (found.text, found.embeddings, found.prompt_tokens, found.cost_usd) == (
        "",
        ((1.5, 0.0), (0.0, 1.0)),
        5,
        0.25,
    )
    # A response of objects (litellm's) without usage: no tokens counted.
    items = [SimpleNamespace(index=1, embedding=[0.0, 1.0]), SimpleNamespace(index=0, embedding=[1.0, 0.0])]
    found = embedding_completion(SimpleNamespace(data=items), embedding_request("a", "b"), None)
    assert (found.embeddings, found.prompt_tokens) == (((1.0, 0.0), (0.0, 1.0)), 0)
    # A message without content is an empty text.
    assert texts(Request("openai/e", [{"role": "user"}], embed=True)) == [""]


@pytest.mark.parametrize("vector", [[], [1.0, True], [1.0, float("nan")], (1.0, 2.0), "1.0"])
def test_an_embedding_that_is_not_one_flat_list_of_finite_numbers_is_a_bad_response(vector: Any) -> None:
    assert refused_embedding({"data": [{"index": 0, "embedding": vector}]}, texts=1) == (
        "model openai/e: an embedding is not one list of numbers (a server that returns a vector per token needs "
        "pooling: llama.cpp's --pooling mean)"
    )


def test_embeddings_of_another_count_or_of_two_lengths_are_a_bad_response() -> None:
    one = {"data": [{"index": 0, "embedding": [1.0]}]}
    assert refused_embedding(one) == "model openai/e: 1 embedding(s) came back for 2 text(s)"
    two = {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}]}
    assert refused_embedding(two) == "model openai/e: the embeddings have different lengths"
