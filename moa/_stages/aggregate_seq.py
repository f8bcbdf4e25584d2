"""``aggregate_seq`` (Self-MoA-Seq, Li et al. 2025): one agent folds the candidates in, ``window`` at a time.

Step 1 sees the first ``window`` candidates; each later step sees the
synthesis so far (listed first) and the next ``window - 1``.  The last
synthesis is the layer's answer.  A failed step fails the layer.
"""

from __future__ import annotations

from moa._call import CallFailed, CallRefused
from moa._errors import BudgetExceeded, QuorumError
from moa._prompt import build_messages
from moa.recipe import AggregateSeqLayer, seq_windows
from moa.result import AgentOutput, Candidate

from .base import Estimate, EstimateContext, Outcome, Stage, StageContext, quoted


class AggregateSeq(Stage):
    async def run(self, ctx: StageContext, inputs: list[Candidate]) -> Outcome:
        layer = ctx.layer
        assert isinstance(layer, AggregateSeqLayer)
        spec, agent = ctx.specs[0], layer.agents[0]
        windows = seq_windows(len(inputs), layer.effective_window)
        outputs: list[AgentOutput] = []
        synthesis: Candidate | None = None
        for step, (start, end) in enumerate(windows, start=1):
            window = inputs[start:end] if synthesis is None else [synthesis, *inputs[start:end]]
            block = layer.compiled_template.render(responses=[c.text for c in window], layer=ctx.index + 1, step=step)
            messages = build_messages(ctx.conversation, system=agent.system, references=block)
            try:
                output = await ctx.call(spec, messages, step=step, stream=step == len(windows), embedded=quoted(window))
            except CallRefused as refused:
                ctx.recorded[:] = [*outputs, refused.output]
                raise BudgetExceeded(f"layer {ctx.index + 1}, step {step}: {refused}") from None
            except CallFailed as failed:
                outputs.append(failed.output)
                ctx.recorded[:] = outputs
                raise QuorumError(
                    ctx.index + 1, len(windows), step - 1, len(windows), [failed.cause], outputs
                ) from failed.cause
            outputs.append(output)
            ctx.recorded[:] = outputs
            synthesis = Candidate.of(output)
        return Outcome([synthesis] if synthesis else [])

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        layer = ctx.layer
        assert isinstance(layer, AggregateSeqLayer)
        spec, agent = ctx.specs[0], layer.agents[0]
        synthesis: tuple[int, int] | None = None
        for step, (start, end) in enumerate(seq_windows(len(inputs), layer.effective_window), start=1):
            window = inputs[start:end] if synthesis is None else [synthesis, *inputs[start:end]]
            block = layer.compiled_template.render(responses=[""] * len(window), layer=ctx.index + 1, step=step)
            messages = build_messages(ctx.conversation, system=agent.system, references=block)
            synthesis = (0, ctx.price(spec, messages, [(0, tokens) for _, tokens in window]))
        return ctx.result([synthesis] if synthesis else [])
