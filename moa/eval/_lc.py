"""AlpacaEval 2.0's length-controlled win rate (``length_controlled_v1``), in plain Python.

The estimator, as AlpacaEval defines it (Dubois et al. 2024), step by step:

* features of a judged pair: ``tanh(std_delta_len)`` (reference length minus model
  length in characters, divided by the sample standard deviation of that difference
  over the run), the instruction's difficulty, and a 1 marking the model's own rows;
* training rows: the model's judged pairs (weight 1) and, from AlpacaEval's
  ``df_gamed.csv``, the judged pairs of its two length-"gamed" baselines (the
  reference model prompted to be verbose or concise; marker 0, weight 0.1), which
  pin the length coefficient down independently of the model's own quality;
* a logistic regression without intercept on soft targets (preference - 1 in
  [0, 1]) with an L1 penalty, ``||w||_1 + C * sum_i s_i * logloss_i``; ``C`` is
  picked from ``logspace(-4, 4, 10)`` by 5-fold grouped cross-validation on the
  weighted log loss, then the model is refitted on every row with that ``C``;
* the LC win rate is the mean predicted preference over the model's pairs with the
  length term set to zero, times 100.

This mirrors scikit-learn's ``LogisticRegressionCV`` (liblinear, L1, no intercept,
``GroupKFold``) configured as AlpacaEval does, solved to convergence: it equals
scikit-learn's fit run to tolerance 1e-12 (same C, LC within 1e-8 points;
``tests/test_lc.py``).  AlpacaEval's call keeps liblinear's default tolerance 1e-4, which
moves its figure by up to about 0.01 points (``benchmarks/lc_agreement.py``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from moa.eval._common import DataError

#: scikit-learn's default grid of inverse penalty strengths: numpy.logspace(-4, 4, 10).
CS: tuple[float, ...] = (*(10.0 ** (i * (8 / 9) - 4) for i in range(9)), 1e4)  # bit for bit
N_SPLITS = 5
GAMED_WEIGHT = 0.2 / 2  # AlpacaEval's regularize_to_baseline_lambda, shared by its two gamed baselines
_GAMED_COLUMNS = ("index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline")


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
    n = len(preferences)
    deltas = [float(r - m) for m, r in zip(model_lengths, reference_lengths, strict=True)]
    mean = sum(deltas) / n if n else 0.0
    std = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (n - 1)) if n > 1 else 0.0
    use_difficulty = data is not None and all(i is not None and i in data.difficulty for i in indices)
    difficulty = [data.difficulty[i] for i in indices if i is not None] if data and use_difficulty else []

    def features(i: int, length_term: float) -> list[float]:
        return [length_term, *([difficulty[i]] if use_difficulty else []), 1.0]

    rows: list[list[float]] = []
    targets: list[float] = []
    weights: list[float] = []
    if data is not None and use_difficulty:
        for g in data.gamed:
            if g.preference is not None:
                rows.append([math.tanh(g.std_delta_len), g.difficulty, 1.0 if g.not_gamed else 0.0])
                targets.append(g.preference)
                weights.append(1.0 if g.not_gamed else GAMED_WEIGHT)
    own = 0
    for i, p in enumerate(preferences):
        if p is None:
            continue
        rows.append(features(i, math.tanh(deltas[i] / std) if std > 0 else 0.0))
        targets.append(0.5 if p == 0.0 else p - 1.0)
        weights.append(1.0)
        own += 1
    if own < 2:
        return None
    c, w = fit_l1_logistic_cv(rows, targets, weights, n_splits=min(N_SPLITS, len(rows)))
    value = sum(_sigmoid(_dot(w, features(i, 0.0))) for i in range(n)) / n * 100
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


# ----------------------------------------------------------------- the estimator


def fit_l1_logistic_cv(
    rows: Sequence[Sequence[float]],
    targets: Sequence[float],
    weights: Sequence[float],
    *,
    cs: Sequence[float] = CS,
    n_splits: int = N_SPLITS,
) -> tuple[float, list[float]]:
    """Pick C by grouped K-fold CV on the weighted log loss, then refit on all rows: (C, weights).

    Folds as scikit-learn's ``GroupKFold`` assigns them when every group (row) has the
    same size: row ``g`` of ``n`` is tested in fold ``(n - 1 - g) % n_splits``.  A fold's
    score is minus the mean of ``weight * logloss`` over its rows; the C with the best
    total wins (the first of equals).
    """
    n = len(rows)
    if n_splits < 2 or n < n_splits:
        raise ValueError(f"{n_splits}-fold cross-validation needs at least {max(n_splits, 2)} rows, got {n}")
    fold_of = [(n - 1 - g) % n_splits for g in range(n)]
    totals = [0.0] * len(cs)
    for fold in range(n_splits):
        train = [g for g in range(n) if fold_of[g] != fold]
        test = [g for g in range(n) if fold_of[g] == fold]
        x_train = [rows[g] for g in train]
        y_train = [targets[g] for g in train]
        s_train = [weights[g] for g in train]
        w = [0.0] * len(rows[0])
        for k, c in enumerate(cs):  # from the strongest penalty up: each fit warm-starts the next
            w = fit_l1_logistic(x_train, y_train, s_train, c, start=w)
            totals[k] += _score([rows[g] for g in test], [targets[g] for g in test], [weights[g] for g in test], w)
    best = max(range(len(cs)), key=lambda k: (totals[k], -k))
    return cs[best], fit_l1_logistic(rows, targets, weights, cs[best])


def fit_l1_logistic(
    rows: Sequence[Sequence[float]],
    targets: Sequence[float],
    weights: Sequence[float],
    c: float,
    *,
    start: Sequence[float] | None = None,
    tol: float = 1e-10,
    max_iter: int = 200,
) -> list[float]:
    """argmin_w ||w||_1 + c * sum_i s_i * (softplus(x_i.w) - y_i * x_i.w): L1 logistic, soft targets.

    Proximal Newton: each step minimises the penalised second-order model by
    coordinate descent, then backtracks (Armijo) on the true objective.  Stops when
    the minimum-norm subgradient is below ``tol`` times the loss gradient's scale.
    """
    k = len(rows[0])
    w = list(start) if start is not None else [0.0] * k
    scale = 1.0 + c * sum(weights)
    objective, grad, hess = _local_model(rows, targets, weights, c, w)
    for _ in range(max_iter):
        if _optimality(w, grad) <= tol * scale:
            break
        step = _newton_step(w, grad, hess)
        decrease = sum(g * d for g, d in zip(grad, step, strict=True))
        decrease += _l1([wi + d for wi, d in zip(w, step, strict=True)]) - _l1(w)
        if decrease >= 0.0 or not any(step):
            break
        t = 1.0
        # A gain below the objective's rounding error cannot be line-searched; so close to the
        # optimum the full Newton step is the right one (convergence is quadratic there).
        while -decrease > 1e-11 * abs(objective):
            trial = [wi + t * d for wi, d in zip(w, step, strict=True)]
            value = _objective(rows, targets, weights, c, trial)
            if value <= objective + 0.01 * t * decrease or t < 1e-6:
                break
            t /= 2
        if t < 1e-6:
            break
        w = [wi + t * d for wi, d in zip(w, step, strict=True)]
        objective, grad, hess = _local_model(rows, targets, weights, c, w)
    return w


def _newton_step(w: list[float], grad: list[float], hess: list[list[float]]) -> list[float]:
    """Coordinate descent on  grad.d + d.H.d / 2 + ||w + d||_1."""
    k = len(w)
    d = [0.0] * k
    for _ in range(1000):
        change = 0.0
        for j in range(k):
            a = hess[j][j]
            if a <= 0.0:
                new = -w[j]  # the loss ignores this coordinate: the penalty sets it to 0
            else:
                b = grad[j] + sum(hess[j][i] * d[i] for i in range(k))
                u = w[j] + d[j] - b / a
                new = math.copysign(max(abs(u) - 1.0 / a, 0.0), u) - w[j]
            change = max(change, abs(new - d[j]))
            d[j] = new
        if change <= 1e-15 * (1.0 + max(abs(x) for x in w)):
            break
    return d


def _local_model(
    rows: Sequence[Sequence[float]], targets: Sequence[float], weights: Sequence[float], c: float, w: list[float]
) -> tuple[float, list[float], list[list[float]]]:
    """Objective, loss gradient and loss Hessian at w (all including the factor c)."""
    k = len(w)
    loss = 0.0
    grad = [0.0] * k
    hess = [[0.0] * k for _ in range(k)]
    for x, y, s in zip(rows, targets, weights, strict=True):
        z = _dot(w, x)
        q = _sigmoid(z)
        loss += s * (_softplus(z) - y * z)
        r = s * (q - y)
        h = s * q * (1.0 - q)
        for i in range(k):
            grad[i] += r * x[i]
            hi = h * x[i]
            row = hess[i]
            for j in range(i + 1):
                row[j] += hi * x[j]
    for i in range(k):
        grad[i] *= c
        for j in range(i + 1):
            hess[i][j] *= c
            hess[j][i] = hess[i][j]
    return c * loss + _l1(w), grad, hess


def _objective(
    rows: Sequence[Sequence[float]], targets: Sequence[float], weights: Sequence[float], c: float, w: list[float]
) -> float:
    loss = 0.0
    for x, y, s in zip(rows, targets, weights, strict=True):
        z = _dot(w, x)
        loss += s * (_softplus(z) - y * z)
    return c * loss + _l1(w)


def _optimality(w: list[float], grad: list[float]) -> float:
    """Largest entry of the minimum-norm subgradient of the L1-penalised objective."""
    worst = 0.0
    for wi, g in zip(w, grad, strict=True):
        worst = max(worst, abs(g + math.copysign(1.0, wi)) if wi != 0.0 else max(abs(g) - 1.0, 0.0))
    return worst


def _score(
    rows: Sequence[Sequence[float]], targets: Sequence[float], weights: Sequence[float], w: list[float]
) -> float:
    """Minus the mean weighted log loss, predictions clipped to [1e-15, 1 - 1e-15] (the CV score)."""
    total = 0.0
    for x, y, s in zip(rows, targets, weights, strict=True):
        q = min(max(_sigmoid(_dot(w, x)), 1e-15), 1 - 1e-15)
        total += s * (y * math.log(q) + (1 - y) * math.log(1 - q))
    return total / len(rows)


def _dot(w: Sequence[float], x: Sequence[float]) -> float:
    return sum(wi * xi for wi, xi in zip(w, x, strict=True))


def _l1(w: Sequence[float]) -> float:
    return sum(abs(wi) for wi in w)


def _softplus(z: float) -> float:
    return math.log1p(math.exp(-abs(z))) + max(z, 0.0)


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))
