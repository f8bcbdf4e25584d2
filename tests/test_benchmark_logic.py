"""Each benchmark's own logic, without a server: QA scoring, AlpacaEval's prompt and metrics, MT-Bench's
prompts and scores, and the statistics (win rate, exact McNemar, AlpacaEval's output-order coin).

Expected values are computed by hand (see the comments) or taken from AlpacaEval's published
annotations.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moa.eval import _lc, _stats, alpaca, mtbench
from moa.eval._common import DataError
from moa.eval.qa import is_correct

FIXTURES = Path(__file__).parent / "fixtures" / "evals"


# ------------------------------------------------------------------ qa.is_correct


@pytest.mark.parametrize(
    ("output", "answers"),
    [
        ("The sum is 1,024.", [1024]),  # thousands separators
        ("The sum is 1024.", ["1,024"]),
        ("It is 1024.0 exactly", [1024]),  # the same number written as a float
        ("It is 1024", ["1024.0"]),
        ("The result is -3.", [-3]),  # a sentence's full stop is not a decimal part
        ("x = -3", ["-3"]),
        ("About 1e3 of them", [1000]),  # scientific notation, both ways
        ("About 1000 of them", ["1e3"]),
        ("About 1E3 of them", [1000.0]),
        ("+5 degrees", [5]),
        ("1,024.5 metres", [1024.5]),
        ("It has eight legs.", ["8", "eight"]),  # any of the answers
        ("NEW YORK, of course", ["New York"]),  # whole words, case-insensitive
        ("I would use C++.", ["C++"]),  # an answer's regex characters are literal
        ("(a) and (b)", ["(b)"]),
    ],
)
def test_an_answer_counts_as_a_whole_word_or_as_the_same_number(output: str, answers: list[Any]) -> None:
    assert is_correct(output, {"answers": answers})


@pytest.mark.parametrize(
    ("output", "answers"),
    [
        ("It has 18 legs.", [8]),
        ("Eighteen", ["eight"]),  # a word inside a longer word does not count
        ("concatenate", ["cat"]),
        ("The sum is 1,025.", [1024]),
        ("x = 3", [-3]),  # the sign matters
        ("It is 10.24", [1024]),
        ("There is none", ["1"]),
        ("Use CPP", ["C++"]),
    ],
)
def test_other_words_and_numbers_do_not_count(output: str, answers: list[Any]) -> None:
    assert not is_correct(output, {"answers": answers})


def test_a_regex_is_searched_as_written() -> None:
    assert is_correct("JUPITER!", {"regex": "(?i)jupiter"})
    assert not is_correct("JUPITER!", {"regex": "jupiter"})  # case-sensitive unless the regex says otherwise
    assert is_correct("the answer: 42 (final)", {"regex": r"answer: \d+"})  # search, not a full match
    assert not is_correct("Jupiter", {"regex": r"^Saturn$"})


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_any_integer_matches_itself_however_it_is_written(n: int) -> None:
    for written in (f"{n:,}", f"{n}", f"{n}.0", f"{float(n):.1f}"):
        assert is_correct(f"The answer is {written}.", {"answers": [n]}), written
        assert is_correct(f"The answer is {written}.", {"answers": [str(n)]}), written


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**9))
def test_a_plain_number_matches_only_the_same_number(said: int, answer: int) -> None:
    assert is_correct(f"The answer is {said}.", {"answers": [answer]}) == (said == answer)


@pytest.mark.parametrize(("output", "answer"), [("It is -5.", 5), ("It has 8.5 legs", 8), ("5,000 people", 5)])
def test_a_number_inside_another_number_does_not_count(output: str, answer: int) -> None:
    assert not is_correct(output, {"answers": [answer]})


@pytest.mark.parametrize(
    ("output", "answer", "counts"),
    [("5-3=2", -3, False), ("5 - 3 = 2", 2, True), ("the 8th leg", 8, False), ("half: .5", 0.5, True),
     ("It is -5.", -5, True), ("1e3 of them", 1000, True), ("Paris, 1,024 km", 1024, True)],
)  # fmt: skip
def test_numbers_are_read_as_prose_writes_them(output: str, answer: float, counts: bool) -> None:
    assert is_correct(output, {"answers": [answer]}) == counts


def test_a_list_of_numbers_is_not_one_number() -> None:
    assert not is_correct("The first three are 1,2,3", {"answers": [123]})


# ------------------------------------------------------------------ alpaca: the judge prompt and the metrics


def test_the_judge_prompt_file_becomes_chat_messages() -> None:
    messages = alpaca.parse_chatml((FIXTURES / "alpaca_judge_prompt.txt").read_text(), "clf.txt")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == "You compare two answers to the same instruction and name the better one."
    assert messages[1]["content"].startswith("Instruction:\n{instruction}\n") and "{output_2}" in messages[1]["content"]
    assert not messages[1]["content"].endswith("\n")  # the newline before <|im_end|> is not content
    text = "<|im_start|>user\n{instruction} {output_1} {output_2}<|im_end|>\n<|im_start|>tool\nignored\n<|im_end|>"
    assert alpaca.parse_chatml(text, "x") == [{"role": "user", "content": "{instruction} {output_1} {output_2}"}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Compare {instruction} {output_1} {output_2}", "clf.txt: no <|im_start|>role ... <|im_end|> blocks found"),
        ("", "clf.txt: no <|im_start|>role"),
        ("<|im_start|>user\n{instruction} {output_1}\n<|im_end|>", "clf.txt: the judge prompt has no {output_2}"),
        ("<|im_start|>system\n{output_1}{output_2}\n<|im_end|>", "has no {instruction} placeholder"),
    ],
)
def test_a_bad_judge_prompt_is_named(text: str, message: str) -> None:
    with pytest.raises(DataError) as caught:
        alpaca.parse_chatml(text, "clf.txt")
    assert message in str(caught.value)


def annotation(preference: float | None, method: str, index: int = 0, model: str = "abc", reference: str = "ab") -> Any:
    return {"preference": preference, "method": method, "index": index, "output_2": model, "output_1": reference}


@pytest.fixture
def fake_lc(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Stands in for the GLM (tested in test_lc.py; scikit-learn takes a second to import): records its calls."""
    calls: list[tuple[Any, ...]] = []

    def fit(*args: Any) -> _lc.LCResult:
        calls.append(args)
        exact = args[4] is not None
        return _lc.LCResult(62.5, "exact: stub" if exact else "APPROXIMATION: stub", exact, 1.0, {"w": 0.5})

    monkeypatch.setattr(_lc, "length_controlled_win_rate", fit)
    return calls


def test_alpaca_metrics_on_hand_made_annotations(fake_lc: list[tuple[Any, ...]]) -> None:
    annotations = [
        annotation(2.0, "logprobs", 0, "x" * 10, "y" * 4),
        annotation(1.25, "logprobs", 1),
        annotation(None, "unparsable", 2),
        annotation(0.0, "logprobs", 3),  # a draw
        annotation(None, "unparsable", 4),
    ]
    metrics = alpaca.alpaca_metrics(annotations, None)
    # preference - 1 of the judged pairs: 1, 0.25, 0.5 (the draw) -> mean 7/12; squared deviations sum to 7/24,
    # sample variance 7/48, standard error sqrt(7/48 / 3) = sqrt(7) / 12
    assert metrics["win_rate"] == pytest.approx(700 / 12)
    assert metrics["standard_error"] == pytest.approx(math.sqrt(7) / 12 * 100)
    assert (metrics["n_wins"], metrics["n_wins_base"], metrics["n_draws"], metrics["n_total"]) == (1, 1, 1, 3)
    assert metrics["discrete_win_rate"] == pytest.approx(50.0)  # (1 win + 1 draw / 2) / 3
    assert metrics["unparsable_judgments"] == 2 and metrics["judge_method"] == "logprobs"
    # The GLM gets every pair, unparsable ones included: model = output_2, reference = output_1.
    ((preferences, model_lengths, reference_lengths, indices, data),) = fake_lc
    assert preferences == [2.0, 1.25, None, 0.0, None] and indices == [0, 1, 2, 3, 4] and data is None
    assert model_lengths == [10, 3, 3, 3, 3] and reference_lengths == [4, 2, 2, 2, 2]
    assert (metrics["score"], metrics["score_name"], metrics["lc_exact"]) == (62.5, "LC win rate (approx.)", False)
    assert metrics["lc_method"] == "APPROXIMATION: stub" and metrics["lc_C"] == 1.0 and metrics["lc_weights"]
    assert metrics["lc_warning"] is None  # 62.5 against 58.3: not an extreme change

    exact = alpaca.alpaca_metrics(annotations, _lc.LCData("df_gamed.csv", {}, ()))
    assert (exact["score_name"], exact["lc_exact"]) == ("LC win rate", True)


def test_an_lc_far_from_the_raw_win_rate_is_flagged(fake_lc: list[tuple[Any, ...]]) -> None:
    metrics = alpaca.alpaca_metrics([annotation(1.0, "text"), annotation(1.1, "text")], None)  # raw 5, LC 62.5
    assert metrics["lc_warning"] and "(62.5) is far from the raw one (5.0)" in metrics["lc_warning"]


def test_with_fewer_than_two_judged_pairs_the_score_is_the_raw_win_rate() -> None:
    metrics = alpaca.alpaca_metrics([annotation(1.75, "text"), annotation(None, "unparsable", 1)], None)
    assert (metrics["score"], metrics["score_name"]) == (pytest.approx(75.0), "win rate")
    assert metrics["length_controlled_win_rate"] is None and metrics["lc_method"] == "needs 2 or more judged pairs"
    assert metrics["lc_exact"] is False and metrics["judge_method"] == "text verdicts for 1 of 1 (no usable logprobs)"


@pytest.mark.parametrize(
    ("methods", "valid", "expected"),
    [
        (["logprobs", "logprobs", "unparsable"], 2, "logprobs"),
        (["text", "text"], 2, "text verdicts for 2 of 2 (no usable logprobs)"),
        (["logprobs", "text", "unparsable"], 2, "text verdicts for 1 of 2 (no usable logprobs)"),
        (["unparsable", "unparsable"], 0, "no parsable judgment"),
        ([], 0, "no parsable judgment"),
    ],
)
def test_the_judge_method_says_how_judgments_were_read(methods: list[str], valid: int, expected: str) -> None:
    assert alpaca._judge_method(methods, valid) == expected


# ------------------------------------------------------------------ mt-bench: ratings, prompts, scores


@pytest.mark.parametrize(
    ("judgment", "rating"),
    [
        ("Rating: [[8]]", 8.0),
        ("Rating: [[6.5]] overall", 6.5),
        ("I'd say [9] here", 9.0),  # FastChat's fallback pattern
        ("See [1]. Rating: [[7]]", 7.0),  # [[x]] wins over an earlier [x]
        ("[[3]] first, then [[7]]", 3.0),  # the first [[x]]
        ("[[10]]", 10.0),
        ("no rating at all", -1.0),
        ("Rating: [[ 8 ]]", -1.0),
        ("Rating: [[8/10]]", -1.0),
        ("Rating: 8", -1.0),
    ],
)
def test_parse_rating(judgment: str, rating: float) -> None:
    assert mtbench.parse_rating(judgment) == rating


@pytest.fixture
def prompts() -> dict[str, dict[str, Any]]:
    return mtbench.read_judge_prompts(FIXTURES / "mt_bench_judge_prompts.jsonl")


def test_single_v1_prompts_for_either_turn(prompts: dict[str, dict[str, Any]]) -> None:
    question = {"question_id": 1, "category": "writing", "turns": ["Write a haiku.", "Now a limerick."]}
    name, system, user = mtbench.build_judge_prompt(prompts, question, ["a haiku", "a limerick"], 1, None)
    assert (name, system) == ("single-v1", "You grade answers.")
    assert user == (
        "[Question]\nWrite a haiku.\n\n[Answer]\na haiku\n\n"
        "Give a short reason, then the grade as [[rating]] from 1 to 10."
    )
    name, system, user = mtbench.build_judge_prompt(prompts, question, ["a haiku", "a limerick"], 2, ["ref"])
    assert name == "single-v1-multi-turn" and system == "You grade the second answer of a conversation."
    assert user.startswith("Q1: Write a haiku.\nA1: a haiku\nQ2: Now a limerick.\nA2: a limerick\n")


def test_math_uses_the_reference_when_there_is_one(prompts: dict[str, dict[str, Any]]) -> None:
    question = {"question_id": 2, "category": "math", "turns": ["12 * 12?", "And 144 / 3?"]}
    name, system, user = mtbench.build_judge_prompt(prompts, question, ["144", "46"], 1, ["144", "48"])
    assert (name, system) == ("single-math-v1", "You grade answers against a reference.")
    assert "[Reference]\n144\n\n[Answer]\n144" in user
    name, _, user = mtbench.build_judge_prompt(prompts, question, ["144", "46"], 2, ["144", "48"])
    assert name == "single-math-v1-multi-turn" and "R1: 144\nQ2: And 144 / 3?\nR2: 48\nA1: 144\nA2: 46" in user
    name, _, user = mtbench.build_judge_prompt(prompts, question, ["144", "46"], 2, ["144"])
    assert name == "single-math-v1-multi-turn" and "R2: \n" in user  # a reference with one turn only
    # Without a reference, or without the reference-guided prompt: the plain one.
    assert mtbench.build_judge_prompt(prompts, question, ["144", "46"], 1, None)[0] == "single-v1"
    assert mtbench.build_judge_prompt(prompts, question, ["144", "46"], 2, None)[0] == "single-v1-multi-turn"
    plain = {k: v for k, v in prompts.items() if not k.startswith("single-math")}
    assert mtbench.build_judge_prompt(plain, question, ["144", "46"], 1, ["144", "48"])[0] == "single-v1"
    # A category that needs no reference ignores one.
    writing = {**question, "category": "writing"}
    assert mtbench.build_judge_prompt(prompts, writing, ["144", "46"], 1, ["144", "48"])[0] == "single-v1"


def test_a_prompt_needing_a_value_moa_lacks_is_a_data_error(prompts: dict[str, dict[str, Any]]) -> None:
    question = {"question_id": 2, "category": "math", "turns": ["q1", "q2"]}
    with pytest.raises(DataError, match=r"judge prompt 'single-math-v1' needs a value moa does not have: 'ref_"):
        mtbench.build_judge_prompt(prompts, question, ["a1", "a2"], 1, [])  # an empty reference
    bad = {**prompts, "single-v1": {"prompt_template": "{question} {answer} {rubric}"}}
    with pytest.raises(DataError, match="'single-v1' needs a value moa does not have: 'rubric'"):
        mtbench.build_judge_prompt(bad, {**question, "category": "writing"}, ["a1", "a2"], 1, None)


def test_a_stray_brace_in_a_judge_prompt_is_a_data_error(prompts: dict[str, dict[str, Any]]) -> None:
    bad = {**prompts, "single-v1": {"prompt_template": "{question} {answer} {"}}
    with pytest.raises(DataError):
        mtbench.build_judge_prompt(bad, {"category": "writing", "turns": ["q"]}, ["a"], 1, None)


def judgment(score: float, turn: int, category: str) -> dict[str, Any]:
    return {"score": score, "turn": turn, "category": category}


def test_mtbench_scores_leave_unparsable_ratings_out_of_the_means() -> None:
    scores = mtbench.mtbench_scores(
        [
            judgment(8.0, 1, "writing"),
            judgment(6.0, 2, "writing"),
            judgment(-1.0, 1, "math"),  # unparsable: counted apart, not a rating of -1
            judgment(3.0, 2, "math"),
            judgment(10.0, 1, "coding"),
        ]
    )
    assert scores["score"] == pytest.approx(27 / 4) and scores["unparsable_judgments"] == 1
    assert (scores["score_turn_1"], scores["score_turn_2"]) == (pytest.approx(9.0), pytest.approx(4.5))
    assert scores["score_by_category"] == {"coding": 10.0, "math": 3.0, "writing": 7.0}
    assert (
        list(scores["score_by_category"]) == ["coding", "math", "writing"] and scores["score_name"] == "MT-Bench score"
    )
    none = mtbench.mtbench_scores([judgment(-1.0, 1, "math"), judgment(-1.0, 2, "math")])
    assert none["score"] is None and none["score_by_category"] == {} and none["unparsable_judgments"] == 2
    assert none["score_turn_1"] is None and none["score_turn_2"] is None
    assert mtbench.mtbench_scores([])["score"] is None


# ------------------------------------------------------------------ _stats


def test_win_rate_counts_draws_as_half_and_drops_missing_and_out_of_range() -> None:
    rate = _stats.win_rate([2.0, 1.0, 0.0, 1.5, None, 1.8, 3.0, 0.5])
    # kept: 2.0, 1.0, 0 (a draw, read as 1.5), 1.5, 1.8 -> values 1, 0, .5, .5, .8: mean 0.56
    assert rate.win_rate == pytest.approx(56.0) and rate.n_total == 5
    assert (rate.n_wins, rate.n_wins_base, rate.n_draws) == (2, 1, 2)
    assert rate.discrete_win_rate == pytest.approx((2 + 2 / 2) / 5 * 100)
    # sample variance of (1, 0, .5, .5, .8) around .56: (.1936 + .3136 + .0036 * 2 + .0576) / 4 = .143
    assert rate.standard_error == pytest.approx(math.sqrt(0.143 / 5) * 100)
    single = _stats.win_rate([1.7])
    assert single.win_rate == pytest.approx(70.0) and math.isnan(single.standard_error)
    empty = _stats.win_rate([None, None])
    assert empty.n_total == 0 and math.isnan(empty.win_rate) and math.isnan(empty.discrete_win_rate)


preference = st.floats(min_value=1.0, max_value=2.0, allow_nan=False)


@given(st.integers(min_value=1, max_value=50))
def test_only_wins_are_100_and_only_losses_0(n: int) -> None:
    wins, losses = _stats.win_rate([2.0] * n), _stats.win_rate([1.0] * n)
    assert wins.win_rate == 100.0 and wins.discrete_win_rate == 100.0 and wins.n_wins == n
    assert losses.win_rate == 0.0 and losses.discrete_win_rate == 0.0 and losses.n_wins_base == n
    assert n == 1 or wins.standard_error == 0.0


@given(st.lists(st.one_of(preference, st.none(), st.just(0.0)), min_size=1, max_size=40))
def test_swapping_the_two_outputs_mirrors_the_win_rate(preferences: list[float | None]) -> None:
    rate = _stats.win_rate(preferences)
    mirrored = _stats.win_rate([p if p is None or p == 0.0 else 3.0 - p for p in preferences])
    if rate.n_total == 0:
        assert mirrored.n_total == 0
        return
    assert 0.0 <= rate.win_rate <= 100.0 and 0.0 <= rate.discrete_win_rate <= 100.0
    assert mirrored.win_rate == pytest.approx(100.0 - rate.win_rate, abs=1e-9)
    assert mirrored.discrete_win_rate == pytest.approx(100.0 - rate.discrete_win_rate, abs=1e-9)
    assert (mirrored.n_wins, mirrored.n_wins_base) == (rate.n_wins_base, rate.n_wins)
    assert rate.n_wins + rate.n_wins_base <= rate.n_total


@pytest.mark.parametrize(
    ("right_to_wrong", "wrong_to_right", "p"),
    [
        (0, 0, 1.0),  # no discordant pair: no evidence
        (0, 1, 1.0),  # 2 * 1/2, capped at 1
        (1, 1, 1.0),
        (0, 5, 2 / 32),  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
        (1, 4, 2 * (1 + 5) / 32),
        (2, 3, 1.0),  # 2 * (1 + 5 + 10) / 32 = 1
        (0, 6, 2 / 64),
        (3, 10, 2 * (1 + 13 + 78 + 286) / 8192),
        (10, 2, 2 * (1 + 12 + 66) / 4096),
    ],
)
def test_mcnemar_exact_by_hand(right_to_wrong: int, wrong_to_right: int, p: float) -> None:
    assert _stats.mcnemar_exact(right_to_wrong, wrong_to_right) == pytest.approx(p, rel=1e-12)


@given(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=300))
def test_mcnemar_is_a_probability_and_symmetric(b: int, c: int) -> None:
    p = _stats.mcnemar_exact(b, c)
    assert 0.0 < p <= 1.0
    assert p == _stats.mcnemar_exact(c, b)
    assert _stats.mcnemar_exact(b, c + 1) <= p or c + 1 <= b  # more flips one way: more evidence, once past a tie


@given(st.integers(min_value=1, max_value=60))
def test_mcnemar_with_all_flips_one_way(n: int) -> None:
    assert _stats.mcnemar_exact(0, n) == min(1.0, 2.0 ** (1 - n))


# Read off AlpacaEval's published judgments of alpaca-7b (weighted_alpaca_eval_gpt4_turbo): a confident
# judge named the reference's position, and the preference says which output that was.
OFFICIAL_ORDER = [
    ("Who made Berlin", True),
    ("What is Atlantis?", False),
    ("can you write code?", True),
    ("What is Gremolata?", False),
    ("why the sky is blue?", True),
    ("How do I build a PC?", False),
]


@pytest.mark.parametrize(("instruction", "switched"), OFFICIAL_ORDER)
def test_the_output_order_coin_matches_alpacaevals(instruction: str, switched: bool) -> None:
    assert _stats.is_switched(instruction) is switched


@given(st.text(max_size=200))
def test_the_output_order_coin_is_a_function_of_instruction_and_seed(instruction: str) -> None:
    assert _stats.is_switched(instruction) == _stats.is_switched(instruction, 0)
    assert isinstance(_stats.is_switched(instruction, 1), bool)


def test_the_seed_changes_the_coin() -> None:
    flips = [_stats.is_switched(f"instruction {i}") != _stats.is_switched(f"instruction {i}", 1) for i in range(200)]
    assert 60 < sum(flips) < 140  # an independent coin per seed: about half differ
