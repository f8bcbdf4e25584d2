"""The tool loop: an agent with tools answers in up to ``max_steps`` model calls.

Step by step:

1. the agent's model is called with its tools offered (``tools``, ``tool_choice: auto``);
2. an answer without function calls ends the loop: it is the agent's answer;
3. otherwise the calls it asked for run, together (at most ``max_tool_calls``
   in all: calls beyond that are not run, and the last result says so), the
   assistant message with its calls and one ``tool`` message per result are
   appended to the conversation, and the model is called again;
4. the ``max_steps``-th call, or the first one after the tool calls are spent,
   offers the tools with ``tool_choice: none``: the model must answer.  If it
   asks for functions all the same, its text is the answer; with no text the
   agent fails (``BadResponseError``).

Every model call goes through the caller (limits, budget reserved per call,
retries, ``call_started`` events with ``tool_step``); each function call sends
``tool_finished``.  The answer is recorded once, at the end, with every
function call, the whole loop's usage, cost, attempts and time, and the last
call's messages.  A call the budget refuses, or one that fails for good, ends
the loop: the trace entry then holds the steps so far and their tool calls.
Loops never stream: the answer reaches ``on_token`` whole, once it is known.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from moa._call import (
    BudgetRefused,
    Caller,
    CallFailed,
    CallRecord,
    CallRefused,
    CallSpec,
    total,
)
from moa._call.cost import text_tokens
from moa._errors import BadResponseError, CallbackError, ProviderError
from moa._fanout import settle
from moa._prompt import Message, clean_text, is_blank
from moa._provider import Completion, TokenCallback, ToolRequest
from moa.result import AgentOutput, ToolCall, Usage

from .calls import RecipeRunner, ToolRuntime, definitions, not_run, run_tool

_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def tool_runtime(caller: Caller, run_recipe: RecipeRunner | None = None) -> ToolRuntime:
    """The tools' runtime of a run whose calls go through ``caller``: their own calls go through a quiet copy."""
    quiet = caller.quiet()

    async def answer(spec: CallSpec, messages: list[Message]) -> AgentOutput:
        if spec.tools:
            return await run_loop(quiet, spec, messages, runtime=runtime)
        return await quiet.call(spec, messages)

    runtime = ToolRuntime(quiet, answer, run_recipe)
    return runtime


class _Loop:
    """What the loop has done so far: its steps' usage, cost and attempts, and the function calls they ran."""

    def __init__(self, spec: CallSpec, step: int) -> None:
        self.spec, self.step = spec, step
        self.usage, self.attempts, self.started = Usage(), 0, 0.0
        self.tools: list[ToolCall] = []
        self.costs: list[float | None] = []

    def add(self, record: CallRecord, completion: Completion | None) -> None:
        self.started = self.started or record.started
        self.attempts += record.attempts
        self.usage += record.paid
        self.costs.append(record.paid_cost)
        if completion is not None:
            self.usage += Usage(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens)
            self.costs.append(completion.cost_usd)

    def ran(self, tool: ToolCall) -> None:
        self.tools.append(tool)
        self.usage += tool.usage
        self.costs.append(tool.cost_usd)

    def record(self, last: CallRecord) -> CallRecord:
        """The trace's view of the whole loop: the last call's messages, every step's usage and attempts."""
        return CallRecord(
            spec=self.spec,
            messages=last.messages,
            step=self.step,
            tool_step=last.tool_step,
            attempts=self.attempts,
            started=self.started or last.started,
            paid=self.usage,
            paid_cost=total(self.costs),
        )


async def run_loop(
    caller: Caller,
    spec: CallSpec,
    messages: list[Message],
    *,
    runtime: ToolRuntime,
    step: int = 0,
    embedded: Sequence[tuple[int, int]] = (),
    on_token: TokenCallback | None = None,
) -> AgentOutput:
    """One answer of an agent with tools (see the module's docstring); ``CallFailed`` / ``CallRefused`` as
    ``Caller.call``, their output holding the steps so far."""
    offered = definitions(spec)
    conversation, quoted = list(messages), list(embedded)
    loop = _Loop(spec, step)
    allowance = spec.max_tool_calls
    for number in range(1, spec.max_steps + 1):
        last = number == spec.max_steps or allowance <= 0
        params = {**spec.params, "tools": offered, "tool_choice": "none" if last else "auto"}
        record = CallRecord(replace(spec, params=params), list(conversation), step=step, tool_step=number)
        try:
            completion = await caller.complete(record, embedded=quoted)
        except BudgetRefused as exc:
            loop.add(record, None)
            raise CallRefused(caller.tracer.refused(loop.record(record), str(exc), loop.tools)) from None
        except ProviderError as exc:
            loop.add(record, None)
            raise CallFailed(caller.tracer.failed(loop.record(record), exc, loop.tools), exc) from exc
        loop.add(record, completion)
        asked = list(completion.tool_calls)
        if asked and not last:
            run, skipped = asked[:allowance], asked[allowance:]
            allowance -= len(run)
            ids = _ids(run, number, conversation)
            conversation.append(_assistant(completion, run, ids))
            quoted.append(_written(completion, run))
            results = await _run_all(runtime, spec, number, run, ids)
            for tool in results:
                loop.ran(tool)
                caller.tracer.tool_finished(record, tool)
                conversation.append({"role": "tool", "tool_call_id": tool.id, "content": tool.result})
            if skipped:
                why = f"not run: this agent may make {spec.max_tool_calls} tool calls in all"
                conversation[-1]["content"] += (
                    f"\n[{len(skipped)} more tool call(s) of this step were {why}; answer now]"
                )
                for request in skipped:
                    tool = not_run(number, request.id, request.name, request.arguments, why)
                    loop.ran(tool)
                    caller.tracer.tool_finished(record, tool)
            continue
        for request in asked:  # the last step offered no more calls
            if number < spec.max_steps:
                why = f"not run: the agent's {spec.max_tool_calls} tool calls are spent: this step must answer"
            else:
                why = f"not run: the last step (max_steps {spec.max_steps}) must answer"
            tool = not_run(number, request.id, request.name, request.arguments, why)
            loop.ran(tool)
            caller.tracer.tool_finished(record, tool)
        if is_blank(completion.text):
            error = BadResponseError(
                f"it asked for tools again at its last step (max_steps {spec.max_steps}, "
                f"{spec.max_tool_calls} tool calls) and wrote no answer",
                model=spec.model,
            )
            raise CallFailed(caller.tracer.failed(loop.record(record), error, loop.tools), error)
        return _answer(caller, loop, record, completion, on_token)
    raise AssertionError("unreachable: the last step always answers or fails")


def _answer(
    caller: Caller, loop: _Loop, record: CallRecord, completion: Completion, on_token: TokenCallback | None
) -> AgentOutput:
    text = clean_text(completion.text)
    if on_token is not None:
        try:
            on_token(text)
        except Exception as exc:
            raise CallbackError("on_token", exc) from exc
    whole = loop.record(record)
    return caller.tracer.finished(
        whole,
        text,
        whole.paid,
        whole.paid_cost,
        completion.top_logprobs,
        completion.finish_reason,
        loop.tools,
        mean_logprob=completion.mean_logprob,
    )


async def _run_all(
    runtime: ToolRuntime, spec: CallSpec, number: int, run: list[ToolRequest], ids: list[str]
) -> list[ToolCall]:
    """Run the step's function calls together; their records, in the order they were asked for."""
    factories = [
        (lambda r=request, i=ident: run_tool(runtime, spec, number, i, r.name, r.arguments))
        for request, ident in zip(run, ids, strict=True)
    ]
    outcomes = await settle(factories, min_success=0)
    results = []
    for request, ident, outcome in zip(run, ids, outcomes, strict=True):
        if isinstance(outcome, Exception):  # run_tool reports its failures itself: this is a bug, kept visible
            outcome = not_run(number, ident, request.name, request.arguments, f"{type(outcome).__name__}: {outcome}")
        results.append(outcome)
    return results


def _ids(run: list[ToolRequest], number: int, conversation: list[Message]) -> list[str]:
    """Each call's id: the provider's, unless it is missing, too long or used before (then one of ours)."""
    used = {str(m.get("tool_call_id")) for m in conversation if m.get("role") == "tool"}
    ids = []
    for index, request in enumerate(run):
        ident = request.id if _ID.match(request.id) and request.id not in used else f"call_{number}_{index}"
        used.add(ident)
        ids.append(ident)
    return ids


def _assistant(completion: Completion, run: list[ToolRequest], ids: list[str]) -> dict[str, Any]:
    calls = [
        {"id": ident, "type": "function", "function": {"name": request.name, "arguments": request.arguments}}
        for request, ident in zip(run, ids, strict=True)
    ]
    return {"role": "assistant", "content": completion.text or None, "tool_calls": calls}


def _written(completion: Completion, run: list[ToolRequest]) -> tuple[int, int]:
    """(characters, tokens) of what the model wrote in an assistant message: later prompts quote it."""
    text = completion.text + "".join(request.name + request.arguments for request in run)
    return len(text), completion.completion_tokens or text_tokens(text)
