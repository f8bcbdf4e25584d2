"""AlpacaEval 2.0's length-controlled win rate (``length_controlled_v1``), fitted by scikit-learn.

The estimator, as AlpacaEval defines it (Dubois et al. 2024):

* features of a judged pair: ``tanh(std_delta_len)`` (reference length minus model
  length in characters, divided by the sample standard deviation of that difference
  over the run), the instruction's difficulty, and a 1 marking the model's own rows;
* training rows: AlpacaEval's ``df_gamed.csv`` (the judged pairs of its two length-"gamed"
  baselines, marker 0, weight 0.1, which pin the length coefficient down independently of
  the model's quality), then the model's judged pairs (weight 1);
* a logistic regression without intercept on soft targets (preference - 1 in [0, 1]): each
  row twice, labelled 1 with weight ``s * p`` and 0 with weight ``s * (1 - p)``, fitted by
  ``LogisticRegressionCV`` (L1, liblinear, ``random_state=123``, C from
  ``logspace(-4, 4, 10)`` by 5-fold ``GroupKFold`` over the pairs, scored by the weighted log
  loss of the soft targets), refitted on every row with the chosen C;
* the LC win rate is the mean predicted preference over the model's pairs with the length
  term set to zero, times 100.

The call is AlpacaEval's own (``alpaca_eval.metrics.glm_winrate.fit_LogisticRegressionCV``),
liblinear's default tolerance 1e-4 included, so the figure is the one AlpacaEval computes from
the same judgments.  Run to convergence instead, the optimum differs by at most about 0.01
points (``benchmarks/lc_agreement.py``).
"""

from __future__ import annotations

import csv
import inspect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa._errors import ConfigError
from moa.eval._common import DataError

N_SPLITS = 5
GAMED_WEIGHT = 0.2 / 2  # AlpacaEval's regularize_to_baseline_lambda, shared by its two gamed baselines
#: What AlpacaEval passes to LogisticRegressionCV besides the folds, the scorer and the penalty.
ALPACA_EVAL_KWARGS: dict[str, Any] = {
    "random_state": 123, "dual": False, "solver": "liblinear", "n_jobs": None, "fit_intercept": False
}  # fmt: skip
_GAMED_COLUMNS = ("index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline")
_NEEDS_EXTRA = "the LC win rate is fitted by scikit-learn: it needs the eval extra: pip install 'moa-pipeline[eval]'"


@dataclass(frozen=True)
class GamedRow:
    """One judged pair of a gamed baseline, as AlpacaEval's ``df_gamed.csv`` stores it."""

    index: int
    preference: float | None  # in [0, 1]; None when the judgment was missing
    std_delta_len: float
    difficulty: float
    not_gamed: bool


@dataclass(frozen=True)
class LCData:
    """What the LC fit needs beyond the judgments: per-instruction difficulty, and the gamed rows."""

    source: str
    difficulty: dict[int, float]
    gamed: tuple[GamedRow, ...] = field(default=())

    @property
    def exact(self) -> bool:
        return bool(self.gamed)


@dataclass(frozen=True)
class LCResult:
    win_rate: float
    method: str
    exact: bool
    C: float
    weights: dict[str, float]


def read_lc_data(path: Path) -> LCData:
    """Read ``df_gamed.csv`` (exact LC) or ``instruction_difficulty.csv`` (difficulty only).

    Both come from AlpacaEval's Hugging Face dataset; the header tells them apart.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise DataError(f"{path}: empty file (expected df_gamed.csv or instruction_difficulty.csv)")
    header = [h.strip() for h in rows[0]]
    if all(c in header for c in _GAMED_COLUMNS):
        return _read_gamed(path, header, rows[1:])
    if "instruction_difficulty" in header:
        return _read_difficulty(path, header, rows[1:])
    raise DataError(
        f"{path}: expected AlpacaEval's df_gamed.csv (columns {', '.join(_GAMED_COLUMNS)}) or "
        f"instruction_difficulty.csv (an index column and `instruction_difficulty`); the header is {header}"
    )


def _read_gamed(path: Path, header: list[str], rows: list[list[str]]) -> LCData:
    at = {name: header.index(name) for name in _GAMED_COLUMNS}
    gamed = []
    difficulty: dict[int, float] = {}
    for number, row in enumerate(rows, start=2):
        if not row:
            continue
        where = f"{path}, line {number}"
        try:
            values = {name: row[i].strip() for name, i in at.items()}
        except IndexError:
            raise DataError(f"{where}: {len(row)} fields, the header has {len(header)}") from None
        index = _number(values["index"], where, "index")
        preference = _number(values["preference"], where, "preference", missing_ok=True)
        if preference is not None and not 0.0 <= preference <= 1.0:
            raise DataError(f"{where}: `preference` {preference} is outside [0, 1]")
        std_delta_len = _number(values["std_delta_len"], where, "std_delta_len")
        level = _number(values["instruction_difficulty"], where, "instruction_difficulty")
        marker = values["not_gamed_baseline"].lower()
        if marker not in ("true", "false", "1", "0", "1.0", "0.0"):
            shown = values["not_gamed_baseline"]
            raise DataError(f"{where}: `not_gamed_baseline` must be True or False, not {shown!r}")
        if index is None or std_delta_len is None or level is None or index != int(index):
            raise DataError(f"{where}: `index`, `std_delta_len` and `instruction_difficulty` must be numbers")
        # AlpacaEval takes each instruction's difficulty from its first row in this file.
        difficulty.setdefault(int(index), level)
        gamed.append(GamedRow(int(index), preference, std_delta_len, level, marker in ("true", "1", "1.0")))
    if not gamed:
        raise DataError(f"{path}: no rows")
    return LCData(str(path), difficulty, tuple(gamed))


def _read_difficulty(path: Path, header: list[str], rows: list[list[str]]) -> LCData:
    column = header.index("instruction_difficulty")
    difficulty = {}
    for number, row in enumerate(rows, start=2):
        if not row:
            continue
        where = f"{path}, line {number}"
        try:
            index, level = _number(row[0], where, "index"), _number(row[column], where, "instruction_difficulty")
        except IndexError:
            raise DataError(f"{where}: expected `index,instruction_difficulty`") from None
        if index is None or level is None or index != int(index):
            raise DataError(f"{where}: expected `index,instruction_difficulty` numbers")
        difficulty[int(index)] = level
    return LCData(str(path), difficulty)


def _number(text: str, where: str, name: str, *, missing_ok: bool = False) -> float | None:
    if text == "" or text.lower() == "nan":
        if missing_ok:
            return None
        raise DataError(f"{where}: `{name}` is empty")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: `{name}` is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: `{name}` is not finite: {text!r}")
    return value


def length_controlled_win_rate(
    preferences: Sequence[float | None],
    model_lengths: Sequence[int],
    reference_lengths: Sequence[int],
    indices: Sequence[int | None],
    data: LCData | None = None,
) -> LCResult | None:
    """The LC win rate of one model's judged pairs (AlpacaEval preferences in [1, 2], 0 a draw).

    With ``df_gamed.csv`` this is AlpacaEval's estimator.  With only the difficulty
    file the same fit runs without the gamed rows; with no file, or one that lacks
    an instruction's difficulty, also without the difficulty term: an approximation,
    and ``method`` says so.  Pairs without a preference are left out of the fit but
    still predicted and averaged (as AlpacaEval does); None when fewer than two pairs
    have a preference.
    """
    if sum(p is not None for p in preferences) < 2:
        return None
    deltas = [r - m for m, r in zip(model_lengths, reference_lengths, strict=True)]
    use_difficulty = data is not None and all(i is not None and i in data.difficulty for i in indices)
    difficulty = [data.difficulty[i] for i in indices if i is not None] if data and use_difficulty else None
    gamed = [g for g in data.gamed if g.preference is not None] if data and use_difficulty else []
    c, w, value = _fit(preferences, deltas, difficulty, gamed)
    names = ["np.tanh(std_delta_len)", *(["instruction_difficulty"] if use_difficulty else []), "not_gamed_baseline"]
    exact = data is not None and data.exact and use_difficulty
    if exact:
        method = "exact: AlpacaEval length_controlled_v1 (gamed baselines and instruction difficulty from df_gamed.csv)"
    elif use_difficulty:
        method = (
            "APPROXIMATION: AlpacaEval's GLM with instruction difficulty but without its gamed baselines "
            "(pass df_gamed.csv for the exact figure)"
        )
    elif data is not None:
        method = f"APPROXIMATION: {data.source} has no difficulty for some instructions; GLM without that term"
    else:
        method = (
            "APPROXIMATION: GLM without instruction difficulty or gamed baselines "
            "(pass df_gamed.csv for the exact figure)"
        )
    return LCResult(value, method, exact, c, dict(zip(names, w, strict=True)))


def is_extreme_change(raw: float, lc: float) -> bool:
    """AlpacaEval's sanity check: LC moved more than 10 points and a quarter of the way to 0 or 100."""
    too_small = lc < min(raw - raw / 4, raw - 10)
    too_large = lc > max(raw + (100 - raw) / 4, raw + 10)
    return too_small or too_large


def check_installed() -> None:
    """Raise the ``ConfigError`` the fit would raise without the eval extra, before any call is paid for."""
    import importlib.util

    if importlib.util.find_spec("sklearn") is None or importlib.util.find_spec("numpy") is None:
        raise ConfigError(_NEEDS_EXTRA)


def _fit(
    preferences: Sequence[float | None],
    deltas: Sequence[int],
    difficulty: Sequence[float] | None,
    gamed: list[GamedRow],
) -> tuple[float, list[float], float]:
    """AlpacaEval's ``_get_featurized_data`` and ``fit_LogisticRegressionCV``: (C, coefficients, LC win rate).

    The design is the formula ``np.tanh(std_delta_len) + instruction_difficulty +
    not_gamed_baseline - 1`` (difficulty only when given) over the gamed rows, then the
    model's; rows without a preference are dropped from the fit, and each remaining row is
    duplicated (label 1 weighted ``s * p``, label 0 weighted ``s * (1 - p)``) in one CV group.
    """
    try:
        import numpy as np
        import sklearn  # type: ignore[import-untyped]
        from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
        from sklearn.linear_model import LogisticRegressionCV  # type: ignore[import-untyped]
        from sklearn.metrics import make_scorer  # type: ignore[import-untyped]
        from sklearn.model_selection import GroupKFold  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError(_NEEDS_EXTRA) from None
    n = len(preferences)
    delta = np.asarray(deltas, dtype=float)
    std = float(delta.std(ddof=1)) if n > 1 else 0.0  # pandas' Series.std: the sample standard deviation
    std_delta_len = np.concatenate([[g.std_delta_len for g in gamed], delta / std if std > 0 else np.zeros(n)])
    columns = [np.tanh(std_delta_len)]
    if difficulty is not None:
        columns.append(np.concatenate([[g.difficulty for g in gamed], difficulty]))
    columns.append(np.concatenate([[float(g.not_gamed) for g in gamed], np.ones(n)]))
    x = np.column_stack(columns)
    own = [np.nan if q is None else 0.5 if q == 0.0 else q - 1.0 for q in preferences]  # a draw (0) is 1.5
    p = np.array([*(g.preference for g in gamed), *own], dtype=float)
    s = np.array([*(1.0 if g.not_gamed else GAMED_WEIGHT for g in gamed), *([1.0] * n)])
    test = x[len(gamed) :].copy()
    test[:, 0] = 0.0  # the model's pairs as if there were no length difference
    keep = ~np.isnan(p)
    x, p, s = x[keep], p[keep], s[keep]
    rows = len(x)
    true_prob, true_weight = np.concatenate([p, 1 - p]), np.concatenate([s, s])
    # AlpacaEval passes penalty="l1"; scikit-learn 1.8 deprecated it for l1_ratios=(1,), the same fit bit for bit.
    params = inspect.signature(LogisticRegressionCV).parameters
    legacy = "penalty" in params and params["penalty"].default != "deprecated"
    penalty: dict[str, Any] = {"penalty": "l1"} if legacy else {"l1_ratios": (1.0,)}
    if "use_legacy_attributes" in params:
        penalty["use_legacy_attributes"] = False
    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_scorer(_weighted_log_loss, response_method="predict_proba", greater_is_better=False)
        model = LogisticRegressionCV(
            cv=GroupKFold(n_splits=min(N_SPLITS, rows)),
            scoring=scorer.set_score_request(true_prob=True, true_sample_weight=True),
            **ALPACA_EVAL_KWARGS,
            **penalty,
        )
        model.set_fit_request(sample_weight=True)
        with warnings.catch_warnings():
            # On a few or separable pairs some of the 50 CV fits stop at liblinear's 100 iterations, as
            # AlpacaEval's do: the figure is still AlpacaEval's (is_extreme_change flags a failed fit).
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(
                np.vstack([x, x]),
                np.concatenate([np.ones(rows), np.zeros(rows)]),
                sample_weight=true_prob * true_weight,
                groups=np.concatenate([np.arange(rows), np.arange(rows)]),
                true_prob=true_prob,
                true_sample_weight=true_weight,
            )
        value = float(model.predict_proba(test)[:, 1].mean() * 100)
    return float(np.ravel(model.C_)[0]), [float(v) for v in model.coef_[0]], value


def _weighted_log_loss(y_true: Any, y_pred: Any, true_prob: Any, true_sample_weight: Any) -> float:
    """AlpacaEval's ``logloss_continuous``: the log loss of the soft targets behind the duplicated rows, weighted."""
    import numpy as np

    target = np.where(y_true == 1, true_prob, 1 - true_prob)
    q = np.clip(y_pred, 1e-15, 1 - 1e-15)
    return float(-np.mean((target * np.log(q) + (1 - target) * np.log(1 - q)) * true_sample_weight))
