"""``propose``: every agent answers the conversation unchanged (after its own system prompt)."""

from __future__ import annotations

from moa._prompt import build_messages
from moa.result import AgentOutput, LayerResult

from .base import Estimate, EstimateContext, StageContext, bind, successes


class Propose:
    async def run(self, ctx: StageContext, inputs: list[AgentOutput]) -> list[AgentOutput]:
        last = ctx.on_token is not None
        calls = []
        for spec in ctx.specs:
            messages = build_messages(ctx.conversation, system=ctx.layer.agents[spec.site.agent].system)
            calls.append((spec, bind(ctx.call, spec, messages, stream=last)))
        return await ctx.fanout(calls)

    def passed_on(self, result: LayerResult) -> list[AgentOutput]:
        return successes(result)

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        outputs = []
        for spec in ctx.specs:
            messages = build_messages(ctx.conversation, system=ctx.layer.agents[spec.site.agent].system)
            outputs.append((0, ctx.price(spec, messages, ())))
        return ctx.result(outputs)
