"""Recipes: the typed description of a pipeline.

Every field's ``description`` is the recipe documentation (``moa schema`` and
the README are generated from the same text), so keep them exact.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    model_serializer,
    model_validator,
)

from moa._errors import TemplateError

from . import registry
from .control import Answerer, CascadeLayer, ChecksScore, ConfidenceScore, JudgeScore, Tier
from .debate import DebateLayer
from .execution import ExecuteLayer
from .layers import AgentLayer, AggregateLayer, AggregateSeqLayer, Layer, ProposeLayer, TemplatedLayer, seq_windows
from .local_models import LocalModel, LocalModels, in_scope
from .neighbours import Example, NeighboursRouter
from .params import MAX_SECONDS, Agent, CallParams, SandboxLimits, Tool, _Strict
from .routing import ClassifierRouter, Route, RouteLayer, RouteRule, RulesRouter
from .selection import RankLayer, VoteLayer
from .verification import AgreeCheck, JsonSchemaCheck, LLMCheck, PythonCheck, RegexCheck, VerifyLayer

__all__ = [
    "MAX_SECONDS",
    "AgentLayer",
    "Agent",
    "Answerer",
    "CascadeLayer",
    "ChecksScore",
    "ConfidenceScore",
    "JudgeScore",
    "Tier",
    "ClassifierRouter",
    "Example",
    "NeighboursRouter",
    "Route",
    "RouteLayer",
    "RouteRule",
    "RulesRouter",
    "AgreeCheck",
    "AggregateLayer",
    "AggregateSeqLayer",
    "CallParams",
    "DebateLayer",
    "ExecuteLayer",
    "JsonSchemaCheck",
    "LLMCheck",
    "Layer",
    "LocalModel",
    "PythonCheck",
    "ProposeLayer",
    "ProviderLimit",
    "RankLayer",
    "Recipe",
    "RegexCheck",
    "RetryPolicy",
    "SandboxLimits",
    "SelfMoA",
    "TemplatedLayer",
    "Tool",
    "VerifyLayer",
    "VoteLayer",
    "seq_windows",
]


class ProviderLimit(_Strict):
    """Limits for one provider, shared by every layer (and every concurrent run given the same limiter)."""

    max_concurrency: int | None = Field(
        32, ge=1, le=100_000, description="Most calls in flight at once to this provider."
    )
    rpm: float | None = Field(None, gt=0, description="Most requests started per minute; unset means no pacing.")
    tpm: float | None = Field(
        None,
        gt=0,
        description="Most tokens (prompt + most output) started per minute; unset means no token pacing. "
        "A call larger than this takes the whole minute's allowance.",
    )


class RetryPolicy(_Strict):
    """Retries of transient failures: 429 (Retry-After honoured), 5xx, timeouts, connection errors.

    Never retried: 400, 401, 403, 404, 422 and unusable answers.
    """

    max_attempts: int = Field(4, ge=1, le=20, description="Attempts per call, the first included.")
    initial_backoff_s: float = Field(
        1.0, ge=0, le=MAX_SECONDS, description="Upper bound of the first jittered backoff, in seconds."
    )
    max_backoff_s: float = Field(30.0, ge=0, le=MAX_SECONDS, description="Upper bound of any one backoff, in seconds.")
    max_retry_after_s: float = Field(
        120.0,
        ge=0,
        le=MAX_SECONDS,
        description="Longest server-requested Retry-After that is honoured; a longer one fails the call.",
    )


class SelfMoA(_Strict):
    """Shorthand for Self-MoA: one strong model sampled ``samples`` times, then aggregated.

    With ``window`` set it becomes Self-MoA-Seq: the samples are folded in
    sequentially by an ``aggregate_seq`` layer.
    """

    model: str = Field(..., min_length=1, description="The model to sample.")
    samples: int = Field(6, ge=1, le=64, description="How many samples to draw (k).")
    temperature: float = Field(0.7, ge=0, le=2, description="Temperature of the samples.")
    max_tokens: int | None = Field(None, gt=0, le=1_000_000, description="Token limit of each sample.")
    system: str | None = Field(None, description="System prompt of the sampled model.")
    aggregator: str | None = Field(None, description="Model that aggregates; unset means the sampled model itself.")
    aggregator_temperature: float | None = Field(
        None, ge=0, le=2, description="Temperature of the aggregator; unset uses `defaults`."
    )
    template: str | None = Field(None, description="Aggregation template (see `Layer.template`).")
    window: int | None = Field(
        None, ge=2, description="Set to make this Self-MoA-Seq with this window (see `Layer.window`)."
    )
    min_success: int | None = Field(None, ge=1, description="Quorum of the sampling layer; unset means all samples.")

    def expand(self) -> list[dict[str, Any]]:
        """The layers this shorthand stands for (as data, validated with the recipe)."""
        proposer = {
            "model": self.model,
            "n": self.samples,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "system": self.system,
        }
        aggregator = {
            "model": self.aggregator or self.model,
            "temperature": self.aggregator_temperature,
            "max_tokens": self.max_tokens,
        }
        return [
            {"kind": "propose", "agents": [proposer], "min_success": self.min_success},
            {"kind": "aggregate_seq", "agents": [aggregator], "template": self.template, "window": self.window}
            if self.window
            else {"kind": "aggregate", "agents": [aggregator], "template": self.template},
        ]


def _stages_in_schema(schema: dict[str, Any]) -> None:
    """``stages`` is accepted as another name for ``layers``: editors validating with the schema accept it."""
    properties = schema.get("properties", {})
    if "layers" in properties:
        properties["stages"] = {**properties["layers"], "title": "Stages", "description": "Another name for `layers`."}


class Recipe(_Strict):
    """A whole pipeline: layers of agents, their defaults, limits and retry policy."""

    model_config = ConfigDict(**_Strict.model_config, json_schema_extra=_stages_in_schema)

    name: str = Field(..., min_length=1, description="Short name, used in results and logs.")
    description: str = Field("", description="One or two sentences for `moa recipes list`.")
    local_models: LocalModels = Field(
        default_factory=dict,
        description="Short names for GGUF files of your own: `name: path/to/model.gguf` (relative to this recipe's "
        "folder, absolute, or `~/...`) or `name: {path: ...}`; an agent then says `model: local/<name>`. Each file "
        "is checked when the recipe loads and gets its own llama.cpp server, shared by every name and "
        "`local:` path of that file. A name may not be a bundled model's (`smollm2-135m`).",
    )
    defaults: CallParams = Field(default_factory=CallParams, description="Settings passed to every call.")
    layers: list[Layer] = Field(
        default_factory=list,
        description="The stages, in order. Each stage's `kind` says which fields it takes (`stages` is accepted "
        "as another name for this key). Paper counting: a 3-layer MoA with 6 proposers is "
        "propose(6) → aggregate(6) → aggregate(1) = 13 calls. The answer is the last stage's first "
        "candidate; a last `propose` or `aggregate` stage must make exactly one call.",
    )
    self_moa: SelfMoA | None = Field(None, description="Self-MoA shorthand; give this or `layers`, not both.")
    limits: dict[str, ProviderLimit] = Field(
        default_factory=dict,
        description="Per-provider limits keyed by provider (the model string's prefix before "
        "`/`, e.g. `openai`, `together_ai`); the key `default` covers providers not listed.",
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retry policy of every call.")

    @model_validator(mode="before")
    @classmethod
    def _expand_self_moa(cls, data: Any) -> Any:
        if isinstance(data, dict) and "stages" in data:
            if "layers" in data:
                raise ValueError("give either `stages` or `layers` (two names for the same list), not both")
            data = {("layers" if key == "stages" else key): value for key, value in data.items()}
        if isinstance(data, dict) and data.get("self_moa") is not None:
            if data.get("layers"):
                raise ValueError("give either `self_moa` or `layers` (`stages`), not both")
            self_moa = data["self_moa"]
            try:
                spec = self_moa if isinstance(self_moa, SelfMoA) else SelfMoA.model_validate(self_moa)
            except ValidationError:
                return data  # field validation of `self_moa` reports it, with its path
            data = {**data, "layers": spec.expand()}
        return data

    # mypy infers `Never` for a wrap validator that takes `info` on this model (not on a plain BaseModel): ignored.
    @model_validator(mode="wrap")  # type: ignore[arg-type]
    @classmethod
    def _local_models_first(cls, data: Any, handler: ModelWrapValidatorHandler[Recipe], info: ValidationInfo) -> Recipe:
        """Every agent's `local/<name>` is resolved with this recipe's `local_models` (see ``local_models``)."""
        with in_scope(data, info.context) as scoped:
            return handler(scoped)

    @model_validator(mode="after")
    def _check_shape(self) -> Recipe:
        if not self.layers:
            raise ValueError("a recipe needs `layers` (at least one) or `self_moa`")
        for index, layer in enumerate(self.layers):
            if index == 0 and layer.takes_candidates:
                raise ValueError(
                    f"layers[0].kind is {layer.kind!r}: the first layer has no candidates to work on, so it "
                    "must write its own answers (`propose`, `debate`)"
                )
            if index > 0 and not layer.takes_candidates:
                raise ValueError(
                    f"layers[{index}].kind is {layer.kind!r}: it answers the conversation afresh, so it can only "
                    "come first; later layers receive the previous layer's outputs (`aggregate`, `vote`, ...)"
                )
        problem = self.layers[-1].can_be_last()
        if problem is not None:
            raise ValueError(problem)
        self._check_templates()
        return self

    def _check_templates(self) -> None:
        """Trial-render every template with each number of candidates its layer can really receive.

        A quorum below the previous layer's size means fewer responses than
        agents; a template that indexes ``responses[1]`` must fail here, when
        the recipe loads, not after the calls before it were paid for.
        """
        fewest = most = 0
        for index, layer in enumerate(self.layers):
            try:
                layer.check_templates(fewest, most, index)
            except TemplateError as exc:
                raise ValueError(f"layers[{index}].template: {exc}") from None
            fewest, most = layer.fewest_outputs(fewest), layer.outputs(most)

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        # The shorthand regenerates its layers on load, so it alone round-trips.
        if isinstance(data, dict) and data.get("self_moa") is not None:
            data.pop("layers", None)
        if isinstance(data, dict) and not data.get("local_models"):
            data.pop("local_models", None)  # a recipe without the map dumps (and is fingerprinted) as before it
        return data

    def calls_by_layer(self) -> list[int]:
        """The most calls of each layer (every call succeeding; repair and escalation loops at their maximum)."""
        counts, inputs = [], 0
        for layer in self.layers:
            counts.append(layer.calls(inputs))
            inputs = layer.outputs(inputs)
        return counts

    @property
    def calls_per_query(self) -> int:
        """Calls one query makes when every call succeeds (paper counting: 3 layers x 6 proposers = 13)."""
        return sum(self.calls_by_layer())

    @property
    def models(self) -> list[str]:
        """Distinct model strings, in order of first use (the agents and recipes `ask` tools ask included)."""
        seen: dict[str, None] = {}

        def add(agent: Agent) -> None:
            seen.setdefault(agent.model, None)
            for tool in agent.tools:
                if tool.agent is not None:
                    add(tool.agent)
                if isinstance(tool._loaded, Recipe):
                    seen.update(dict.fromkeys(tool._loaded.models))

        for layer in self.layers:
            for agent in layer.call_agents():
                add(agent)
            for _, answerer in layer.answerers():
                if isinstance(answerer._loaded, Recipe):
                    seen.update(dict.fromkeys(answerer._loaded.models))
        return list(seen)


for _config in (
    ProposeLayer, AggregateLayer, AggregateSeqLayer, VoteLayer, RankLayer, VerifyLayer, DebateLayer, ExecuteLayer,
    CascadeLayer, RouteLayer,
):  # fmt: skip
    registry.register_kind(_config)


def _rebuild() -> None:
    """Make ``Recipe.layers`` a union of every registered kind, so each kind validates with its own fields."""
    layers: Any = list.__class_getitem__(registry.layer_union())  # list[<the union>], built at run time
    Recipe.model_fields["layers"].annotation = layers
    Recipe.model_rebuild(force=True)


_rebuild()
registry.on_change(_rebuild)
