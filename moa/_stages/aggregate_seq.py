"""``aggregate_seq`` (Self-MoA-Seq, Li et al. 2025): one agent folds the inputs in, ``window`` at a time.

Step 1 sees the first ``window`` inputs; each later step sees the synthesis so
far (listed first) and the next ``window - 1`` inputs.  The last synthesis is
the layer's output.  A failed step fails the layer (nothing to fold on from).
"""

from __future__ import annotations

from moa._call import CallFailed, CallRefused, embedded
from moa._errors import BudgetExceeded, QuorumError
from moa._prompt import build_messages
from moa.recipe import seq_windows
from moa.result import AgentOutput, LayerResult

from .base import Estimate, EstimateContext, StageContext


class AggregateSeq:
    async def run(self, ctx: StageContext, inputs: list[AgentOutput]) -> list[AgentOutput]:
        spec, agent = ctx.specs[0], ctx.layer.agents[0]
        windows = seq_windows(len(inputs), ctx.layer.effective_window)
        outputs: list[AgentOutput] = []
        synthesis: AgentOutput | None = None
        for step, (start, end) in enumerate(windows, start=1):
            window = inputs[start:end] if synthesis is None else [synthesis, *inputs[start:end]]
            texts = [output.text or "" for output in window]
            block = ctx.layer.compiled_template.render(responses=texts, layer=ctx.index + 1, step=step)
            messages = build_messages(ctx.conversation, system=agent.system, references=block)
            quoted = embedded((o.text, o.usage.completion_tokens) for o in window)
            try:
                output = await ctx.call(spec, messages, step=step, stream=step == len(windows), embedded=quoted)
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
            synthesis = output
        return outputs

    def passed_on(self, result: LayerResult) -> list[AgentOutput]:
        return [output for output in result.outputs if output.ok][-1:]

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        spec, agent = ctx.specs[0], ctx.layer.agents[0]
        synthesis: tuple[int, int] | None = None
        for step, (start, end) in enumerate(seq_windows(len(inputs), ctx.layer.effective_window), start=1):
            window = inputs[start:end] if synthesis is None else [synthesis, *inputs[start:end]]
            block = ctx.layer.compiled_template.render(responses=[""] * len(window), layer=ctx.index + 1, step=step)
            messages = build_messages(ctx.conversation, system=agent.system, references=block)
            synthesis = (0, ctx.price(spec, messages, [(0, tokens) for _, tokens in window]))
        return ctx.result([synthesis] if synthesis else [])
