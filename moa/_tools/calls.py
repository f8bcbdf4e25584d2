"""One function call of a tool loop: find the tool, check its arguments, run it, and record what it gave back.

Nothing the model asks for crashes the loop: an unknown tool, arguments that
are not JSON or do not match the tool's schema, a function that raises, a
program that fails: each becomes the call's result (``error: ...``), which the
model reads and may act on.  Results are masked of secrets and cut to
``RESULT_CHARS`` characters, so the prompts of later steps stay bounded.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jsonschema.validators import validator_for

from moa._call import Caller, CallFailed, CallRefused, CallSpec, ToolPlan, total
from moa._errors import MoAError
from moa._prompt import Message, build_messages
from moa._sandbox import Limits, Sandbox, sandbox
from moa._secrets import redact
from moa.recipe import Recipe, SandboxLimits
from moa.recipe.tools import registered
from moa.result import AgentOutput, MoAResult, ToolCall, Usage

#: The most characters of a result the model is given back (and the trace keeps).
RESULT_CHARS = 4000
#: The longest question an `ask` tool takes (its schema says so): what it asks is bounded, and so is its cost.
QUESTION_CHARS = 4000
#: Of a failed program's standard error, the last characters (where the traceback's point is).
STDERR_TAIL_CHARS = 1500

PYTHON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"code": {"type": "string", "description": "A complete Python 3 program. Print what you need."}},
    "required": ["code"],
    "additionalProperties": False,
}
ASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "maxLength": QUESTION_CHARS, "description": "The whole question, on its own."}
    },
    "required": ["question"],
    "additionalProperties": False,
}
PYTHON_DESCRIPTION = (
    "Run a Python 3 program in a sandbox (no network, a few seconds, limited memory) and get what it prints "
    "(standard output), or why it failed. Print every value you need."
)

#: Runs a whole recipe on one question, or a conversation (the engine's, given to the loop and to stages): its
#: result, or a ``MoAError``.
RecipeRunner = Callable[[Recipe, "str | list[Message]"], Awaitable[MoAResult]]
#: One answer of an asked agent: a plain call, or a tool loop of its own (``moa._tools.loop`` gives it).
Answerer = Callable[[CallSpec, list[Message]], Awaitable[AgentOutput]]


@dataclass
class ToolRuntime:
    """What tools need from the run: a caller for the model calls they make (same provider, limits, budget and
    retries, but quiet: those calls are recorded with the tool call), how an asked agent answers, and how to
    run a recipe.  Made by ``moa._tools.tool_runtime``."""

    caller: Caller
    answer: Answerer
    run_recipe: RecipeRunner | None = None
    _sandboxes: dict[str, Sandbox] = field(default_factory=dict)
    #: Programs run at most one per CPU at once (as in the `execute` stage): a step may ask for several.
    programs: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(max(1, os.cpu_count() or 1)))

    def sandbox(self, backend: str) -> Sandbox:
        """The run's sandbox of this backend (made once)."""
        if backend not in self._sandboxes:
            self._sandboxes[backend] = sandbox(backend)
        return self._sandboxes[backend]


def definitions(spec: CallSpec) -> list[dict[str, Any]]:
    """The ``tools`` argument of the agent's model calls: each tool's name, description and parameters."""
    found = []
    for plan in spec.tools:
        schema, description = _schema(plan), plan.tool.description or _description(plan)
        found.append({"type": "function", "function": {"name": plan.name, "description": description,
                                                       "parameters": schema}})  # fmt: skip
    return found


def _schema(plan: ToolPlan) -> dict[str, Any]:
    if plan.tool.name == "python":
        return PYTHON_SCHEMA
    if plan.tool.name == "ask":
        return ASK_SCHEMA
    return registered()[plan.tool.name].schema


def _description(plan: ToolPlan) -> str:
    if plan.tool.name == "python":
        return PYTHON_DESCRIPTION
    if plan.spec is not None:
        return f"Ask another assistant ({plan.spec.site.agent_name}) a question; its answer comes back."
    if plan.recipe is not None:
        about = f": {plan.recipe.description}" if plan.recipe.description else ""
        return f"Ask the `{plan.recipe.name}` pipeline of assistants a question{about}; its answer comes back."
    return registered()[plan.tool.name].description


def cut(text: str, limit: int = RESULT_CHARS) -> str:
    """``text`` masked of secrets and cut to at most ``limit`` characters, saying how much was cut."""
    text = redact(text)
    if len(text) <= limit:
        return text
    marker = f"\n[cut: {len(text)} characters in all]"
    return text[: limit - len(marker)] + marker


@dataclass
class _Outcome:
    """What running a tool gave: its text, or why it gave none (in a line, then ``text`` may say more), and the
    model calls it made."""

    text: str = ""
    error: str | None = None
    calls: list[AgentOutput] = field(default_factory=list)

    @property
    def result(self) -> str:
        if self.error is None:
            return self.text
        return f"error: {self.error}" + (f"\n{self.text}" if self.text else "")


async def run_tool(runtime: ToolRuntime, spec: CallSpec, step: int, ident: str, name: str, arguments: str) -> ToolCall:
    """Run one function call the model asked for; never raises (but for cancellation)."""
    started = time.perf_counter()
    plans = {plan.name: plan for plan in spec.tools}
    parsed: Any = arguments
    plan = plans.get(name)
    if plan is None:
        outcome = _Outcome(error=f"unknown tool {name!r}; tools: {', '.join(plans)}")
    else:
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            outcome = _Outcome(error=f"the arguments are not JSON ({exc}); send a JSON object")
        else:
            problem = _check(parsed, _schema(plan))
            if problem is not None:
                outcome = _Outcome(error=problem)
            else:
                try:
                    outcome = await _run(runtime, plan, parsed)
                except Exception as exc:  # the tool's own failure is the model's to read, not the run's
                    outcome = _Outcome(error=f"{type(exc).__name__}: {exc}")
    usage = sum((call.usage for call in outcome.calls), Usage())
    return ToolCall(
        id=ident,
        name=name,
        arguments=parsed,
        result=cut(outcome.result),
        error=None if outcome.error is None else cut(outcome.error, 500),
        wall_s=time.perf_counter() - started,
        step=step,
        usage=usage,
        cost_usd=total(call.cost_usd for call in outcome.calls),
        calls=outcome.calls,
    )


def not_run(step: int, ident: str, name: str, arguments: str, why: str) -> ToolCall:
    """A function call the loop did not run (its limits), recorded all the same."""
    try:
        parsed: Any = json.loads(arguments)
    except ValueError:
        parsed = arguments
    return ToolCall(id=ident, name=name, arguments=parsed, result="", error=why, step=step)


def _check(arguments: Any, schema: dict[str, Any]) -> str | None:
    """Why the arguments do not match the tool's schema (None when they do)."""
    if not isinstance(arguments, dict):
        return f"the arguments must be a JSON object, got {type(arguments).__name__}"
    errors = sorted(validator_for(schema)(schema).iter_errors(arguments), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    where = "".join(f"[{p!r}]" for p in errors[0].absolute_path)
    message = errors[0].message  # it quotes the value: a question past its length would come back whole
    message = message if len(message) <= 300 else message[:200] + " ... " + message[-60:]
    return f"the arguments do not match the tool's schema: {message}" + (f" (at {where})" if where else "")


async def _run(runtime: ToolRuntime, plan: ToolPlan, arguments: dict[str, Any]) -> _Outcome:
    if plan.tool.name == "python":
        return await _python(runtime, plan, str(arguments["code"]))
    if plan.tool.name == "ask":
        return await _ask(runtime, plan, str(arguments["question"]))
    function = registered()[plan.tool.name].function
    if inspect.iscoroutinefunction(function):
        value = await function(**arguments)
    else:  # a blocking function must not stall every other call of the run
        value = await asyncio.to_thread(function, **arguments)
    if inspect.isawaitable(value):
        value = await value
    return _Outcome(text=value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False))


async def _python(runtime: ToolRuntime, plan: ToolPlan, code: str) -> _Outcome:
    limits = Limits(**(plan.tool.limits or SandboxLimits()).model_dump())
    box = runtime.sandbox(plan.tool.sandbox or "local")
    async with runtime.programs:
        execution = await box.run(code, limits=limits)
    if execution.ok:
        return _Outcome(text=execution.stdout if execution.stdout.strip() else "(the program printed nothing)")
    parts = []
    if execution.stdout.strip():
        parts.append("stdout:\n" + cut(execution.stdout, RESULT_CHARS // 2))
    if execution.stderr.strip():
        parts.append("stderr (its end):\n" + execution.stderr[-STDERR_TAIL_CHARS:])
    return _Outcome(text="\n".join(parts), error=str(execution.reason or "the program failed"))


async def _ask(runtime: ToolRuntime, plan: ToolPlan, question: str) -> _Outcome:
    if plan.spec is not None:
        assert plan.tool.agent is not None
        messages = build_messages([{"role": "user", "content": question}], system=plan.tool.agent.system)
        try:
            output = await runtime.answer(plan.spec, messages)
        except (CallFailed, CallRefused) as exc:
            why = exc.cause if isinstance(exc, CallFailed) else exc
            return _Outcome(error=f"{plan.spec.site.agent_name} did not answer: {type(why).__name__}: {why}",
                            calls=[exc.output])  # fmt: skip
        return _Outcome(text=output.text or "", calls=[output])
    assert plan.recipe is not None
    if runtime.run_recipe is None:
        return _Outcome(error="recipes cannot be asked here (no engine runs this stage)")
    try:
        result = await runtime.run_recipe(plan.recipe, question)
    except MoAError as exc:
        partial = getattr(exc, "partial", None)
        first = str(exc).splitlines()[0] if str(exc) else ""
        return _Outcome(error=f"the recipe {plan.recipe.name!r} failed: {type(exc).__name__}: {first}",
                        calls=list(partial.calls) if partial is not None else [])  # fmt: skip
    return _Outcome(text=result.output, calls=list(result.calls))
