"""AlpacaEval's length-controlled win rate: our plain-Python estimator against scikit-learn.

The oracle below builds AlpacaEval's ``length_controlled_v1`` design from the raw
judgments on its own (numpy) and fits it with scikit-learn's ``LogisticRegressionCV``
configured as AlpacaEval configures it (L1, liblinear, no intercept, 5-fold
``GroupKFold`` over duplicated soft-label rows, the weighted log-loss scorer).
"""

from __future__ import annotations

import csv
import math
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import make_scorer
from sklearn.model_selection import GroupKFold

from moa.eval import _lc
from moa.eval._common import DataError

GAMED_HEADER = ["", "model", "index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline"]


def _weighted_log_loss(y_true: Any, y_pred: Any, true_prob: Any, true_sample_weight: Any) -> float:
    target = np.where(y_true == 1, true_prob, 1 - true_prob)
    q = np.clip(y_pred, 1e-15, 1 - 1e-15)
    return float(-np.mean((target * np.log(q) + (1 - target) * np.log(1 - q)) * true_sample_weight))


def sklearn_lc(
    preferences: list[float | None],
    model_lengths: list[int],
    reference_lengths: list[int],
    difficulty: list[float],
    gamed: list[_lc.GamedRow],
    *,
    tight: bool = False,
) -> tuple[float, float, np.ndarray]:
    """(LC win rate, C, coefficients) by scikit-learn, from the raw judgments.

    ``tight`` runs liblinear to tolerance 1e-12 instead of AlpacaEval's default 1e-4.
    """
    delta = np.array(reference_lengths, dtype=float) - np.array(model_lengths, dtype=float)
    std_delta = delta / delta.std(ddof=1)
    own_pref = np.array([np.nan if p is None else (0.5 if p == 0 else p - 1) for p in preferences])
    own_x = np.column_stack([np.tanh(std_delta), difficulty, np.ones(len(delta))])
    gamed_x = np.array([[math.tanh(g.std_delta_len), g.difficulty, float(g.not_gamed)] for g in gamed]).reshape(-1, 3)
    gamed_pref = np.array([np.nan if g.preference is None else g.preference for g in gamed])
    gamed_w = np.array([1.0 if g.not_gamed else 0.1 for g in gamed])
    x = np.vstack([gamed_x, own_x])
    p = np.concatenate([gamed_pref, own_pref])
    s = np.concatenate([gamed_w, np.ones(len(delta))])
    keep = ~np.isnan(p)
    x, p, s = x[keep], p[keep], s[keep]
    n = len(x)
    x2, y2 = np.vstack([x, x]), np.concatenate([np.ones(n), np.zeros(n)])
    prob, weight = np.concatenate([p, 1 - p]), np.concatenate([s, s])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # `penalty` is deprecated in recent scikit-learn; AlpacaEval passes it
        scorer = make_scorer(_weighted_log_loss, response_method="predict_proba", greater_is_better=False)
        model = LogisticRegressionCV(
            cv=GroupKFold(n_splits=5),
            scoring=scorer.set_score_request(true_prob=True, true_sample_weight=True),
            penalty="l1",
            solver="liblinear",
            fit_intercept=False,
            random_state=123,
            **({"tol": 1e-12, "max_iter": 100_000} if tight else {}),
        )
        model.set_fit_request(sample_weight=True)
        model.fit(x2, y2, sample_weight=prob * weight, groups=groups, true_prob=prob, true_sample_weight=weight)
    test = np.column_stack([np.zeros(len(delta)), difficulty, np.ones(len(delta))])
    return float(model.predict_proba(test)[:, 1].mean() * 100), float(model.C_[0]), model.coef_[0]


def synthetic(seed: int, n: int) -> dict[str, Any]:
    """Judgments shaped like AlpacaEval's: a length-biased judge, two gamed baselines, some draws and gaps."""
    rng = random.Random(seed)
    difficulty = [rng.gauss(0, 1) for _ in range(n)]
    length_bias, quality = rng.uniform(-1.5, -0.3), rng.uniform(-1.5, 1.5)

    def judge(z: float) -> float:
        return min(max(1 / (1 + math.exp(-z)) + rng.gauss(0, 0.15), 0.0), 1.0)

    gamed = []
    for shift in (0.9, -0.9):  # a verbose and a concise variant of the reference
        for i in range(n):
            sd = rng.gauss(-shift, 0.6)
            pref = judge(length_bias * math.tanh(sd) + 0.9 * difficulty[i])
            gamed.append(_lc.GamedRow(i, None if rng.random() < 0.02 else pref, sd, difficulty[i], False))
    reference_lengths = [rng.randint(300, 3000) for _ in range(n)]
    model_lengths = [max(1, int(r * math.exp(rng.gauss(0.2, 0.5)))) for r in reference_lengths]
    deltas = [r - m for m, r in zip(model_lengths, reference_lengths, strict=True)]
    spread = float(np.std(deltas, ddof=1))
    preferences: list[float | None] = []
    for i in range(n):
        z = length_bias * math.tanh(deltas[i] / spread) + 0.9 * difficulty[i] + quality
        roll = rng.random()
        preferences.append(None if roll < 0.03 else 0.0 if roll < 0.06 else 1 + judge(z))
    return {
        "difficulty": difficulty,
        "gamed": gamed,
        "preferences": preferences,
        "model_lengths": model_lengths,
        "reference_lengths": reference_lengths,
    }


def write_gamed(path: Path, gamed: list[_lc.GamedRow]) -> Path:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(GAMED_HEADER)
        for k, g in enumerate(gamed):
            model = "gpt4_1106_preview_verbose" if k < len(gamed) // 2 else "gpt4_1106_preview_concise"
            pref = "" if g.preference is None else repr(g.preference)
            out.writerow([k, model, g.index, pref, repr(g.std_delta_len), repr(g.difficulty), g.not_gamed])
    return path


@pytest.mark.parametrize("seed", [0, 1, 2, 4])
def test_lc_is_scikit_learns_optimum_to_eight_decimals(seed: int, tmp_path: Path) -> None:
    data = synthetic(seed, 150)
    lc_data = _lc.read_lc_data(write_gamed(tmp_path / "df_gamed.csv", data["gamed"]))
    assert lc_data.gamed == tuple(data["gamed"])  # the CSV round trip loses nothing
    ours = _lc.length_controlled_win_rate(
        data["preferences"], data["model_lengths"], data["reference_lengths"], range(150), lc_data
    )
    args = (data["preferences"], data["model_lengths"], data["reference_lengths"], data["difficulty"], data["gamed"])
    converged, c, coef = sklearn_lc(*args, tight=True)
    assert ours is not None and ours.exact and ours.method.startswith("exact")
    assert c == ours.C and ours.win_rate == pytest.approx(converged, abs=1e-8)
    assert list(ours.weights.values()) == pytest.approx(list(coef), abs=1e-8)
    assert list(ours.weights) == ["np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline"]
    # AlpacaEval's own call stops liblinear at tolerance 1e-4: within 0.02 points of the optimum
    # (a near-tie in the CV scores can then pick a neighbouring C).
    default, _, _ = sklearn_lc(*args)
    assert ours.win_rate == pytest.approx(default, abs=0.02)


def test_the_cross_validation_picks_the_same_c_as_scikit_learn_when_scores_are_not_tied() -> None:
    # Few rows: the penalty matters and the CV curve has a clear optimum at a small C.
    data = synthetic(7, 30)
    ours = _lc.length_controlled_win_rate(
        data["preferences"], data["model_lengths"], data["reference_lengths"], range(30),
        _lc.LCData("gamed", dict(enumerate(data["difficulty"])), tuple(data["gamed"])),
    )  # fmt: skip
    theirs, c, _coef = sklearn_lc(
        data["preferences"], data["model_lengths"], data["reference_lengths"], data["difficulty"], data["gamed"]
    )
    assert ours is not None and c == ours.C
    assert ours.win_rate == pytest.approx(theirs, abs=1e-3)


def test_the_solver_meets_the_optimality_conditions() -> None:
    rng = random.Random(3)
    rows = [[rng.gauss(0, 1), rng.gauss(0, 1), 1.0] for _ in range(200)]
    targets = [rng.random() for _ in rows]
    weights = [rng.choice([0.1, 1.0]) for _ in rows]
    for c in (1e-4, 0.05, 1.0, 1e4):
        w = _lc.fit_l1_logistic(rows, targets, weights, c)
        grad = [
            c * sum(s * (1 / (1 + math.exp(-sum(a * b for a, b in zip(w, x, strict=True)))) - y) * x[j]
                    for x, y, s in zip(rows, targets, weights, strict=True))
            for j in range(3)
        ]  # fmt: skip
        scale = 1 + c * sum(weights)  # the loss gradient's size: residuals are judged relative to it
        for wj, gj in zip(w, grad, strict=True):
            if wj == 0.0:
                assert abs(gj) <= 1 + 1e-8 * scale  # zero is optimal: the loss slope is within the penalty's
            else:
                assert abs(gj + math.copysign(1.0, wj)) <= 1e-8 * scale
    assert _lc.fit_l1_logistic(rows, targets, weights, 1e-4) == [0.0, 0.0, 0.0]


def test_log_spaced_c_grid_is_scikit_learns() -> None:
    assert tuple(float(c) for c in np.logspace(-4, 4, 10)) == _lc.CS


def test_without_df_gamed_the_figure_is_labelled_an_approximation(tmp_path: Path) -> None:
    data = synthetic(4, 60)
    difficulty_csv = tmp_path / "instruction_difficulty.csv"
    lines = "".join(f"{i},{d!r}\n" for i, d in enumerate(data["difficulty"]))
    difficulty_csv.write_text("index,instruction_difficulty\n" + lines)
    only_difficulty = _lc.read_lc_data(difficulty_csv)
    assert not only_difficulty.exact and only_difficulty.difficulty == dict(enumerate(data["difficulty"]))
    args = (data["preferences"], data["model_lengths"], data["reference_lengths"], range(60))
    with_difficulty = _lc.length_controlled_win_rate(*args, only_difficulty)
    bare = _lc.length_controlled_win_rate(*args)
    assert with_difficulty is not None and with_difficulty.method.startswith("APPROXIMATION")
    assert "instruction_difficulty" in with_difficulty.weights and not with_difficulty.exact
    assert (
        bare is not None
        and bare.method.startswith("APPROXIMATION")
        and list(bare.weights)
        == [
            "np.tanh(std_delta_len)",
            "not_gamed_baseline",
        ]
    )
    # An instruction df_gamed.csv does not cover (not one of AlpacaEval's 805): approximate, and said so.
    partial = _lc.LCData("df_gamed.csv", {i: 0.0 for i in range(10)}, tuple(data["gamed"][:10]))
    result = _lc.length_controlled_win_rate(*args, partial)
    assert result is not None and not result.exact and "df_gamed.csv has no difficulty" in result.method


def test_fewer_than_two_judged_pairs_give_no_lc() -> None:
    assert _lc.length_controlled_win_rate([1.7, None], [10, 20], [15, 15], [0, 1]) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b\n1,2\n", "expected AlpacaEval's df_gamed.csv"),
        ("", "empty file"),
        (",".join(GAMED_HEADER) + "\n0,m,0,0.5,x,0.1,False\n", "line 2: `std_delta_len` is not a number: 'x'"),
        (",".join(GAMED_HEADER) + "\n0,m,0,1.5,0.2,0.1,False\n", "line 2: `preference` 1.5 is outside [0, 1]"),
        (",".join(GAMED_HEADER) + "\n0,m,0,0.5,0.2,0.1,maybe\n", "line 2: `not_gamed_baseline` must be True or False"),
        (",".join(GAMED_HEADER) + "\n0,m,0\n", "line 2: 3 fields, the header has 7"),
        ("index,instruction_difficulty\n0,0.3\n1,\n", "line 3: `instruction_difficulty` is empty"),
    ],
)
def test_bad_lc_files_name_the_file_line_and_column(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "lc.csv"
    path.write_text(content)
    with pytest.raises(DataError) as caught:
        _lc.read_lc_data(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_a_missing_lc_file_is_named() -> None:
    with pytest.raises(DataError, match=r"nowhere/df_gamed\.csv does not exist"):
        _lc.read_lc_data(Path("nowhere/df_gamed.csv"))
