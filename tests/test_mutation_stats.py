"""AlpacaEval's preferences, exactly: from the judge's logprobs and from its text.

Written against the mutants of ``moa/eval/_stats.py`` that survived the rest of the suite
(``benchmarks/mutation_score.py``).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
from test_lc import sklearn_lc, synthetic

from moa._errors import ConfigError
from moa.eval import _lc
from moa.eval._common import DataError
from moa.eval._stats import preference_from_logprobs, preference_from_text


@pytest.mark.parametrize(
    ("top", "switched", "preference"),
    [
        ({"m": math.log(0.3), "M": math.log(0.1)}, False, 1.25),  # shown second: P(M) over the pair
        ({"m": math.log(0.3), "M": math.log(0.1)}, True, 1.75),  # shown first: P(m) over the pair
        ({"m": -0.7, "M": -0.7}, False, 1.5),  # the judge cannot choose: a draw
        ({"m": math.log(0.2)}, True, 2.0),  # only one of the two tokens: normalised over the pair
        ({"x": -0.1}, False, None),
    ],
)
def test_a_preference_is_the_expectation_over_the_two_verdict_tokens(
    top: dict[str, float], switched: bool, preference: float | None
) -> None:
    result = preference_from_logprobs(top, switched)
    assert result == (None if preference is None else pytest.approx(preference))


@pytest.mark.parametrize(
    ("text", "preference"),
    [
        (' "M". ', 2.0),
        ("`m`", 1.0),
        ("'M'", 2.0),
        ("mX", None),
        ("XM", None),
        ("mm", None),
    ],
)
def test_a_verdict_in_quotes_is_read_and_anything_else_is_not(text: str, preference: float | None) -> None:
    assert preference_from_text(text, switched=False) == preference


# --- the LC win rate's data files, labels and sanity check -----------------------------------------------------

GAMED_HEADER = "index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline\n"


def read(tmp_path: Path, content: str) -> _lc.LCData:
    path = tmp_path / "lc.csv"
    path.write_text(content)
    return _lc.read_lc_data(path)


def refusal(tmp_path: Path, content: str) -> str:
    with pytest.raises(DataError) as info:
        read(tmp_path, content)
    return str(info.value).replace(str(tmp_path / "lc.csv"), "F")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (",0.5,0.2,0.1,False", "F, line 2: `index` is empty"),
        ("nan,0.5,0.2,0.1,False", "F, line 2: `index` is empty"),
        ("0,abc,0.2,0.1,False", "F, line 2: `preference` is not a number: 'abc'"),
        ("0,0.5,0.2,,False", "F, line 2: `instruction_difficulty` is empty"),
        ("0,0.5,0.2,0.1,maybe", "F, line 2: `not_gamed_baseline` must be True or False, not 'maybe'"),
    ],
)
def test_a_bad_df_gamed_row_is_named_by_line_and_column(tmp_path: Path, row: str, message: str) -> None:
    assert refusal(tmp_path, GAMED_HEADER + row + "\n") == message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("index,instruction_difficulty\n,0.3\n", "F, line 2: `index` is empty"),
        ("index,instruction_difficulty\n1.5,0.3\n", "F, line 2: expected `index,instruction_difficulty` numbers"),
        (
            "a,b\n1,2\n",
            "F: expected AlpacaEval's df_gamed.csv (columns index, preference, std_delta_len, instruction_difficulty, "
            "not_gamed_baseline) or instruction_difficulty.csv (an index column and `instruction_difficulty`); "
            "the header is ['a', 'b']",
        ),
    ],
)
def test_a_bad_difficulty_file_or_header_is_named(tmp_path: Path, content: str, message: str) -> None:
    assert refusal(tmp_path, content) == message


def test_an_unreadable_file_says_why(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"index,instruction_difficulty\n\xff\n")
    with pytest.raises(DataError) as info:
        _lc.read_lc_data(path)
    assert str(info.value).startswith(f"{path}: cannot read: 'utf-8' codec can't decode byte 0xff")


def test_blank_lines_are_skipped_and_every_marker_spelling_is_read(tmp_path: Path) -> None:
    markers = ["True", "false", "1", "0", "1.0", "0.0", "TRUE"]
    rows = "".join(f"{i},NaN,0.25,0.5,{marker}\n\n" for i, marker in enumerate(markers))
    data = read(tmp_path, GAMED_HEADER + "\n" + rows)
    assert [g.not_gamed for g in data.gamed] == [True, False, True, False, True, False, True]
    assert [g.preference for g in data.gamed] == [None] * 7  # NaN is a missing judgment
    assert data.source == str(tmp_path / "lc.csv") and data.difficulty == dict.fromkeys(range(7), 0.5)
    difficulty = read(tmp_path, "index,instruction_difficulty\n0,0.25\n\n1,0.75\n")
    assert (difficulty.source, difficulty.difficulty) == (str(tmp_path / "lc.csv"), {0: 0.25, 1: 0.75})


PAIRS = ([1.9, 1.2, 1.7, 1.4], [300, 900, 400, 800], [500, 500, 500, 500])


@pytest.mark.parametrize(
    ("indices", "with_file", "method"),
    [
        (
            range(4),
            True,
            "APPROXIMATION: AlpacaEval's GLM with instruction difficulty but without its gamed baselines "
            "(pass df_gamed.csv for the exact figure)",
        ),
        (range(5, 9), True, "APPROXIMATION: {file} has no difficulty for some instructions; GLM without that term"),
        (
            range(4),
            False,
            "APPROXIMATION: GLM without instruction difficulty or gamed baselines "
            "(pass df_gamed.csv for the exact figure)",
        ),
    ],
)
def test_each_approximation_says_what_it_lacks(tmp_path: Path, indices: range, with_file: bool, method: str) -> None:
    difficulty = read(tmp_path, "index,instruction_difficulty\n0,0.1\n1,0.2\n2,0.3\n3,0.4\n") if with_file else None
    result = _lc.length_controlled_win_rate(*PAIRS, indices, difficulty)
    assert result is not None and result.method == method.format(file=tmp_path / "lc.csv")


def test_two_judged_pairs_are_enough_and_lengths_must_pair_up() -> None:
    two = _lc.length_controlled_win_rate([1.9, None, 1.2], [300, 600, 900], [500, 500, 500], [0, 1, 2])
    assert two is not None and two.win_rate == 50.0  # two folds of one pair each: C = 1e-4, every weight 0
    with pytest.raises(ValueError):
        _lc.length_controlled_win_rate([1.9, 1.2, 1.5], [300, 900], [500, 500, 500], [0, 1, 2])


def test_lengths_that_differ_by_little_still_get_a_length_term() -> None:
    # Deltas 0 or 1 character: a standard deviation below 1 still scales them (AlpacaEval's figure).
    prefs = [1.9, 1.1] * 5
    lengths = [500, 501] * 5
    data = _lc.LCData("difficulty", dict.fromkeys(range(10), 0.0))
    ours = _lc.length_controlled_win_rate(prefs, lengths, [501] * 10, range(10), data)
    theirs, c, coef = sklearn_lc(prefs, lengths, [501] * 10, [0.0] * 10, [])
    assert ours is not None and (ours.win_rate, ours.C) == (theirs, c)
    assert ours.weights["np.tanh(std_delta_len)"] == coef[0] != 0.0


def test_the_rows_of_the_reference_itself_weigh_as_much_as_the_models(tmp_path: Path) -> None:
    gamed = [_lc.GamedRow(i, 0.2 + 0.05 * i, 0.3 * (i % 3 - 1), 0.0, i % 2 == 0) for i in range(8)]
    prefs = [1.8, 1.3, 1.6, 1.2, 1.9, 1.4]
    model_lengths, reference_lengths = [200, 700, 300, 800, 100, 600], [450] * 6
    data = _lc.LCData("gamed", dict.fromkeys(range(6), 0.0), tuple(gamed))
    ours = _lc.length_controlled_win_rate(prefs, model_lengths, reference_lengths, range(6), data)
    theirs, c, _ = sklearn_lc(prefs, model_lengths, reference_lengths, [0.0] * 6, gamed)
    assert ours is not None and ours.exact and (ours.win_rate, ours.C) == (theirs, c)


def test_a_separable_run_fits_without_a_warning_reaching_the_caller() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = _lc.length_controlled_win_rate(
            [2.0, 1.0, 2.0, 1.0, 2.0, 1.0], [100, 900, 120, 880, 90, 950], [500] * 6, range(6)
        )
    assert result is not None and result.win_rate == 50.0


@pytest.mark.parametrize(
    ("raw", "lc", "extreme"),
    [
        (80.0, 60.0, False),  # down a quarter of the way to 0 exactly: not past it
        (80.0, 59.9, True),
        (80.0, 65.0, False),
        (80.0, 62.0, False),
        (80.0, 50.0, True),
        (20.0, 10.0, False),  # down 10 points exactly
        (20.0, 9.5, True),
        (20.0, 12.0, False),
        (20.0, 40.0, False),  # up a quarter of the way to 100 exactly
        (20.0, 40.1, True),
        (20.0, 35.0, False),
        (20.0, 38.0, False),
        (20.0, 45.0, True),
        (80.0, 90.0, False),  # up 10 points exactly
        (80.0, 87.0, False),
        (80.0, 90.5, True),
    ],
)
def test_an_extreme_change_moves_ten_points_and_a_quarter_of_the_way(raw: float, lc: float, extreme: bool) -> None:
    assert _lc.is_extreme_change(raw, lc) is extreme


def test_without_numpy_the_fit_is_refused_before_any_call(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numpy" else real(name, *a))
    with pytest.raises(ConfigError) as info:
        _lc.check_installed()
    assert str(info.value) == (
        "the LC win rate is fitted by scikit-learn: it needs the eval extra: pip install 'moa-pipeline[eval]'"
    )


def test_two_pairs_beside_the_gamed_rows_are_scaled_by_their_own_spread() -> None:
    judged = synthetic(0, 20)  # 40 gamed rows; the model judged on two instructions only
    difficulty = judged["difficulty"][:2]
    prefs, model_lengths, reference_lengths = [1.9, 1.2], [200, 800], [500, 500]
    data = _lc.LCData("gamed", dict(enumerate(difficulty)), tuple(judged["gamed"]))
    ours = _lc.length_controlled_win_rate(prefs, model_lengths, reference_lengths, [0, 1], data)
    theirs, c, coef = sklearn_lc(prefs, model_lengths, reference_lengths, difficulty, judged["gamed"])
    assert ours is not None and (ours.win_rate, ours.C, list(ours.weights.values())) == (theirs, c, list(coef))
    assert ours.win_rate == pytest.approx(46.68, abs=0.01)  # with the two deltas left unscaled (0): 52.68


def test_answers_as_long_as_the_reference_have_no_length_term() -> None:
    same = _lc.length_controlled_win_rate([1.9, 1.1, 1.8, 1.7], [80] * 4, [80] * 4, range(4))
    assert same is not None and same.weights["np.tanh(std_delta_len)"] == 0.0


class _Built(Exception):
    """Raised by a stand-in LogisticRegressionCV once it has seen its arguments."""


def _stand_in(defaults: dict[str, Any]) -> type:
    """A LogisticRegressionCV whose constructor takes these keyword parameters, and stops at once with them."""

    class StandIn:
        def __init__(self, **kwargs: Any) -> None:
            raise _Built(kwargs)

    parameters = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in defaults.items()]
    StandIn.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return StandIn


@pytest.mark.parametrize(
    ("defaults", "penalty"),
    [
        # scikit-learn before 1.8: AlpacaEval's own penalty="l1".
        ({"penalty": "l2", "l1_ratios": None}, {"penalty": "l1"}),
        # 1.8 deprecated penalty for l1_ratios=(1,), the same fit.
        ({"penalty": "deprecated", "l1_ratios": "warn"}, {"l1_ratios": (1.0,)}),
        # 1.9 also offers new attributes; C_ and coef_ are read as before.
        (
            {"penalty": "deprecated", "l1_ratios": "warn", "use_legacy_attributes": "warn"},
            {"l1_ratios": (1.0,), "use_legacy_attributes": False},
        ),
        ({"l1_ratios": "warn"}, {"l1_ratios": (1.0,)}),
    ],
)
def test_the_l1_penalty_is_passed_as_each_scikit_learn_takes_it(
    monkeypatch: pytest.MonkeyPatch, defaults: dict[str, Any], penalty: dict[str, Any]
) -> None:
    import sklearn.linear_model

    monkeypatch.setattr(sklearn.linear_model, "LogisticRegressionCV", _stand_in(defaults))
    with pytest.raises(_Built) as info:
        _lc.length_controlled_win_rate(*PAIRS, range(4))
    (kwargs,) = info.value.args
    assert {k: v for k, v in kwargs.items() if k not in ("cv", "scoring")} == {**_lc.ALPACA_EVAL_KWARGS, **penalty}


def test_the_loss_of_a_prediction_of_exactly_0_or_1_is_clipped_to_a_finite_number() -> None:
    import numpy as np

    # Both rows as wrong as can be: label 1 predicted 0, label 0 predicted 1 (soft target 1 for both).
    y_true, y_pred, true_prob = np.array([1, 0]), np.array([0.0, 1.0]), np.array([1.0, 1.0])
    clipped = -(math.log(1e-15) + math.log(1 - (1 - 1e-15))) / 2
    assert _lc._weighted_log_loss(y_true, y_pred, true_prob, np.ones(2)) == pytest.approx(clipped)
    assert _lc._weighted_log_loss(y_true, y_pred, true_prob, np.full(2, 2.0)) == pytest.approx(2 * clipped)


def test_a_fit_stopped_at_liblinears_iteration_limit_warns_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.exceptions import ConvergenceWarning

    judged = ([1.0, 1.9, 1.7], [587, 332, 584], [500, 500, 500], range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = _lc.length_controlled_win_rate(*judged)
    assert result is not None and result.win_rate == 50.0
    # Without the fit's own filter, this very fit warns: the test above is not vacuous.
    monkeypatch.setattr(warnings, "simplefilter", lambda *args, **kwargs: None)
    with pytest.warns(ConvergenceWarning):
        _lc.length_controlled_win_rate(*judged)


def test_lengths_that_do_not_pair_up_are_refused_before_the_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fit(*args: object) -> None:
        raise AssertionError("fitted lengths that do not pair up")

    monkeypatch.setattr(_lc, "_fit", no_fit)
    for model_lengths, reference_lengths in [([300, 900], [500, 500, 500]), ([300, 900, 400], [500, 500])]:
        with pytest.raises(ValueError, match="zip"):
            _lc.length_controlled_win_rate([1.9, 1.2, 1.5], model_lengths, reference_lengths, [0, 1, 2])
