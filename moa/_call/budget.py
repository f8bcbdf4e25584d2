"""Spending limits: moa never starts work it might not be able to pay for.

Two levels, one rule (``moa._cost``):

- **A run** (or an eval item) first reserves its whole worst case: every call
  succeeding, every answer at its token limit.  When that does not fit what is
  left, nothing starts (``BudgetExceeded`` before any call), instead of paying
  for proposers whose aggregator can then not be afforded.  The reservation is
  a *child* budget; its unused part returns to the parent when the run ends.
- **A call** reserves its own worst case (its real prompt) from the run's
  reservation before each attempt.  Should a real prompt outgrow the estimate,
  the difference is drawn from the parent; when that does not fit either, the
  call is not started, calls in flight finish, and the run ends with
  ``BudgetExceeded`` carrying the partial trace.  Once one call was refused,
  no later call of that budget starts.  After a call the reservation is
  replaced by its real cost.

A model without a known price is refused under a budget (before any call)
unless ``allow_unpriced`` is set; its calls then count as free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from moa._errors import ConfigError


class BudgetRefused(Exception):
    """Internal: the budget would not cover this worst case, so the work was not started."""


@dataclass
class Budget:
    """A spending limit shared by every call it is given to (one run, or every item of an eval)."""

    max_cost_usd: float
    allow_unpriced: bool = False
    #: What has been spent, what calls in flight hold, how many calls were refused: the budget's own
    #: bookkeeping, not settings (a budget always starts empty).
    spent_usd: float = field(default=0.0, init=False)
    reserved_usd: float = field(default=0.0, init=False)
    refused_calls: int = field(default=0, init=False)
    parent: Budget | None = field(default=None, repr=False, kw_only=True)
    #: After one refusal, refuse everything (a run, an eval: no later call starts); ``False`` for a budget that
    #: outlives its requests (``moa serve``'s), where a request that does not fit must not close it to the rest.
    stop_on_refusal: bool = field(default=True, kw_only=True)

    def __post_init__(self) -> None:
        if isinstance(self.max_cost_usd, bool) or not isinstance(self.max_cost_usd, int | float):
            raise ConfigError(f"max_cost_usd must be a number of dollars, got {type(self.max_cost_usd).__name__}")
        if not math.isfinite(self.max_cost_usd) or self.max_cost_usd < 0:
            raise ConfigError(f"max_cost_usd must be a finite amount of dollars >= 0, got {self.max_cost_usd!r}")
        if not isinstance(self.allow_unpriced, bool):
            raise ConfigError(f"allow_unpriced must be True or False, got {self.allow_unpriced!r}")

    @property
    def remaining_usd(self) -> float:
        """What can still be reserved."""
        return self.max_cost_usd - self.spent_usd - self.reserved_usd

    @property
    def exhausted(self) -> bool:
        return self.refused_calls > 0 or self.spent_usd >= self.max_cost_usd

    def fits(self, worst_case_usd: float | None) -> bool:
        """Whether this worst case could be reserved now (without reserving it)."""
        worst = _amount(worst_case_usd, "a worst case")
        if self.refused_calls:
            return False
        if worst <= self.remaining_usd + 1e-12:
            return True
        return self.parent is not None and self.parent.fits(worst - max(0.0, self.remaining_usd))

    def reserve(self, worst_case_usd: float | None) -> float:
        """Hold the worst case of one call, or raise ``BudgetRefused``."""
        worst = _amount(worst_case_usd, "a worst case")
        if not self.fits(worst):
            if self.stop_on_refusal:
                self.refused_calls += 1
            raise BudgetRefused(
                f"not started: its worst case ${worst:.4f} would pass the budget of ${self._limit():g} "
                f"(spent ${self._total_spent():.4f}, ${self._total_reserved():.4f} held by work in flight)"
            )
        shortfall = worst - max(0.0, self.remaining_usd)
        if shortfall > 1e-12 and self.parent is not None:  # a real prompt outgrew the run's estimate
            self.parent.reserve(shortfall)
            self.max_cost_usd += shortfall
        self.reserved_usd += worst
        return worst

    def settle(self, reserved_usd: float, actual_usd: float | None) -> None:
        """Replace a reservation with what the call really cost."""
        self.reserved_usd = max(0.0, self.reserved_usd - _amount(reserved_usd, "a reservation"))
        self.spent_usd += _amount(actual_usd, "a cost")

    def child(self, worst_case_usd: float | None) -> Budget:
        """Reserve a whole run's (or item's) worst case as a child budget; ``close`` it when done.

        Raises ``BudgetRefused`` when the worst case does not fit what is left.
        """
        worst = self.reserve(worst_case_usd)
        return Budget(max_cost_usd=worst, allow_unpriced=self.allow_unpriced, parent=self)

    def close(self) -> None:
        """Return a child's unused reservation to its parent and pass on what it spent (idempotent)."""
        if self.parent is not None:
            self.parent.settle(self.max_cost_usd, self.spent_usd)
            self.parent = None

    def _limit(self) -> float:
        return self.parent._limit() if self.parent is not None else self.max_cost_usd

    def _total_spent(self) -> float:
        return self.parent._total_spent() if self.parent is not None else self.spent_usd

    def _total_reserved(self) -> float:
        return self.parent._total_reserved() if self.parent is not None else self.reserved_usd


def _amount(value: float | None, what: str) -> float:
    """A dollar amount from a provider or a caller: None is 0 (unpriced); negative or not finite is a bug."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite amount of dollars >= 0, got {value!r}")
    return float(value)
