"""The statistics of the harness, in plain Python: win rates and McNemar (the LC GLM is in ``_lc``)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


def is_switched(instruction: str, seed: int = 0) -> bool:
    """AlpacaEval's per-instruction output-order coin: which output the judge sees first.

    Matches the official annotations exactly (checked against all 802 published
    judgments of alpaca-7b): ``Random("is_switched_outputs" + instruction + seed)``.
    """
    switched: bool = random.Random(f"is_switched_outputs{instruction}{seed}").choices([False, True], k=1)[0]
    return switched


def preference_from_logprobs(top: dict[str, float], switched: bool) -> float | None:
    """AlpacaEval preference in [1, 2] (2: the model beats the reference) from the judge's logprobs.

    The judge names the better output ``m`` (shown first) or ``M`` (shown
    second); P(m) is normalised over those two tokens, and the preference is
    the expectation.  None when neither token is among the top logprobs.
    """
    em = math.exp(top["m"]) if "m" in top else 0.0
    eM = math.exp(top["M"]) if "M" in top else 0.0
    if em + eM == 0.0:
        return None
    p_first = em / (em + eM)
    p_model = p_first if switched else 1.0 - p_first
    return 1.0 + p_model


def preference_from_text(text: str, switched: bool) -> float | None:
    """Fallback for judges without logprobs: the verdict token itself (1 or 2), None if unparsable."""
    verdict = text.strip().strip("\"'`.").strip()
    if verdict not in ("m", "M"):
        return None
    first_wins = verdict == "m"
    model_wins = first_wins if switched else not first_wins
    return 2.0 if model_wins else 1.0


@dataclass(frozen=True)
class WinRate:
    win_rate: float
    standard_error: float
    n_wins: int
    n_wins_base: int
    n_draws: int
    n_total: int
    discrete_win_rate: float


def win_rate(preferences: Sequence[float | None]) -> WinRate:
    """AlpacaEval's head-to-head metrics: mean of (preference - 1) x 100 and its standard error.

    Preferences outside [1, 2] or missing are dropped; 0 and 1.5 are draws.
    """
    draws = sum(1 for p in preferences if p is not None and p in (0.0, 1.5))
    valid = [(1.5 if p == 0.0 else p) - 1 for p in preferences if p is not None and (p == 0.0 or 1 <= p <= 2)]
    n = len(valid)
    mean = sum(valid) / n if n else float("nan")
    sem = math.sqrt(sum((v - mean) ** 2 for v in valid) / (n - 1) / n) if n > 1 else float("nan")
    wins = sum(1 for v in valid if v > 0.5)
    losses = sum(1 for v in valid if v < 0.5)
    discrete_draws = sum(1 for v in valid if v == 0.5)
    discrete = (wins + discrete_draws / 2) / n * 100 if n else float("nan")
    return WinRate(mean * 100, sem * 100, wins, losses, draws, n, discrete)


def mcnemar_exact(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the discordant pairs with p = 1/2."""
    n = right_to_wrong + wrong_to_right
    if n == 0:
        return 1.0
    k = min(right_to_wrong, wrong_to_right)
    tail: float = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)
