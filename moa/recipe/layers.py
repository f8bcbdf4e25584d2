"""Stages of a recipe: a base every kind's config derives from, and the three MoA kinds.

A recipe is an ordered list of stages (the ``layers`` key).  Each stage's
``kind`` picks its config class here (fields validated like any recipe field)
and its implementation in ``moa._stages``.  Every config answers, without
calling anything, how many calls its stage makes and how many candidates it
passes on, so counting, ``moa.plan`` and budgets read the config.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from moa import _templates
from moa._errors import TemplateError

from .params import MAX_SECONDS, Agent, _Strict


class Layer(_Strict):
    """One stage of the pipeline; its ``kind`` picks the stage that runs it and the fields it takes."""

    kind: str = Field(..., description="Which stage runs this layer: `propose`, `aggregate`, `vote`, ...")

    #: False for stages that write their own answers (they may come first); True for those that need candidates.
    takes_candidates: ClassVar[bool] = True
    #: What one of its repeated calls is called when each is shown apart (``step``, ``round``); None: calls to
    #: the same agent share one row of the live view.
    step_name: ClassVar[str | None] = None

    def call_agents(self) -> list[Agent]:
        """Every agent the stage may call, in the order their calls are numbered (``CallSite.agent``)."""
        return []

    def calls(self, inputs: int) -> int:
        """The most calls the stage makes when it receives ``inputs`` candidates (loops at their maximum)."""
        return 0

    def outputs(self, inputs: int) -> int:
        """The most candidates it passes on."""
        return inputs

    @property
    def calls_vary(self) -> bool:
        """Whether ``calls`` is a maximum that a run may not reach (repairs, escalations, tool loops)."""
        return any(agent.tools for agent in self.call_agents())

    def fewest_outputs(self, inputs: int) -> int:
        """The fewest candidates it passes on when it succeeds with ``inputs`` of them (quorums)."""
        return min(1, inputs)

    def check_templates(self, fewest: int, most: int, index: int) -> None:
        """Trial-render its templates with every number of candidates it can receive (``TemplateError``)."""

    def template_sources(self) -> list[str]:
        """The files of its templates (a run's identity covers their text)."""
        return []

    def can_be_last(self) -> str | None:
        """Why it cannot be the last stage (None when it can: the answer is its first candidate)."""
        return None

    def describe(self, inputs: int) -> list[str]:
        """Who gets which prompt, in plain words (``moa recipes show``)."""
        return []

    def planned_steps(self) -> int | None:
        """How many steps each agent takes, when the config alone says (``debate``: its rounds)."""
        return None

    def answerers(self) -> list[tuple[str, Any]]:
        """Who answers besides ``call_agents()``: (field path, ``Answerer``) for each tier or route that is an agent
        or a recipe (``cascade``, ``route``); the loader loads their recipes, the engine checks their keys."""
        return []

    def fixed_settings(self, agent: int) -> dict[str, Any]:
        """Settings the stage gives every call of its ``agent``-th call agent, whatever the agent says
        (a judge's one-token verdicts)."""
        return {}

    @model_validator(mode="after")
    def _tools_where_agents_answer(self) -> Layer:
        """A judge or an extractor answers in a token or a few, with settings the stage fixes: no tool loop."""
        for index, agent in enumerate(self.call_agents()):
            fixed = self.fixed_settings(index)
            if agent.tools and fixed:
                shown = ", ".join(f"{key} {value}" for key, value in fixed.items())
                raise ValueError(
                    f"`{agent_path(self, agent)}.tools`: this agent gives the stage's verdicts or extractions "
                    f"({shown}), so it cannot use tools; give tools to the agents that answer (propose, aggregate, "
                    "debate, a verify repair or fallback)"
                )
        return self


def agent_path(model: BaseModel, agent: Agent, path: str = "") -> str:
    """Where ``agent`` sits among ``model``'s fields: ``judge``, ``agents[1]``, ``checks[0].judge``."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        for key, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
            where = f"{path}{'.' if path else ''}{name}{'' if key is None else f'[{key}]'}"
            if item is agent:
                return where
            if isinstance(item, BaseModel) and not isinstance(item, Agent):
                found = agent_path(item, agent, where)
                if found:
                    return found
    return ""


def one_call(agent: Agent | None, field: str) -> None:
    """An agent asked once per question (a judge, an extractor, a fallback) has ``n: 1``."""
    if agent is not None and agent.n != 1:
        raise ValueError(f"`{field}` is asked once each time: its `n` must be 1, got {agent.n}")


class AgentLayer(Layer):
    """A stage whose agents answer: the quorum and straggler settings every such stage shares."""

    agents: list[Agent] = Field(..., description="The agents of this layer (at least one).")
    min_success: int | None = Field(
        None,
        ge=1,
        description="Quorum: how many of this layer's calls must succeed for the run to go on. "
        "Unset means all of them. Failed calls are recorded with their error.",
    )
    straggler_s: float | None = Field(
        None,
        gt=0,
        le=MAX_SECONDS,
        description="Tail-latency cut-off: once `min_success` calls have succeeded, wait at most this many "
        "seconds for the others, then cancel them (recorded as abandoned). Needs `min_success` below the "
        "layer's call count.",
    )

    @model_validator(mode="after")
    def _check_quorum(self) -> AgentLayer:
        if not self.agents:
            raise ValueError("a layer needs at least one agent")
        calls = self.parallel_calls()
        if self.straggler_s is not None and (self.min_success is None or calls is None or self.min_success >= calls):
            raise ValueError("`straggler_s` needs `min_success` below the layer's number of calls")
        if self.min_success is not None and calls is not None and self.min_success > calls:
            raise ValueError(f"min_success is {self.min_success} but the layer makes only {calls} calls")
        return self

    def parallel_calls(self) -> int | None:
        """Calls made together, one per agent sample (None when the stage calls step by step)."""
        return sum(agent.n for agent in self.agents)

    def call_agents(self) -> list[Agent]:
        return list(self.agents)

    def calls(self, inputs: int) -> int:
        return sum(agent.n * agent.most_calls for agent in self.agents)

    def outputs(self, inputs: int) -> int:
        return sum(agent.n for agent in self.agents)

    def fewest_outputs(self, inputs: int) -> int:
        return self.min_success or self.outputs(inputs)

    def can_be_last(self) -> str | None:
        if self.parallel_calls() not in (None, 1):
            return (
                f"the last layer makes {self.parallel_calls()} calls; it must make exactly one "
                "(a single aggregator, or a single agent with n = 1), whose output is the answer"
            )
        return None

    def agent_lines(self) -> list[str]:
        return [f"{a.label}{f' x {a.n}' if a.n > 1 else ''}" for a in self.agents]


class TemplatedLayer(AgentLayer):
    """An agent stage whose prompt carries the candidates, rendered by a Jinja2 template."""

    default_template: ClassVar[str] = "aggregate"
    template: str | None = Field(
        None,
        description="Template that turns the previous layer's outputs into the system-message "
        "block: a built-in name from `prompts/` (e.g. `aggregate`) or a path to a Jinja2 "
        "file (relative to the recipe file). Unset means the kind's own (`aggregate`, `aggregate_seq`, "
        "`debate`). Variables: `responses` (list of strings), `layer` (1-based), `step` (1-based, "
        "`aggregate_seq` and `debate` only; 0 otherwise).",
    )
    _compiled: _templates.CompiledTemplate | None = PrivateAttr(default=None)

    @field_validator("template")
    @classmethod
    def _check_template(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            value = _templates.resolve_reference(value, (info.context or {}).get("base_dir"))
        try:
            _templates.load(value or cls.default_template)
        except TemplateError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _compile(self) -> TemplatedLayer:
        self._compiled = _templates.load(self.template or self.default_template)
        return self

    @property
    def compiled_template(self) -> _templates.CompiledTemplate:
        """The checked template."""
        assert self._compiled is not None
        return self._compiled

    def template_sources(self) -> list[str]:
        return [self.compiled_template.source]

    def check_templates(self, fewest: int, most: int, index: int) -> None:
        for count, step in sorted(self.template_cases(fewest, most)):
            self.compiled_template.check([count], [step], layer=index + 1)

    def template_cases(self, fewest: int, most: int) -> set[tuple[int, int]]:
        """Every (number of responses, step) the template can be rendered with."""
        return {(count, 0) for count in range(max(fewest, 1), max(most, 1) + 1)}


class ProposeLayer(AgentLayer):
    """``propose``: every agent answers the conversation unchanged (after its own system prompt)."""

    kind: Literal["propose"] = Field(..., description="`propose`: every agent answers the conversation.")
    takes_candidates: ClassVar[bool] = False

    def describe(self, inputs: int) -> list[str]:
        return ["each gets: the conversation unchanged (after its own system prompt, if any)"]


class AggregateLayer(TemplatedLayer):
    """``aggregate``: every agent answers with the previous candidates injected into its system message."""

    kind: Literal["aggregate"] = Field(
        ..., description="`aggregate`: every agent answers with the previous layer's outputs in its system message."
    )

    def describe(self, inputs: int) -> list[str]:
        return [
            f"each gets: the conversation, with the previous layer's {inputs} outputs rendered by "
            f"{self.compiled_template.source} appended to the system message; user turns unchanged"
        ]


class AggregateSeqLayer(TemplatedLayer):
    """``aggregate_seq`` (Self-MoA-Seq): one agent folds the candidates in, ``window`` at a time."""

    kind: Literal["aggregate_seq"] = Field(
        ..., description="`aggregate_seq`: one agent folds the previous outputs in, `window` at a time."
    )
    default_template: ClassVar[str] = "aggregate_seq"
    step_name: ClassVar[str | None] = "step"
    window: int | None = Field(
        None,
        ge=2,
        description="How many responses each step sees, the running synthesis included. The first step sees "
        "the first `window` outputs; each later step sees the synthesis so far plus the next `window - 1` "
        "outputs. Default 3.",
    )

    @model_validator(mode="after")
    def _one_agent(self) -> AggregateSeqLayer:
        if len(self.agents) != 1 or self.agents[0].n != 1:
            raise ValueError("an `aggregate_seq` layer has exactly one agent with n = 1")
        return self

    @property
    def effective_window(self) -> int:
        return self.window or 3

    def parallel_calls(self) -> int | None:
        return None

    def calls(self, inputs: int) -> int:
        return len(seq_windows(inputs, self.effective_window)) * self.agents[0].most_calls

    def outputs(self, inputs: int) -> int:
        return 1

    def fewest_outputs(self, inputs: int) -> int:
        return 1

    def template_cases(self, fewest: int, most: int) -> set[tuple[int, int]]:
        return {
            (end - start + (step > 1), step)
            for inputs in range(max(fewest, 1), max(most, 1) + 1)
            for step, (start, end) in enumerate(seq_windows(inputs, self.effective_window), start=1)
        }

    def describe(self, inputs: int) -> list[str]:
        return [
            f"folds the {inputs} previous outputs {self.effective_window} at a time; each step's system "
            "message carries the synthesis so far and the next outputs"
        ]


def seq_windows(inputs: int, window: int) -> list[tuple[int, int]]:
    """Slices of the inputs each ``aggregate_seq`` step takes as new material.

    Step 1 takes the first ``window`` inputs; each later step takes the next
    ``window - 1`` inputs beside the synthesis so far.
    """
    if inputs <= 0:
        return []
    steps = [(0, min(window, inputs))]
    start = steps[0][1]
    while start < inputs:
        end = min(start + window - 1, inputs)
        steps.append((start, end))
        start = end
    return steps


def kind_of(data: Any) -> str | None:
    """The ``kind`` of a layer given as data (None when it has none)."""
    return data.get("kind") if isinstance(data, dict) else getattr(data, "kind", None)
