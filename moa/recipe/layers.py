"""Layers: the stages of a recipe, their kinds, templates, quorums and call counts."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from moa import _templates
from moa._errors import TemplateError

from .params import MAX_SECONDS, Agent, _Strict

LayerKind = Literal["propose", "aggregate", "aggregate_seq"]


class Layer(_Strict):
    """One stage of the pipeline.

    - ``propose`` (first layer only): every agent answers the conversation.
    - ``aggregate``: every agent answers the conversation with the previous
      layer's successful outputs injected into its system message.
    - ``aggregate_seq``: one agent folds the previous layer's outputs in
      sequentially, ``window`` at a time (Self-MoA-Seq); its last synthesis is
      the layer's output.
    """

    kind: LayerKind = Field(..., description="`propose`, `aggregate` or `aggregate_seq`.")
    agents: list[Agent] = Field(..., description="The agents of this layer (at least one).")
    template: str | None = Field(
        None,
        description="Template that turns the previous layer's outputs into the system-message "
        "block: a built-in name from `prompts/` (e.g. `aggregate`) or a path to a Jinja2 "
        "file (relative to the recipe file). Unset means `aggregate` (`aggregate_seq` for "
        "`aggregate_seq` layers). "
        "Variables: `responses` (list of strings), `layer` (1-based), `step` (1-based, "
        "`aggregate_seq` only; 0 otherwise).",
    )
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
    window: int | None = Field(
        None,
        ge=2,
        description="`aggregate_seq` only: how many responses each step sees, the running "
        "synthesis included. The first step sees the first `window` outputs; each later step "
        "sees the synthesis so far plus the next `window - 1` outputs. Default 3.",
    )

    _compiled: _templates.CompiledTemplate | None = PrivateAttr(default=None)

    @field_validator("template")
    @classmethod
    def _check_template(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind == "propose":
            if value is not None:
                raise ValueError("a `propose` layer receives no outputs to template; remove it")
            return None
        if value is not None:
            value = _templates.resolve_reference(value, (info.context or {}).get("base_dir"))
        try:
            _templates.load(value or _default_template(kind))
        except TemplateError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _check(self) -> Layer:
        if self.kind != "propose":
            self._compiled = _templates.load(self.template or _default_template(self.kind))
        if not self.agents:
            raise ValueError("a layer needs at least one agent")
        calls = self.planned_calls_in()
        if self.kind == "aggregate_seq":
            if len(self.agents) != 1 or self.agents[0].n != 1:
                raise ValueError("an `aggregate_seq` layer has exactly one agent with n = 1")
        elif self.window is not None:
            raise ValueError("`window` applies only to `aggregate_seq` layers")
        if self.straggler_s is not None and (self.min_success is None or calls is None or self.min_success >= calls):
            raise ValueError("`straggler_s` needs `min_success` below the layer's number of calls")
        if self.min_success is not None and calls is not None and self.min_success > calls:
            raise ValueError(f"min_success is {self.min_success} but the layer makes only {calls} calls")
        return self

    def planned_calls_in(self) -> int | None:
        """Calls this layer makes on its own (None for ``aggregate_seq``: depends on its inputs)."""
        if self.kind == "aggregate_seq":
            return None
        return sum(agent.n for agent in self.agents)

    def calls(self, inputs: int) -> int:
        """Calls this layer makes when it receives ``inputs`` outputs and every call succeeds."""
        if self.kind == "aggregate_seq":
            return len(seq_windows(inputs, self.effective_window))
        return sum(agent.n for agent in self.agents)

    def outputs(self) -> int:
        """Outputs this layer passes on when every call succeeds."""
        return 1 if self.kind == "aggregate_seq" else sum(agent.n for agent in self.agents)

    @property
    def effective_window(self) -> int:
        return self.window or 3

    @property
    def compiled_template(self) -> _templates.CompiledTemplate:
        """The checked template of an aggregating layer."""
        if self._compiled is None:
            raise TypeError("a `propose` layer has no template")
        return self._compiled


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


def _default_template(kind: str | None) -> str:
    return "aggregate_seq" if kind == "aggregate_seq" else "aggregate"
