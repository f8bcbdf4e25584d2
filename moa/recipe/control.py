"""``cascade``: cost-aware control flow.  Ask a cheap tier first; escalate only when its answer scores low.

FrugalGPT (Chen et al. 2023) orders models by cost, scores each answer, and
stops at the first whose score clears its tier's threshold: the best model's
accuracy at up to 98 % lower cost on its benchmarks.  Cascade routing
(Dekoninck et al. 2024) chooses the next tier by expected quality minus
``cost_weight`` (lambda) x expected cost instead (``strategy: cost_aware``),
which unifies cascades and routers (up to 8 % better than either on RouterBench).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Discriminator, Field, PrivateAttr, Tag, ValidationInfo, field_validator, model_validator

from .layers import Layer, one_call
from .params import Agent, _Strict, recipe_reference
from .selection import VERDICT_NOTE, VERDICT_SETTINGS
from .verification import Check, LLMCheck


class ChecksScore(_Strict):
    """The share of checks an answer passes (1.0: all of them): the closure conditions of `verify`."""

    type: Literal["checks"] = Field(..., description="`checks`.")
    checks: list[Check] = Field(
        ...,
        min_length=1,
        description="The checks, as in `verify` (`regex`, `json_schema`, `python`, `llm`, `agree`). An `agree` "
        "check counts the answers of the tiers run so far: a tier whose answer an earlier tier gave passes it.",
    )


class JudgeScore(_Strict):
    """A judge model's probability that the answer is right (P(yes), read from its first token's logprobs)."""

    type: Literal["judge"] = Field(..., description="`judge`.")
    judge: Agent = Field(..., description="The judge model (asked for one token: yes or no).")
    instruction: str | None = Field(
        None, description="The judging question, instead of the built-in one (plain text; no template)."
    )
    logprobs: bool = Field(
        True, description="Read P(yes) from the first token's logprobs; without any, yes is 1.0 and no 0.0."
    )


class ConfidenceScore(_Strict):
    """The answer's own confidence: exp(mean token logprob), asked of the tier's provider with its answer."""

    type: Literal["confidence"] = Field(..., description="`confidence`.")


def _score_type(value: Any) -> str | None:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


Score = Annotated[
    Union[  # noqa: UP007
        Annotated[ChecksScore, Tag("checks")],
        Annotated[JudgeScore, Tag("judge")],
        Annotated[ConfidenceScore, Tag("confidence")],
    ],
    Discriminator(_score_type),
]


def score_judges(score: ChecksScore | JudgeScore | ConfidenceScore) -> list[Agent]:
    """The judge models a score asks, in the order their calls are numbered."""
    if isinstance(score, JudgeScore):
        return [score.judge]
    if isinstance(score, ChecksScore):
        return [check.judge for check in score.checks if isinstance(check, LLMCheck)]
    return []


class Answerer(_Strict):
    """Who answers a tier or a route: one `agent`, or a whole `recipe` (a sub-pipeline such as a Self-MoA)."""

    name: str | None = Field(None, min_length=1, description="Its name in traces and summaries.")
    agent: Agent | None = Field(None, description="The agent that answers (one call; `n` must be 1).")
    recipe: str | None = Field(
        None,
        description="Instead of `agent`: a recipe that answers (a built-in name, or a path relative to this recipe), "
        "run on the whole conversation under the same limits and budget.",
    )
    _loaded: Any = PrivateAttr(default=None)  # the `recipe`, loaded and checked with the recipe that names it

    @field_validator("recipe")
    @classmethod
    def _recipe_reference(cls, value: str | None, info: ValidationInfo) -> str | None:
        return recipe_reference(value, info)

    @model_validator(mode="after")
    def _one_answerer(self) -> Answerer:
        if (self.agent is None) == (self.recipe is None):
            raise ValueError("give exactly one of `agent` and `recipe`")
        one_call(self.agent, "agent")
        return self

    def label(self, fallback: str) -> str:
        if self.name:
            return self.name
        if self.agent is not None:
            return self.agent.label
        return Path(self.recipe or fallback).stem

    @property
    def most_calls(self) -> int:
        """The most model calls one answer takes (a recipe's: every call of it)."""
        if self.agent is not None:
            return self.agent.most_calls
        return self._loaded.calls_per_query if self._loaded is not None else 1


class Tier(Answerer):
    """One tier of a cascade: who answers, and when its answer is good enough to stop."""

    accept: float | Literal["never"] | None = Field(
        None,
        description="`threshold`: stop at this tier when its answer's score is at least this (every tier but the "
        "last needs one; the last tier's answer stands whatever its score); `never`: its answer never stops the "
        "cascade (it is still scored, and an `agree` check of a later tier counts it).",
    )

    @field_validator("accept", mode="before")
    @classmethod
    def _a_bar(cls, value: Any) -> Any:
        if value is None or value == "never":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"must be a number from 0 to 1, or `never` (got {value!r})")
        return float(value)

    quality: float | None = Field(
        None,
        ge=0,
        le=1,
        description="`cost_aware`: the expected quality of its answer before it runs (P(right), from "
        "`moa calibrate` or your own data).",
    )
    cost: float | None = Field(
        None, ge=0, description="`cost_aware`: its expected cost per query, in the stage's `cost_unit`."
    )


class CascadeLayer(Layer):
    """``cascade``: tiers in order of cost; each answer is scored, and the cascade stops or escalates.

    ``threshold`` (FrugalGPT): run the tiers in order and stop at the first whose
    score reaches its ``accept``; the last tier's answer stands.  ``cost_aware``
    (cascade routing): before each step, for every tier not yet run, gain =
    max(0, quality - best score so far) - ``cost_weight`` x cost; run the tier with
    the largest positive gain, and stop when none is positive; the answer with the
    highest score goes on (ties: the later tier).  ``always_escalate`` runs and
    scores every tier and the last one's answer goes on: the baseline a cascade
    saves against, and the data ``moa calibrate`` fits thresholds on.  A tier whose
    call fails is passed over; when no tier gives an answer the stage fails
    (``CascadeError``).
    """

    kind: Literal["cascade"] = Field(
        ..., description="`cascade`: ask a cheap tier first; escalate only when its answer scores low."
    )
    takes_candidates: ClassVar[bool] = False
    tiers: list[Tier] = Field(
        ..., min_length=2, description="The tiers, cheapest first (each an `agent` or a `recipe`)."
    )
    score: Score = Field(
        ...,
        description="How each tier's answer is scored, 0 to 1: `checks` (share passed), `judge` (P(yes)), "
        "`confidence` (exp of the mean token logprob).",
    )
    strategy: Literal["threshold", "cost_aware", "always_escalate"] = Field(
        "threshold",
        description="`threshold`: stop at the first tier whose score reaches its `accept`; `cost_aware`: choose "
        "each next tier by expected quality gained minus `cost_weight` x cost; `always_escalate`: run and score "
        "every tier, the last one's answer goes on (the baseline, and the data `moa calibrate` fits on; it reads "
        "no `accept`, `quality` or `cost`).",
    )
    cost_weight: float | None = Field(
        None,
        ge=0,
        description="`cost_aware`: lambda, the quality one unit of cost is worth giving up (0: cost is no object).",
    )
    cost_unit: Literal["usd", "tokens", "calls"] = Field(
        "usd", description="`cost_aware`: the unit of the tiers' `cost` (per query)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> CascadeLayer:
        names = self.names
        for name in {n for n in names if names.count(n) > 1}:
            raise ValueError(f"two tiers are called {name!r}: give each a `name` of its own")
        if self.strategy == "threshold":
            for index, tier in enumerate(self.tiers[:-1]):
                if tier.accept is None:
                    raise ValueError(f"tiers[{index}].accept: every tier but the last needs one (`threshold`)")
            if self.tiers[-1].accept is not None:
                raise ValueError(f"tiers[{len(self.tiers) - 1}].accept: the last tier's answer stands; it has none")
            extra = ["cost_weight"] if self.cost_weight is not None else []
            extra += ["cost_unit"] if self.cost_unit != "usd" else []  # (its default survives a round trip)
            extra += [f"tiers[{i}].{f}" for i, t in enumerate(self.tiers) for f in ("quality", "cost")
                      if getattr(t, f) is not None]  # fmt: skip
            if extra:
                raise ValueError(f"{', '.join(extra)}: only `strategy: cost_aware` reads them")
        elif self.strategy == "cost_aware":
            if self.cost_weight is None:
                raise ValueError("`strategy: cost_aware` needs `cost_weight` (lambda)")
            for index, tier in enumerate(self.tiers):
                missing = [f for f in ("quality", "cost") if getattr(tier, f) is None]
                if missing:
                    raise ValueError(f"tiers[{index}]: `strategy: cost_aware` needs {' and '.join(missing)}")
                if tier.accept is not None:
                    raise ValueError(f"tiers[{index}].accept: `strategy: cost_aware` does not read it")
        return self

    @model_validator(mode="after")
    def _scorable(self) -> CascadeLayer:
        if self.score.type == "confidence":
            recipes = [f"tiers[{i}]" for i, tier in enumerate(self.tiers) if tier.recipe is not None]
            if recipes:
                raise ValueError(f"{', '.join(recipes)}: a recipe's answer has no token logprobs to score "
                                 "(`score: confidence` needs agent tiers)")  # fmt: skip
        if isinstance(self.score, ChecksScore):
            for number, check in enumerate(self.score.checks):
                if check.type == "agree" and check.k > len(self.tiers):
                    raise ValueError(f"score.checks[{number}].k: {check.k} tiers can never agree: there are "
                                     f"{len(self.tiers)}")  # fmt: skip
        return self

    @property
    def names(self) -> list[str]:
        return [tier.label(f"tier {i + 1}") for i, tier in enumerate(self.tiers)]

    def tier_agents(self) -> list[Agent]:
        return [tier.agent for tier in self.tiers if tier.agent is not None]

    def call_agents(self) -> list[Agent]:
        return [*self.tier_agents(), *score_judges(self.score)]

    def fixed_settings(self, agent: int) -> dict[str, Any]:
        return dict(VERDICT_SETTINGS) if agent >= len(self.tier_agents()) else {}

    def answerers(self) -> list[tuple[str, Answerer]]:
        return [(f"tiers[{i}]", tier) for i, tier in enumerate(self.tiers)]

    def calls(self, inputs: int) -> int:
        return sum(tier.most_calls for tier in self.tiers) + len(score_judges(self.score)) * len(self.tiers)

    def outputs(self, inputs: int) -> int:
        return 1

    def fewest_outputs(self, inputs: int) -> int:
        return 1

    @property
    def calls_vary(self) -> bool:
        return True

    def describe(self, inputs: int) -> list[str]:
        scored = {
            "checks": "the share of its checks it passes",
            "judge": "the judge's P(yes)",
            "confidence": "exp of its mean token logprob",
        }[self.score.type]
        lines = [f"each tier answers the conversation; its answer's score is {scored}"]
        if self.strategy == "threshold":
            steps = [f"{name} ({'never stops' if tier.accept == 'never' else f'stop at {tier.accept:g}'})"
                     for name, tier in zip(self.names, self.tiers, strict=True) if tier.accept is not None]  # fmt: skip
            lines.append(" -> ".join([*steps, f"{self.names[-1]} (its answer stands)"]))
        elif self.strategy == "always_escalate":
            lines.append(" -> ".join(self.names) + f": every tier runs and is scored; {self.names[-1]}'s answer stands")
        else:
            tiers = ", ".join(f"{n}: quality {t.quality:g}, cost {t.cost:g}" for n, t in zip(self.names, self.tiers,
                                                                                           strict=True))  # fmt: skip
            lines.append(
                f"cost-aware: the next tier is the one whose expected quality gain minus {self.cost_weight:g} x "
                f"cost ({self.cost_unit}) is largest and positive; {tiers}"
            )
        if score_judges(self.score):
            lines.append(VERDICT_NOTE)
        return lines
