"""``debate``: multi-agent debate (Du et al. 2023)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .layers import TemplatedLayer


class DebateLayer(TemplatedLayer):
    """``debate``: the agents answer, then for each later round every agent sees the others' latest
    answers (appended to its own conversation) and gives an updated one.

    ``rounds`` counts the first answer; the paper's setting is 3 agents x 2
    rounds, ended by a majority vote (add a `vote` stage after it).  Reported:
    GSM8K 77.0 -> 85.0 and arithmetic 67.0 -> 81.8 over a single agent.  An
    agent whose call fails drops out of later rounds; ``min_success`` is the
    quorum of every round.
    """

    kind: Literal["debate"] = Field(..., description="`debate`: agents answer, then revise seeing each other.")
    default_template: ClassVar[str] = "debate"
    step_name: ClassVar[str | None] = "round"
    takes_candidates: ClassVar[bool] = False
    rounds: int = Field(2, ge=1, le=10, description="Rounds, the first answer included (paper: 2).")

    @model_validator(mode="after")
    def _debaters(self) -> DebateLayer:
        if sum(agent.n for agent in self.agents) < 2:
            raise ValueError("a debate needs at least two agents (or one agent with n >= 2)")
        return self

    def calls(self, inputs: int) -> int:
        return sum(agent.n * agent.most_calls for agent in self.agents) * self.rounds

    def planned_steps(self) -> int | None:
        return self.rounds

    def can_be_last(self) -> str | None:
        return "a `debate` passes on every agent's last answer: end with a `vote` or an `aggregate` stage after it"

    def template_cases(self, fewest: int, most: int) -> set[tuple[int, int]]:
        # It renders its own agents' answers (the others', from round 2), not the previous stage's.
        agents = sum(agent.n for agent in self.agents)
        least = max((self.min_success or agents) - 1, 1)
        return {(count, step) for count in range(least, max(agents - 1, 1) + 1) for step in range(2, self.rounds + 1)}

    def describe(self, inputs: int) -> list[str]:
        agents = sum(agent.n for agent in self.agents)
        later = "round 2" if self.rounds == 2 else f"rounds 2-{self.rounds}"
        return (
            [
                "round 1: each agent answers the conversation",
                f"{later}: each agent's own conversation continues with the other {agents - 1} agents' latest "
                f"answers, rendered by {self.compiled_template.source}, and it answers again",
            ]
            if self.rounds > 1
            else ["each agent answers the conversation (one round)"]
        )
