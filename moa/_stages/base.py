"""What every stage kind shares: the context it runs in, the one fan-out with quorums, and its protocol.

A stage receives the conversation and the previous stage's outputs (the
candidates) and returns its recorded calls; ``passed_on`` says which of them
the next stage receives.  It never talks to a provider: every call goes
through ``ctx.call`` (limits, budget, retries, events and tracing are done
there, in ``moa._call``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from moa._call import Caller, CallFailed, CallRefused, CallSpec, Pricing, abandoned, output_tokens, prompt_tokens
from moa._errors import BudgetExceeded, CallbackError, QuorumError
from moa._fanout import Abandoned, settle
from moa._prompt import Message
from moa._provider import TokenCallback
from moa.recipe import Layer
from moa.result import AgentOutput, LayerResult


@dataclass
class StageContext:
    """One stage's view of the run: its config, its planned calls, and ``call()``."""

    index: int  # 0-based layer index
    layer: Layer
    conversation: list[Message]
    specs: list[CallSpec]
    caller: Caller
    on_token: TokenCallback | None = None  # set for the final stage only: its answer streams
    recorded: list[AgentOutput] = field(default_factory=list)  # finished calls, for partial traces

    async def call(
        self,
        spec: CallSpec,
        messages: list[Message],
        *,
        step: int = 0,
        stream: bool = False,
        embedded: Sequence[tuple[int, int]] = (),
    ) -> AgentOutput:
        """One call through the pipeline (``stream``: send its text to the run's ``on_token``)."""
        return await self.caller.call(
            spec, messages, step=step, on_token=self.on_token if stream else None, embedded=embedded
        )

    async def fanout(self, calls: Sequence[tuple[CallSpec, Callable[[], Awaitable[AgentOutput]]]]) -> list[AgentOutput]:
        """Run calls together under the layer's quorum and straggler cut-off; their outputs, in order.

        Raises ``BudgetExceeded`` when the budget refused a call, ``QuorumError``
        when fewer than ``min_success`` succeeded (calls still running are then
        cancelled); a failing callback stops everything at once.
        """
        outcomes = await settle(
            [factory for _, factory in calls],
            min_success=self.layer.min_success,
            straggler_s=self.layer.straggler_s,
            abandons=lambda exc: not isinstance(exc, CallRefused),  # calls in flight finish when money runs out
            fatal=lambda exc: isinstance(exc, CallbackError),
        )
        outputs = [_outcome(spec, outcome) for (spec, _), outcome in zip(calls, outcomes, strict=True)]
        self.recorded[:] = outputs
        refused = [o for o in outcomes if isinstance(o, CallRefused)]
        if refused:
            raise BudgetExceeded(f"layer {self.index + 1}: {refused[0]}; {len(refused)} call(s) not started")
        need = self.layer.min_success or len(calls)
        succeeded = sum(output.ok for output in outputs)
        if succeeded < need:
            causes = [o.cause for o in outcomes if isinstance(o, CallFailed)]
            raise QuorumError(self.index + 1, need, succeeded, len(calls), causes, outputs)
        return outputs


def _outcome(spec: CallSpec, outcome: AgentOutput | Exception) -> AgentOutput:
    if isinstance(outcome, AgentOutput):
        return outcome
    if isinstance(outcome, CallFailed | CallRefused):
        return outcome.output
    if isinstance(outcome, Abandoned):
        return abandoned(spec, str(outcome))
    raise outcome  # the caller's callback failed, or a bug: let it surface


@dataclass(frozen=True)
class Estimate:
    """A stage's worst case: its cost (None when a model is unpriced) and the outputs it passes on."""

    cost: float | None
    unpriced: list[str]
    outputs: list[tuple[int, int]]  # (characters, tokens) of each output passed on, at its longest


class Stage(Protocol):
    """A stage kind: how a layer of that kind runs, what it passes on, and its worst case."""

    async def run(self, ctx: StageContext, inputs: list[AgentOutput]) -> list[AgentOutput]:
        """Make the stage's calls; return every call recorded (failed ones included), in order."""
        ...

    def passed_on(self, result: LayerResult) -> list[AgentOutput]:
        """The outputs the next stage receives."""
        ...

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        """The worst case of the stage given its inputs' (characters, tokens), every call at its limit."""
        ...


@dataclass
class EstimateContext:
    """What a stage needs to price its calls before making them."""

    index: int
    layer: Layer
    conversation: list[Message]
    specs: list[CallSpec]
    pricing: Pricing
    costs: list[float] = field(default_factory=list)
    unpriced: list[str] = field(default_factory=list)

    def price(self, spec: CallSpec, messages: list[Message], embedded: Sequence[tuple[int, int]]) -> int:
        """Add one call's worst case; return the most tokens its answer can have."""
        cost = self.pricing.worst_case_cost(spec.model, spec.params, prompt_tokens(messages, embedded))
        if cost is None:
            self.unpriced.append(spec.model)
        else:
            self.costs.append(cost)
        return output_tokens(self.pricing, spec.model, spec.params)

    def result(self, outputs: list[tuple[int, int]]) -> Estimate:
        return Estimate(None if self.unpriced else sum(self.costs), sorted(set(self.unpriced)), outputs)


def successes(result: LayerResult) -> list[AgentOutput]:
    return [output for output in result.outputs if output.ok]


def bind(
    call: Callable[..., Awaitable[AgentOutput]], *args: Any, **kwargs: Any
) -> Callable[[], Awaitable[AgentOutput]]:
    return lambda: call(*args, **kwargs)
