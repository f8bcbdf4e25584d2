"""``vote``: self-consistency (Wang et al. 2022).  Extract each candidate's answer, the most frequent wins.

A candidate cut by ``max_tokens`` or with no answer that can be extracted does
not vote; a tie goes to the answer given first (place a greedy answer first and
it wins ties).  When no candidate has an answer, the first candidate goes on,
recorded with no answer: the selector keeps the best single answer when it is unsure.
"""

from __future__ import annotations

from collections import Counter

from moa._prompt import Message
from moa.recipe import VoteLayer
from moa.recipe.selection import EXTRACTOR_SETTINGS
from moa.result import Candidate

from .base import Estimate, EstimateContext, Outcome, Stage, StageContext, bind, quoted
from .extract import extract, fold, ran_without_answer

_EXTRACTOR_SYSTEM = "You read a response to a question and report only the final answer it gives."
_EXTRACTOR_PARAMS = EXTRACTOR_SETTINGS


def extractor_messages(question: str, text: str) -> list[Message]:
    return [
        {"role": "system", "content": _EXTRACTOR_SYSTEM},
        {
            "role": "user",
            "content": f"Question:\n{question}\n\nResponse:\n{text}\n\nReply with the final answer the response "
            "gives, as briefly as possible (a number, a word or a short phrase), or NONE if it gives none.",
        },
    ]


class Vote(Stage):
    async def run(self, ctx: StageContext, inputs: list[Candidate]) -> Outcome:
        layer = ctx.layer
        assert isinstance(layer, VoteLayer)
        answers: list[str | None]
        if layer.extractor is not None:
            spec = ctx.specs[0]
            calls = [
                (spec, bind(ctx.call, spec, extractor_messages(ctx.question, c.text), step=i + 1,
                            embedded=quoted([c]), params=_EXTRACTOR_PARAMS))
                for i, c in enumerate(inputs)
            ]  # fmt: skip
            outputs = await ctx.fanout(calls, quorum=False)  # a failed extraction is a candidate without a vote
            answers = [_extracted(o.text) if o.ok else None for o in outputs]
        else:
            answers = [
                None if ran_without_answer(c) else extract(c.text, layer.extract, ctx.question, layer.pattern)
                for c in inputs
            ]
        answers = [None if c.finish_reason == "length" else a for c, a in zip(inputs, answers, strict=True)]
        counts = Counter(a for a in answers if a is not None)
        considered = [
            c.model_copy(update={"answer": a, "votes": counts[a] if a is not None else 0})
            for c, a in zip(inputs, answers, strict=True)
        ]
        if not counts:
            return Outcome(considered[:1], considered)
        best = max(counts.values())
        winners: list[Candidate] = []
        for candidate in considered:  # in order: the first candidate of each winning answer
            if candidate.votes == best and all(w.answer != candidate.answer for w in winners):
                winners.append(candidate)
        return Outcome(winners[:1] if layer.ties == "first" else winners, considered)

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        layer = ctx.layer
        assert isinstance(layer, VoteLayer)
        if layer.extractor is not None:
            for _, tokens in inputs:
                ctx.price(ctx.specs[0], extractor_messages(ctx.question, ""), [(0, tokens)], _EXTRACTOR_PARAMS)
        longest = max((tokens for _, tokens in inputs), default=0)
        return ctx.result([(0, longest)] * layer.outputs(len(inputs)))  # which inputs win is not known yet

    def summary(self, outcome: Outcome, layer: int) -> str | None:
        counts: dict[str, int] = {}
        for candidate in outcome.considered:
            if candidate.answer is not None:
                counts[candidate.answer] = candidate.votes or 0
        if not counts:
            return f"votes: no answer extracted from {len(outcome.considered)} candidate(s); the first goes on"
        shown = ", ".join(
            f"{_short(answer)} x{votes}" for answer, votes in sorted(counts.items(), key=lambda kv: -kv[1])
        )
        missing = sum(c.answer is None for c in outcome.considered)
        return f"votes: {shown}" + (f"; {missing} without an answer" if missing else "")


def _extracted(text: str | None) -> str | None:
    answer = fold(text or "")
    return None if not answer or answer == "none" else answer


def _short(answer: str) -> str:
    return repr(answer if len(answer) <= 24 else answer[:21] + "...")
