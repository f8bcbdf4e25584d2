"""``aggregate``: every agent answers with the previous candidates in its system message.

The candidates are rendered by the layer's template (numbered ``1.``, ``2.``,
one per line, by default) and appended to the system message after a blank
line, or sent as a new system message at the front (Wang et al. 2024).
"""

from __future__ import annotations

from moa._prompt import build_messages
from moa.recipe import AggregateLayer
from moa.result import Candidate

from .base import Estimate, EstimateContext, Outcome, Stage, StageContext, bind, candidates, quoted


class Aggregate(Stage):
    async def run(self, ctx: StageContext, inputs: list[Candidate]) -> Outcome:
        assert isinstance(ctx.layer, AggregateLayer)
        block = ctx.layer.compiled_template.render(responses=[c.text for c in inputs], layer=ctx.index + 1)
        embedded, last = quoted(inputs), ctx.on_token is not None
        calls = []
        for spec in ctx.specs:
            agent = ctx.layer.agents[spec.site.agent]
            messages = build_messages(ctx.conversation, system=agent.system, references=block)
            calls.append((spec, bind(ctx.call, spec, messages, stream=last, embedded=embedded)))
        return Outcome(candidates(await ctx.fanout(calls)))

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        assert isinstance(ctx.layer, AggregateLayer)
        block = ctx.layer.compiled_template.render(responses=[""] * len(inputs), layer=ctx.index + 1)
        outputs = []
        for spec in ctx.specs:
            agent = ctx.layer.agents[spec.site.agent]
            messages = build_messages(ctx.conversation, system=agent.system, references=block)
            outputs.append((0, ctx.price(spec, messages, [(0, tokens) for _, tokens in inputs])))
        return ctx.result(outputs)
