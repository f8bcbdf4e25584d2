"""AlpacaEval's length-controlled win rate: moa's scikit-learn fit against independent computations.

``sklearn_lc`` below is AlpacaEval's ``length_controlled_v1`` rebuilt from the raw judgments on
its own (numpy), ending in AlpacaEval's literal call: ``LogisticRegressionCV(penalty="l1",
solver="liblinear", fit_intercept=False, random_state=123, cv=GroupKFold(5))`` over duplicated
soft-label rows with the weighted log-loss scorer.  ``_l1_fit`` solves the same L1-penalised
objective with scipy's L-BFGS-B instead (no scikit-learn at all), to check that the figure is
the optimum of the right problem and that the cross-validation picks the right C.
"""

from __future__ import annotations

import csv
import inspect
import math
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import make_scorer
from sklearn.model_selection import GroupKFold

from moa._errors import ConfigError
from moa.eval import _lc
from moa.eval._common import DataError

GAMED_HEADER = ["", "model", "index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline"]
NAMES = ["np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline"]


def _weighted_log_loss(y_true: Any, y_pred: Any, true_prob: Any, true_sample_weight: Any) -> float:
    target = np.where(y_true == 1, true_prob, 1 - true_prob)
    q = np.clip(y_pred, 1e-15, 1 - 1e-15)
    return float(-np.mean((target * np.log(q) + (1 - target) * np.log(1 - q)) * true_sample_weight))


def design(
    preferences: list[float | None],
    model_lengths: list[int],
    reference_lengths: list[int],
    difficulty: list[float],
    gamed: list[_lc.GamedRow],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """AlpacaEval's training rows (gamed first, judged rows only), their soft targets and weights, and the test rows."""
    delta = np.array(reference_lengths, dtype=float) - np.array(model_lengths, dtype=float)
    std_delta = delta / delta.std(ddof=1)
    own_pref = np.array([np.nan if p is None else (0.5 if p == 0 else p - 1) for p in preferences])
    own_x = np.column_stack([np.tanh(std_delta), difficulty, np.ones(len(delta))])
    gamed_x = np.array([[np.tanh(g.std_delta_len), g.difficulty, float(g.not_gamed)] for g in gamed]).reshape(-1, 3)
    gamed_pref = np.array([np.nan if g.preference is None else g.preference for g in gamed])
    gamed_w = np.array([1.0 if g.not_gamed else 0.1 for g in gamed])
    x = np.vstack([gamed_x, own_x])
    p = np.concatenate([gamed_pref, own_pref])
    s = np.concatenate([gamed_w, np.ones(len(delta))])
    keep = ~np.isnan(p)
    test = np.column_stack([np.zeros(len(delta)), difficulty, np.ones(len(delta))])
    return x[keep], p[keep], s[keep], test


def sklearn_lc(
    preferences: list[float | None],
    model_lengths: list[int],
    reference_lengths: list[int],
    difficulty: list[float],
    gamed: list[_lc.GamedRow],
    *,
    tight: bool = False,
) -> tuple[float, float, np.ndarray]:
    """(LC win rate, C, coefficients) by AlpacaEval's call, from the raw judgments.

    ``tight`` runs liblinear to tolerance 1e-12 instead of AlpacaEval's default 1e-4.
    """
    x, p, s, test = design(preferences, model_lengths, reference_lengths, difficulty, gamed)
    n = len(x)
    x2, y2 = np.vstack([x, x]), np.concatenate([np.ones(n), np.zeros(n)])
    prob, weight = np.concatenate([p, 1 - p]), np.concatenate([s, s])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    # AlpacaEval's words; scikit-learn 1.10 drops `penalty` (then only l1_ratios=(1,) says L1).
    penalty = {"penalty": "l1"} if "penalty" in inspect.signature(LogisticRegressionCV).parameters else {}
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # `penalty` is deprecated since scikit-learn 1.8
        # Tiny sets stop some CV fits at 100 iterations (AlpacaEval's too), and 1e-12 is not always reached in
        # 100,000: converged far past what matters here.
        warnings.simplefilter("ignore", ConvergenceWarning)
        scorer = make_scorer(_weighted_log_loss, response_method="predict_proba", greater_is_better=False)
        model = LogisticRegressionCV(
            cv=GroupKFold(n_splits=5),
            scoring=scorer.set_score_request(true_prob=True, true_sample_weight=True),
            solver="liblinear",
            fit_intercept=False,
            random_state=123,
            **(penalty or {"l1_ratios": (1.0,)}),
            **({"tol": 1e-12, "max_iter": 100_000} if tight else {}),
        )
        model.set_fit_request(sample_weight=True)
        model.fit(x2, y2, sample_weight=prob * weight, groups=groups, true_prob=prob, true_sample_weight=weight)
    c = float(np.ravel(model.C_)[0])
    return float(model.predict_proba(test)[:, 1].mean() * 100), c, model.coef_[0]


def _objective(w: np.ndarray, x: np.ndarray, p: np.ndarray, s: np.ndarray, c: float) -> float:
    z = x @ w
    return float(np.abs(w).sum() + c * np.sum(s * (np.logaddexp(0, z) - p * z)))


def _l1_fit(x: np.ndarray, p: np.ndarray, s: np.ndarray, c: float) -> np.ndarray:
    """argmin ||w||_1 + c * sum s_i (softplus(x_i.w) - p_i x_i.w), by L-BFGS-B on w = u - v (u, v >= 0)."""
    k = x.shape[1]

    def f(uv: np.ndarray) -> tuple[float, np.ndarray]:
        w = uv[:k] - uv[k:]
        z = x @ w
        g = c * (x.T @ (s * (1 / (1 + np.exp(-z)) - p)))
        return float(uv.sum() + c * np.sum(s * (np.logaddexp(0, z) - p * z))), np.concatenate([1 + g, 1 - g])

    opts = {"ftol": 1e-15, "gtol": 1e-11, "maxiter": 20_000, "maxcor": 30}
    result = minimize(f, np.zeros(2 * k), jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * k), options=opts)
    return np.asarray(result.x[:k] - result.x[k:])


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


def _ours(data: dict[str, Any], lc_data: _lc.LCData | None) -> _lc.LCResult:
    n = len(data["preferences"])
    result = _lc.length_controlled_win_rate(
        data["preferences"], data["model_lengths"], data["reference_lengths"], range(n), lc_data
    )
    assert result is not None
    return result


def _args(data: dict[str, Any]) -> tuple[Any, ...]:
    return (data["preferences"], data["model_lengths"], data["reference_lengths"], data["difficulty"], data["gamed"])


@pytest.mark.parametrize("seed", [0, 1, 2, 4])
def test_lc_is_alpacaevals_call_to_the_last_bit(seed: int, tmp_path: Path) -> None:
    data = synthetic(seed, 150)
    lc_data = _lc.read_lc_data(write_gamed(tmp_path / "df_gamed.csv", data["gamed"]))
    assert lc_data.gamed == tuple(data["gamed"])  # the CSV round trip loses nothing
    ours = _ours(data, lc_data)
    theirs, c, coef = sklearn_lc(*_args(data))
    assert ours.exact and ours.method.startswith("exact: AlpacaEval length_controlled_v1")
    assert (ours.win_rate, ours.C, list(ours.weights.values())) == (theirs, c, list(coef))
    assert list(ours.weights) == NAMES
    # liblinear stops at tolerance 1e-4 (AlpacaEval's setting): within 0.02 points of the converged fit.
    converged, _, _ = sklearn_lc(*_args(data), tight=True)
    assert ours.win_rate == pytest.approx(converged, abs=0.02)


@pytest.mark.parametrize("seed", [0, 3])
def test_the_fit_is_the_optimum_of_alpacaevals_objective_by_an_independent_solver(seed: int) -> None:
    """At the chosen C, scipy's minimiser of the L1 soft-label objective gives the same weights and LC."""
    data = synthetic(seed, 150)
    ours = _ours(data, _lc.LCData("gamed", dict(enumerate(data["difficulty"])), tuple(data["gamed"])))
    x, p, s, test = design(*_args(data))
    w = _l1_fit(x, p, s, ours.C)
    mine = np.array(list(ours.weights.values()))
    best = _objective(w, x, p, s, ours.C)
    assert abs(_objective(mine, x, p, s, ours.C) - best) <= 1e-4 * best  # liblinear's tolerance
    assert mine == pytest.approx(w, abs=0.02)
    assert ours.win_rate == pytest.approx(float(np.mean(1 / (1 + np.exp(-(test @ w))))) * 100, abs=0.02)
    # ...and the fit is no accident of the data: the weights a wrong problem gives are far from ours.
    assert np.abs(_l1_fit(x, p, np.ones_like(s), ours.C) - mine).max() > 0.05  # gamed rows weighted 1, not 0.1


@pytest.mark.parametrize("seed", [9, 13])
def test_the_cross_validation_picks_c_as_an_independent_grouped_cv_does(seed: int) -> None:
    """5 folds (row g of n tested in fold (n - 1 - g) % 5), scipy fits, the weighted log loss: the same C."""
    data = synthetic(seed, 20)  # few rows: the penalty matters and these CV curves have a clear optimum
    ours = _ours(data, _lc.LCData("gamed", dict(enumerate(data["difficulty"])), tuple(data["gamed"])))
    x, p, s, _ = design(*_args(data))
    n = len(x)
    fold = np.array([(n - 1 - g) % 5 for g in range(n)])
    grid = [10.0 ** (i * 8 / 9 - 4) for i in range(10)]  # logspace(-4, 4, 10)
    losses = []
    for c in grid:
        loss = 0.0
        for k in range(5):
            w = _l1_fit(x[fold != k], p[fold != k], s[fold != k], c)
            q = np.clip(1 / (1 + np.exp(-(x[fold == k] @ w))), 1e-15, 1 - 1e-15)
            pk, sk = p[fold == k], s[fold == k]
            loss -= float(np.mean(sk * (pk * np.log(q) + (1 - pk) * np.log(1 - q))))
        losses.append(loss)
    best = int(np.argmin(losses))
    runner_up = sorted(losses)[1]
    assert runner_up - losses[best] > 5e-4  # not a near-tie, so a converged CV and liblinear's agree
    chosen = float(np.logspace(-4, 4, 10)[best])  # scikit-learn's grid, bit for bit
    assert chosen == ours.C


def test_draws_count_half_and_unjudged_pairs_are_still_averaged() -> None:
    data = synthetic(5, 80)
    lc_data = _lc.LCData("gamed", dict(enumerate(data["difficulty"])), tuple(data["gamed"]))
    as_draws = _ours({**data, "preferences": [1.5 if p == 0.0 else p for p in data["preferences"]]}, lc_data)
    assert _ours(data, lc_data) == as_draws  # 0 (AlpacaEval's draw) is 1.5
    # An unjudged pair is out of the fit but in the average: its predicted preference counts.
    x, _, _, test = design(*_args(data))
    ours = _ours(data, lc_data)
    coef = np.array(list(ours.weights.values()))
    assert ours.win_rate == pytest.approx(float(np.mean(1 / (1 + np.exp(-(test @ coef))))) * 100, abs=1e-9)
    assert len(test) == 80 and len(x) < 80 + len(data["gamed"])


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
    assert list(with_difficulty.weights) == NAMES and not with_difficulty.exact
    assert bare is not None and bare.method.startswith("APPROXIMATION") and not bare.exact
    assert list(bare.weights) == ["np.tanh(std_delta_len)", "not_gamed_baseline"]
    # The same GLM without the gamed rows: AlpacaEval's call on the model's rows alone.
    theirs, c, _ = sklearn_lc(*_args({**data, "gamed": []}))
    assert (with_difficulty.win_rate, with_difficulty.C) == (theirs, c)
    # An instruction df_gamed.csv does not cover (not one of AlpacaEval's 805): approximate, and said so.
    partial = _lc.LCData("df_gamed.csv", {i: 0.0 for i in range(10)}, tuple(data["gamed"][:10]))
    result = _lc.length_controlled_win_rate(*args, partial)
    assert result is not None and not result.exact and "df_gamed.csv has no difficulty" in result.method
    assert result.win_rate == bare.win_rate


def test_degenerate_runs_still_fit() -> None:
    # Every judgment a clean win (text verdicts): only label-1 rows carry weight.
    wins = _lc.length_controlled_win_rate([2.0] * 6, [100, 200, 300, 400, 500, 600], [350] * 6, range(6))
    assert wins is not None and wins.win_rate > 50
    # Equal lengths everywhere: no length term (AlpacaEval would divide by zero), the mean preference.
    flat = _lc.length_controlled_win_rate([1.9, 1.1, 1.8, 1.7], [50] * 4, [80] * 4, range(4))
    assert flat is not None and flat.weights["np.tanh(std_delta_len)"] == 0.0


def test_fewer_than_two_judged_pairs_give_no_lc() -> None:
    assert _lc.length_controlled_win_rate([1.7, None], [10, 20], [15, 15], [0, 1]) is None


def test_the_fit_raises_no_warning() -> None:
    """A scikit-learn upgrade that deprecates part of AlpacaEval's call shows up here, not on users' terminals."""
    data = synthetic(1, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _ours(data, _lc.LCData("gamed", dict(enumerate(data["difficulty"])), tuple(data["gamed"])))


def test_without_scikit_learn_the_error_names_the_eval_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'moa-pipeline\[eval\]'"):
        _lc.length_controlled_win_rate([1.7, 1.2, 1.9], [10, 20, 30], [15, 15, 15], [0, 1, 2])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b\n1,2\n", "expected AlpacaEval's df_gamed.csv"),
        ("", "empty file"),
        (",".join(GAMED_HEADER) + "\n0,m,0,0.5,x,0.1,False\n", "line 2: `std_delta_len` is not a number: 'x'"),
        (",".join(GAMED_HEADER) + "\n0,m,0,1.5,0.2,0.1,False\n", "line 2: `preference` 1.5 is outside [0, 1]"),
        (",".join(GAMED_HEADER) + "\n0,m,0,0.5,0.2,0.1,maybe\n", "line 2: `not_gamed_baseline` must be True or False"),
        (",".join(GAMED_HEADER) + "\n0,m,0\n", "line 2: 3 fields, the header has 7"),
        (",".join(GAMED_HEADER) + "\n0,m,0,0.5,inf,0.1,False\n", "line 2: `std_delta_len` is not finite: 'inf'"),
        (",".join(GAMED_HEADER) + "\n0,m,0.5,0.5,0.2,0.1,False\n", "line 2: `index`, `std_delta_len` and"),
        (",".join(GAMED_HEADER) + "\n", "no rows"),
        ("index,instruction_difficulty\n0,0.3\n1,\n", "line 3: `instruction_difficulty` is empty"),
        ("index,instruction_difficulty\n0,0.3\n1\n", "line 3: expected `index,instruction_difficulty`"),
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
