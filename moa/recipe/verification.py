"""``verify``: validators as closure conditions; repair, then escalate, when nothing passes."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from .layers import Layer, one_call
from .params import Agent, Pattern, _Strict
from .selection import VERDICT_NOTE, VERDICT_SETTINGS


class RegexCheck(_Strict):
    """Passes when the answer matches (``must_match``) or does not match a regular expression."""

    type: Literal["regex"] = Field(..., description="`regex`.")
    pattern: Pattern = Field(..., description="The regular expression, searched in the answer.")
    must_match: bool = Field(True, description="True: the answer must match; false: it must not.")


class JsonSchemaCheck(_Strict):
    """Passes when the answer (or the first JSON object or array in it) is valid against a JSON Schema."""

    type: Literal["json_schema"] = Field(..., description="`json_schema`.")
    json_schema: dict[str, Any] = Field(..., description="The JSON Schema the answer must satisfy.")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"is not a valid JSON Schema: {exc.message}") from None
        remote = next((ref for ref in _refs(value) if not ref.startswith("#")), None)
        if remote is not None:
            raise ValueError(f"$ref {remote!r} is not in the schema itself: only local references (#/...) are used")
        return value


def _refs(value: Any) -> list[str]:
    """Every ``$ref`` in a JSON Schema."""
    if isinstance(value, dict):
        found = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return found + [ref for item in value.values() for ref in _refs(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in _refs(item)]
    return []


class PythonCheck(_Strict):
    """Passes when ``module:function(answer, question)`` returns true (or ``(True, message)``)."""

    type: Literal["python"] = Field(..., description="`python`.")
    function: str = Field(
        ...,
        description="`module:function`, importable where moa runs; called with the answer and the question, "
        "it returns a bool or (bool, message). An exception it raises is a failed check with its message.",
    )

    @field_validator("function")
    @classmethod
    def _importable(cls, value: str) -> str:
        if IMPORT_FUNCTIONS.get():
            resolve_function(value)
        else:
            _split(value)
        return value


class LLMCheck(_Strict):
    """Passes when a judge model answers yes to a criterion about the answer (the approximate closure)."""

    type: Literal["llm"] = Field(..., description="`llm`.")
    judge: Agent = Field(..., description="The judge model (asked for one token: yes or no).")
    criterion: str = Field(
        ..., min_length=1, description="What the answer must satisfy, e.g. `The answer is a single number.`"
    )


class AgreeCheck(_Strict):
    """Passes when at least ``k`` independent candidates give the same answer: agreement of methods as closure.

    Two methods that fail differently (a program that was run and a chain of
    thought, two models, two prompts) rarely agree on the same wrong answer; samples
    of one method repeat its errors, so by default samples of one agent count once.
    """

    type: Literal["agree"] = Field(..., description="`agree`.")
    k: int = Field(2, ge=2, le=100, description="How many independent candidates must give the answer.")
    extract: Literal["number", "yesno", "choice", "phrase", "text", "regex"] = Field(
        "number",
        description="How answers are compared: as in `vote` (`number`: the last number, 1,024 = 1024; ...). "
        "A candidate's answer from an earlier stage (`execute`, `vote`) is used when it has one.",
    )
    pattern: Pattern | None = Field(None, description="`extract: regex`: the regular expression.")
    independent: Literal["agents", "candidates"] = Field(
        "agents",
        description="What counts as independent: `agents` (the samples of one agent, or of one fallback, count "
        "once) or `candidates` (every candidate counts).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> AgreeCheck:
        if (self.extract == "regex") != (self.pattern is not None):
            raise ValueError("`pattern` is needed with `extract: regex`, and only then")
        return self


def _check_type(value: Any) -> str | None:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


Check = Annotated[
    Union[  # noqa: UP007
        Annotated[RegexCheck, Tag("regex")],
        Annotated[JsonSchemaCheck, Tag("json_schema")],
        Annotated[PythonCheck, Tag("python")],
        Annotated[LLMCheck, Tag("llm")],
        Annotated[AgreeCheck, Tag("agree")],
    ],
    Discriminator(_check_type),
]


#: False while recipes are only listed: a `python` check's module is then not imported (importing runs its
#: code), only its `module:function` form is checked.
IMPORT_FUNCTIONS: ContextVar[bool] = ContextVar("moa_import_check_functions", default=True)


@contextmanager
def without_imports() -> Iterator[None]:
    """Validate recipes without importing the modules their `python` checks name."""
    token = IMPORT_FUNCTIONS.set(False)
    try:
        yield
    finally:
        IMPORT_FUNCTIONS.reset(token)


def _split(reference: str) -> tuple[str, str]:
    module_name, sep, name = reference.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"{reference!r} is not `module:function`")
    return module_name, name


def resolve_function(reference: str) -> Any:
    """The function named ``module:function`` (a ``ValueError`` saying why when it cannot be found)."""
    module_name, name = _split(reference)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"module {module_name!r} cannot be imported: {type(exc).__name__}: {exc}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"{module_name!r} has no function {name!r}")
    return function


class VerifyLayer(Layer):
    """``verify``: every candidate goes through every check; those that fail are dropped.

    Validators are the closure conditions of an orchestration (a test, a
    schema, an evaluator): accept what passes, feed the failure back for a
    repair, escalate when repairs run out.  When nothing passes, the first
    candidate is sent back to its own model (or ``repair_with``) with the
    failed checks' messages, up to ``repairs`` times; then each ``fallback``
    agent answers in turn until one passes; if none does, the run fails with
    ``moa.VerificationError`` carrying the partial trace.
    """

    kind: Literal["verify"] = Field(..., description="`verify`: keep the candidates that pass every check.")
    checks: list[Check] = Field(..., min_length=1, description="The checks (each a `type` and its fields).")
    repairs: int = Field(
        0, ge=0, le=10, description="When nothing passes: how many times the first candidate may be repaired."
    )
    repair_with: Agent | None = Field(
        None, description="Who repairs; unset means the model that wrote the candidate, with its own settings."
    )
    fallback: list[Agent] = Field(
        default_factory=list,
        description="Escalation: agents asked in turn (e.g. a stronger model) when repairs run out; the first "
        "answer that passes wins.",
    )
    keep: Literal["passing", "first"] = Field(
        "passing", description="`passing`: every candidate that passes goes on; `first`: only the first."
    )
    if_none_pass: Literal["error", "last"] = Field(
        "error",
        description="When nothing passes, repairs and fallbacks included: `error` stops the run with "
        "`VerificationError` (its partial trace has every verdict); `last` passes the last answer checked on "
        "anyway, its failed verdicts recorded.",
    )

    @model_validator(mode="after")
    def _agents(self) -> VerifyLayer:
        for number, agent in enumerate(self.fallback):
            one_call(agent, f"fallback[{number}]")
        one_call(self.repair_with, "repair_with")
        for number, check in enumerate(self.checks):
            if isinstance(check, LLMCheck):
                one_call(check.judge, f"checks[{number}].judge")
        return self

    def fixed_settings(self, agent: int) -> dict[str, Any]:
        return dict(VERDICT_SETTINGS) if agent < len(self.judges()) else {}

    def judges(self) -> list[Agent]:
        return [check.judge for check in self.checks if isinstance(check, LLMCheck)]

    def call_agents(self) -> list[Agent]:
        return [*self.judges(), *([self.repair_with] if self.repair_with else []), *self.fallback]

    def calls(self, inputs: int) -> int:
        extra = self.repairs + len(self.fallback)  # at most this many new answers, each checked too
        answering = [agent.most_calls for agent in self.fallback]
        # A repair by the writer itself is counted as one call.
        answering += [self.repair_with.most_calls if self.repair_with else 1] * self.repairs
        return len(self.judges()) * (inputs + extra) + sum(answering)

    def outputs(self, inputs: int) -> int:
        return min(1, inputs) if self.keep == "first" else max(inputs, 1)

    @property
    def calls_vary(self) -> bool:
        return bool(self.repairs or self.fallback) or super().calls_vary

    def describe(self, inputs: int) -> list[str]:
        kinds = ", ".join(check.type for check in self.checks)
        lines = [f"checks each of the {inputs} previous outputs ({kinds}); those that fail are dropped"]
        if self.judges():
            lines.append(VERDICT_NOTE)
        if self.repairs:
            who = self.repair_with.label if self.repair_with else "the model that wrote it"
            lines.append(f"when none passes: the first goes back to {who} with the failed checks, up to "
                         f"{self.repairs} time(s)")  # fmt: skip
        if self.fallback:
            lines.append("then escalates to " + ", ".join(a.label for a in self.fallback) + ", in turn")
        lines.append(
            "if nothing passes: the run fails (VerificationError)"
            if self.if_none_pass == "error"
            else "if nothing passes: the last answer checked goes on, its failed verdicts recorded"
        )
        return lines
