"""Events and traces, built in one place.

Every ``Event`` a run emits and every ``AgentOutput`` a call records is made
here, so each one carries its layer, step and site the same way.  The
caller's ``on_event`` runs synchronously; an exception it raises becomes
``CallbackError`` (the run stops: it is the caller's bug, not a provider's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from moa._errors import CallbackError, ProviderError
from moa.events import Event, EventCallback, EventKind
from moa.result import AgentOutput, CallError, LayerResult, ToolCall, Usage

from .spec import CallSpec


@dataclass
class CallRecord:
    """What one call has done so far, across its attempts."""

    spec: CallSpec
    messages: list[dict[str, object]]
    step: int = 0
    tool_step: int = 0  # which model call of an agent's tool loop (0: no tools)
    attempts: int = 0
    started: float = 0.0  # when the first attempt got past the limits: queueing is not latency
    paid: Usage = field(default_factory=Usage)  # tokens of answers that came back but were refused (empty)
    paid_cost: float | None = 0.0
    last_refused_cost: float | None = 0.0  # what the latest refused (empty) answer cost, for the budget
    cached: bool = False  # answered from the call cache
    saved_usd: float | None = None  # a cached answer: what it cost when it was made

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started if self.started else 0.0


class Tracer:
    """Emits events to the caller's callback and records every finished or failed call."""

    def __init__(self, on_event: EventCallback | None, record: Callable[[AgentOutput], None] | None = None) -> None:
        self._on_event = on_event
        self._record = record

    def emit(self, kind: EventKind, layer: int, record: CallRecord | None = None, **fields: object) -> None:
        if self._on_event is None:
            return
        site = record.spec.site if record is not None else None
        step = record.step if record is not None else 0
        if record is not None and record.tool_step:
            fields["tool_step"] = record.tool_step
        event = Event(kind, layer, site, step, **fields)  # type: ignore[arg-type]
        try:
            self._on_event(event)
        except Exception as exc:
            raise CallbackError("on_event", exc) from exc

    def layer_started(self, layer: int) -> None:
        self.emit("layer_started", layer)

    def layer_finished(self, layer: int, result: LayerResult | None = None) -> None:
        self.emit("layer_finished", layer, result=result)

    def started(self, record: CallRecord) -> None:
        record.attempts += 1
        record.started = record.started or time.perf_counter()
        self.emit("call_started", record.spec.site.layer, record, attempt=record.attempts)

    def retried(self, record: CallRecord, number: int, error: ProviderError, delay: float) -> None:
        error.site = record.spec.site
        self.emit("call_retried", record.spec.site.layer, record, attempt=number, error=error, delay_s=delay)

    def finished(
        self,
        record: CallRecord,
        text: str,
        usage: Usage,
        cost: float | None,
        logprobs: dict[str, float] | None,
        finish_reason: str | None = None,
        tools: Sequence[ToolCall] = (),
        *,
        mean_logprob: float | None = None,
        embeddings: tuple[tuple[float, ...], ...] = (),
        cached: bool = False,
        saved_usd: float | None = None,
    ) -> AgentOutput:
        if embeddings:
            text = f"({len(embeddings)} embedding(s) of {len(embeddings[0])} numbers)"
        output = output_of(
            record,
            record.attempts,
            text=text,
            usage=usage,
            cost=cost,
            top_logprobs=logprobs,
            finish=finish_reason,
            tools=tools,
            mean_logprob=mean_logprob,
            cached=cached,
            saved_usd=saved_usd,
        )
        output._embeddings = embeddings
        self._keep(output)
        self.emit("call_finished", record.spec.site.layer, record, attempt=record.attempts, output=output)
        return output

    def failed(self, record: CallRecord, error: ProviderError, tools: Sequence[ToolCall] = ()) -> AgentOutput:
        error.site = record.spec.site
        problem = CallError(
            type=type(error).__name__, message=str(error), status_code=error.status_code, transient=error.transient
        )
        attempts = record.attempts if record.tool_step else error.attempts
        output = output_of(record, attempts, error=problem, usage=record.paid, cost=record.paid_cost, tools=tools)
        self._keep(output)
        self.emit("call_failed", record.spec.site.layer, record, attempt=error.attempts, error=error, output=output)
        return output

    def refused(self, record: CallRecord, reason: str, tools: Sequence[ToolCall] = ()) -> AgentOutput:
        """A call the budget did not start (its last attempt never began)."""
        problem = CallError(type="BudgetExceeded", message=reason)
        attempts = max(0, record.attempts)
        output = output_of(record, attempts, error=problem, usage=record.paid, cost=record.paid_cost, tools=tools)
        self._keep(output)
        self.emit("call_failed", record.spec.site.layer, record, attempt=attempts + 1, output=output)
        return output

    def tool_finished(self, record: CallRecord, tool: ToolCall) -> None:
        """A function call of an agent's tool loop ran (``record``: the model call that asked for it)."""
        self.emit("tool_finished", record.spec.site.layer, record, tool=tool)

    def _keep(self, output: AgentOutput) -> None:
        if self._record is not None:
            self._record(output)


def output_of(
    record: CallRecord,
    attempts: int,
    *,
    text: str | None = None,
    error: CallError | None = None,
    usage: Usage | None = None,
    cost: float | None = 0.0,
    top_logprobs: dict[str, float] | None = None,
    finish: str | None = None,
    tools: Sequence[ToolCall] = (),
    mean_logprob: float | None = None,
    cached: bool = False,
    saved_usd: float | None = None,
) -> AgentOutput:
    """The trace entry of one call (failed calls cost what they paid: 0.0 unless an answer was refused)."""
    site = record.spec.site
    # Every field is built here from checked values: skip re-validation on this hot path.
    return AgentOutput.model_construct(
        layer=site.layer,
        agent=site.agent,
        sample=site.sample,
        step=record.step,
        name=site.agent_name,
        model=site.model,
        messages=record.messages,
        text=text,
        error=error,
        usage=usage or Usage(),
        top_logprobs=top_logprobs,
        mean_logprob=mean_logprob,
        finish_reason=finish,
        cost_usd=cost,
        cached=cached,
        cost_saved_usd=saved_usd,
        latency_s=record.elapsed,
        attempts=attempts,
        tool_calls=list(tools),
        tool_steps=record.tool_step,
    )


def abandoned(spec: CallSpec, reason: str, step: int = 0) -> AgentOutput:
    """The trace entry of a call cancelled because its result was no longer needed."""
    record = CallRecord(spec=spec, messages=[], step=step)
    return output_of(record, 0, error=CallError(type="Abandoned", message=reason))
