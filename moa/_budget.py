"""Spending limits: a run (or a whole eval) never starts a call it might not be able to pay for.

Before each attempt the engine reserves the call's worst-case cost (its prompt
at ~3 characters a token, plus ``max_tokens`` of output, at litellm's prices);
when the reservation would pass ``max_cost_usd`` the call is not started, the
calls in flight finish, and the run ends with ``BudgetExceeded`` carrying the
partial trace.  Once one call was refused the budget is exhausted: no later
call starts either.  After a call the reservation is replaced by the real cost.
A model without a known price is refused under a budget (before any call)
unless ``allow_unpriced`` is set; its calls then count as free.
"""

from __future__ import annotations

from dataclasses import dataclass


class BudgetRefused(Exception):
    """Internal: the budget would not cover this call's worst case, so it was not started."""


@dataclass
class Budget:
    """A spending limit shared by every call it is given to (one run, or every item of an eval)."""

    max_cost_usd: float
    allow_unpriced: bool = False
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    refused_calls: int = 0

    def reserve(self, worst_case_usd: float | None) -> float:
        """Hold the worst case of one call, or raise ``BudgetRefused``."""
        worst = worst_case_usd or 0.0
        if self.refused_calls or self.spent_usd + self.reserved_usd + worst > self.max_cost_usd:
            self.refused_calls += 1
            raise BudgetRefused(
                f"not started: its worst case ${worst:.4f} would pass the budget of ${self.max_cost_usd:g} "
                f"(spent ${self.spent_usd:.4f}, ${self.reserved_usd:.4f} held by calls in flight)"
            )
        self.reserved_usd += worst
        return worst

    def settle(self, reserved_usd: float, actual_usd: float | None) -> None:
        """Replace a reservation with what the call really cost."""
        self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)
        self.spent_usd += actual_usd or 0.0

    @property
    def exhausted(self) -> bool:
        return self.refused_calls > 0 or self.spent_usd >= self.max_cost_usd
