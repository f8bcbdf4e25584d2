"""Selection stages: ``vote`` (self-consistency) and ``rank`` (a judge orders the candidates)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .layers import Layer, one_call
from .params import Agent, Pattern

#: How every one-token verdict is asked, whatever the judge agent's own settings say.
VERDICT_SETTINGS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 1}
VERDICT_NOTE = "verdicts are one token at temperature 0 (the judge's own temperature and max_tokens are not used)"
#: How a `vote` extractor is asked.
EXTRACTOR_SETTINGS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 32}

Extract = Literal["number", "yesno", "choice", "phrase", "text", "regex", "llm"]


class VoteLayer(Layer):
    """``vote``: self-consistency (Wang et al. 2022): extract each candidate's answer, keep the most frequent.

    Reported: chain-of-thought with self-consistency raised GSM8K accuracy by
    17.9 points over greedy decoding (PaLM 540B).  Answers are compared after
    extraction; a candidate with no extractable answer does not vote.  A tie
    goes to the answer given first (so a greedy answer placed first wins ties).
    """

    kind: Literal["vote"] = Field(..., description="`vote`: the most frequent answer among the candidates wins.")
    extract: Extract = Field(
        "phrase",
        description="How an answer is read from a candidate before votes are counted: `number` (the last "
        "number; 1,024 = 1024 = 1024.0), `yesno` (the first yes or no), `choice` (a choice letter A-J), "
        "`phrase` (the text without the question's own words, case and punctuation), `text` (the whole "
        "text, case and spacing folded), `regex` (`pattern`'s first group, or its match), `llm` "
        "(`extractor` is asked for the final answer).",
    )
    pattern: Pattern | None = Field(None, description="`extract: regex`: the regular expression.")
    extractor: Agent | None = Field(None, description="`extract: llm`: the agent asked for each final answer.")
    ties: Literal["first", "all"] = Field(
        "first", description="On a tie: `first` keeps the answer given first; `all` passes every tied answer on."
    )

    @model_validator(mode="after")
    def _consistent(self) -> VoteLayer:
        if (self.extract == "regex") != (self.pattern is not None):
            raise ValueError("`pattern` is needed with `extract: regex`, and only then")
        if (self.extract == "llm") != (self.extractor is not None):
            raise ValueError("`extractor` is needed with `extract: llm`, and only then")
        one_call(self.extractor, "extractor")
        return self

    def fixed_settings(self, agent: int) -> dict[str, Any]:
        return dict(EXTRACTOR_SETTINGS)

    def call_agents(self) -> list[Agent]:
        return [self.extractor] if self.extractor is not None else []

    def calls(self, inputs: int) -> int:
        return inputs if self.extractor is not None else 0

    def outputs(self, inputs: int) -> int:
        return min(1, inputs) if self.ties == "first" else inputs

    def describe(self, inputs: int) -> list[str]:
        how = (
            f"the {self.extractor.label} agent is asked for each final answer"
            if self.extractor
            else (f"each answer is read as {self.extract}")
        )
        passes = "the earliest" if self.ties == "first" else "all of them"
        lines = [f"votes over the {inputs} previous outputs: {how}; the most frequent wins (ties: {passes})"]
        if self.extractor:
            lines.append("the extractor answers at temperature 0 in at most 32 tokens (its own settings aside)")
        return lines


class RankLayer(Layer):
    """``rank``: a judge model orders the candidates and the top ``top_k`` go on.

    ``pairwise`` is LLM-Blender's PairRanker idea (Jiang et al. 2023) with an LLM
    judge: every ordered pair, both orders (cancelling the judge's position
    bias), score = wins - losses; ``knockout`` plays one bracket (both orders
    per match) for the top one.  ``pointwise`` asks the judge whether each
    candidate is right.  LLM-Blender's rank-and-fuse (rank, keep 3, aggregate)
    reached GPT-Rank 3.01 against 3.90 for the best single model on MixInstruct.
    """

    kind: Literal["rank"] = Field(..., description="`rank`: a judge orders the candidates; the best go on.")
    judge: Agent = Field(..., description="The judge model (asked for one token: yes/no, or A/B).")
    mode: Literal["pairwise", "pointwise"] = Field(
        "pairwise", description="`pairwise`: compare candidates two at a time; `pointwise`: judge each alone."
    )
    pairs: Literal["all", "knockout"] = Field(
        "all", description="`pairwise` only: `all` ordered pairs, or a `knockout` bracket (needs `top_k: 1`)."
    )
    top_k: int = Field(1, ge=1, le=64, description="How many of the best candidates go on (LLM-Blender: 3).")
    logprobs: bool = Field(
        True,
        description="Read the judge's verdict from the first token's logprobs (a probability, not just a "
        "yes/no); its text when the provider gives none.",
    )
    instruction: str | None = Field(
        None, description="The judging question, instead of the built-in one (plain text; no template)."
    )

    @model_validator(mode="after")
    def _bracket(self) -> RankLayer:
        if self.pairs == "knockout" and (self.mode != "pairwise" or self.top_k != 1):
            raise ValueError("`pairs: knockout` finds one winner: it needs `mode: pairwise` and `top_k: 1`")
        one_call(self.judge, "judge")
        return self

    def fixed_settings(self, agent: int) -> dict[str, Any]:
        return dict(VERDICT_SETTINGS)

    def call_agents(self) -> list[Agent]:
        return [self.judge]

    def calls(self, inputs: int) -> int:
        if inputs <= 1:
            return 0
        if self.mode == "pointwise":
            return inputs
        return 2 * (inputs - 1) if self.pairs == "knockout" else inputs * (inputs - 1)

    def outputs(self, inputs: int) -> int:
        return min(self.top_k, inputs)

    def describe(self, inputs: int) -> list[str]:
        if self.mode == "pointwise":
            how = f"the judge {self.judge.label} is asked whether each of the {inputs} previous outputs is right"
        elif self.pairs == "knockout":
            how = f"the judge {self.judge.label} plays a knockout over the {inputs} previous outputs, both orders"
        else:
            how = f"the judge {self.judge.label} compares every pair of the {inputs} previous outputs, both orders"
        return [
            f"{how}; the best {min(self.top_k, inputs)} go on (ties keep their order)",
            VERDICT_NOTE,
        ]
