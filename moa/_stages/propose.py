"""``propose``: every agent answers the conversation unchanged (after its own system prompt)."""

from __future__ import annotations

from moa._prompt import build_messages
from moa.recipe import ProposeLayer
from moa.result import Candidate

from .base import Estimate, EstimateContext, Outcome, Stage, StageContext, bind, candidates


class Propose(Stage):
    async def run(self, ctx: StageContext, inputs: list[Candidate]) -> Outcome:
        assert isinstance(ctx.layer, ProposeLayer)
        last = ctx.on_token is not None
        calls = []
        for spec in ctx.specs:
            messages = build_messages(ctx.conversation, system=ctx.layer.agents[spec.site.agent].system)
            calls.append((spec, bind(ctx.call, spec, messages, stream=last)))
        return Outcome(candidates(await ctx.fanout(calls)))

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        assert isinstance(ctx.layer, ProposeLayer)
        outputs = []
        for spec in ctx.specs:
            messages = build_messages(ctx.conversation, system=ctx.layer.agents[spec.site.agent].system)
            outputs.append((0, ctx.price(spec, messages, ())))
        return ctx.result(outputs)
