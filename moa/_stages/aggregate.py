"""``aggregate``: every agent answers the conversation with the previous outputs in its system message.

The outputs are rendered by the layer's template (numbered ``1.``, ``2.``, one
per line, by default) and appended to the system message after a blank line,
or sent as a new system message at the front (Wang et al. 2024).
"""

from __future__ import annotations

from moa._call import embedded
from moa._prompt import build_messages
from moa.result import AgentOutput, LayerResult

from .base import Estimate, EstimateContext, StageContext, bind, successes


class Aggregate:
    async def run(self, ctx: StageContext, inputs: list[AgentOutput]) -> list[AgentOutput]:
        block = ctx.layer.compiled_template.render(responses=[o.text or "" for o in inputs], layer=ctx.index + 1)
        quoted = embedded((o.text, o.usage.completion_tokens) for o in inputs)
        last = ctx.on_token is not None
        calls = []
        for spec in ctx.specs:
            agent = ctx.layer.agents[spec.site.agent]
            messages = build_messages(ctx.conversation, system=agent.system, references=block)
            calls.append((spec, bind(ctx.call, spec, messages, stream=last, embedded=quoted)))
        return await ctx.fanout(calls)

    def passed_on(self, result: LayerResult) -> list[AgentOutput]:
        return successes(result)

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        block = ctx.layer.compiled_template.render(responses=[""] * len(inputs), layer=ctx.index + 1)
        outputs = []
        for spec in ctx.specs:
            agent = ctx.layer.agents[spec.site.agent]
            messages = build_messages(ctx.conversation, system=agent.system, references=block)
            outputs.append((0, ctx.price(spec, messages, [(0, tokens) for _, tokens in inputs])))
        return ctx.result(outputs)
