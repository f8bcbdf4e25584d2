"""Recipes: the typed description of a pipeline.

Every field's ``description`` is the recipe documentation (``moa schema`` and
the README are generated from the same text), so keep them exact.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from moa import _templates
from moa._errors import TemplateError
from moa._secrets import is_secret_name, looks_like_a_key, looks_like_a_key_not_a_name

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Keys a recipe may not pass through ``extra``: moa sets them itself, or a field of its own covers them.
_RESERVED_EXTRA = {
    "model": "set `model` on the agent",
    "messages": "messages are built by the pipeline",
    "stream": "streaming is chosen by the caller, not the recipe",
    "stream_options": "streaming is chosen by the caller, not the recipe",
    "n": "use the agent's `n` (moa makes one call per sample)",
    "api_key": "literal API keys are not allowed in recipes; name an env var with `api_key_env`",
    "num_retries": "retries are configured by the recipe's `retry` block",
    "max_retries": "retries are configured by the recipe's `retry` block",
    "temperature": "use the `temperature` field (it is range-checked)",
    "max_tokens": "use the `max_tokens` field (budgets read it)",
    "top_p": "use the `top_p` field (it is range-checked)",
    "timeout": "use the `timeout` field (it is range-checked)",
    "api_base": "use the `api_base` field",
    "base_url": "use the `api_base` field",
    "mock_response": "a litellm testing switch: it would replace the provider's answers",
}
#: Longest timeout, backoff or wait a recipe may ask for (one day): beyond it a number is a mistake.
MAX_SECONDS = 86_400.0


def _check_extra(value: Any, path: str, names_checked: bool = True) -> None:
    """Refuse secrets and non-finite numbers anywhere inside ``extra``.

    A secret is refused by its name at the top level and in ``extra_headers``
    (``aws_secret_access_key``, ``Authorization``, ``x-api-key``...), and by its
    shape anywhere (``sk-...``, ``Bearer ...``, the value of a key variable).
    Deeper names are not judged: a JSON schema may well have a property ``token``.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            if names_checked and (is_secret_name(str(key)) or "auth" in str(key).lower()):
                raise ValueError(
                    f"`{where}` would put a secret in the recipe (and in every log and trace); "
                    "name an environment variable with `api_key_env` instead (the value is not shown)"
                )
            _check_extra(item, where, names_checked=str(key) in ("extra_headers", "headers"))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_extra(item, f"{path}[{index}]", names_checked=False)
    elif isinstance(value, str):
        if len(value) >= 16 and looks_like_a_key(value):
            raise ValueError(
                f"`{path}` looks like an API key; keys never go in recipes: name an environment variable "
                "with `api_key_env` instead (the value is not shown)"
            )
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"`{path}` is {value}: numbers must be finite")


class _Strict(BaseModel):
    # Infinity and NaN are refused everywhere: `timeout: .inf` would wait forever, a NaN bound checks nothing.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``max_tokens: true`` is a mistake, not 1 (pydantic would quietly take it as 1)."""
        if isinstance(value, bool) and info.field_name is not None:
            kinds = set(get_args(cls.model_fields[info.field_name].annotation)) or {
                cls.model_fields[info.field_name].annotation
            }
            if bool not in kinds and kinds & {int, float}:
                raise ValueError("must be a number, not true/false")
        return value


class CallParams(_Strict):
    """Model settings passed to every call they apply to.

    Precedence, lowest to highest: the recipe's ``defaults``, the agent's own
    settings, keyword overrides given to ``moa.run``.
    """

    temperature: float | None = Field(
        None, ge=0, le=2, description="Sampling temperature; unset leaves the provider's default."
    )
    max_tokens: int | None = Field(
        None, gt=0, le=1_000_000, description="Most tokens the model may write in one answer."
    )
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    timeout: float | None = Field(
        None,
        gt=0,
        le=MAX_SECONDS,
        description="Seconds one attempt of one call may take before it counts as timed out "
        "(and is retried). Unset means 120.",
    )
    api_base: str | None = Field(
        None,
        description="Base URL of the provider, e.g. `http://127.0.0.1:8000/v1` for any "
        "OpenAI-compatible server (use the model string `openai/<name>`).",
    )
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable holding the API key. Unset means "
        "the provider's usual variable (OPENAI_API_KEY, TOGETHERAI_API_KEY, ...), "
        "which litellm reads itself. Never put a key itself in a recipe.",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other keyword arguments for `litellm.acompletion` (e.g. `seed`, `stop`, `presence_penalty`).",
    )

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and looks_like_a_key_not_a_name(value):
            raise ValueError(
                "this looks like an API key itself, not the name of the environment variable that holds it "
                "(the value is not shown): export the key and give the variable's name"
            )
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(
                "is not an environment variable name (letters, digits and underscores, not starting with a digit; "
                "the value is not shown in case it is a key)"
            )
        return value

    @field_validator("api_base")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None and "@" in value.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError(
                "carries credentials (user:password@ or key@ before the host): they would be stored in every log "
                "and trace; give the key with api_key_env (the value is not shown)"
            )
        return value

    @field_validator("extra")
    @classmethod
    def _extra_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in _RESERVED_EXTRA:
                raise ValueError(f"key {key!r} is not allowed here: {_RESERVED_EXTRA[key]}")
        _check_extra(value, "extra")
        return value


class Agent(CallParams):
    """One model in a layer. With ``n > 1`` it is sampled ``n`` times, each an independent call."""

    model: str = Field(
        ...,
        min_length=1,
        description="litellm model string, e.g. `openai/gpt-4o`, "
        "`together_ai/Qwen/Qwen1.5-110B-Chat`, or `openai/<name>` with `api_base`.",
    )
    name: str | None = Field(None, description="Label shown in results and logs; defaults to the model string.")
    system: str | None = Field(
        None,
        description="System prompt for this agent. Placed before the conversation's own "
        "system message, if it has one (separated by a blank line).",
    )
    n: int = Field(1, ge=1, le=64, description="How many independent samples to draw from this agent.")

    @property
    def label(self) -> str:
        return self.name or self.model


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
            {
                "kind": "aggregate_seq" if self.window else "aggregate",
                "agents": [aggregator],
                "template": self.template,
                "window": self.window,
            },
        ]


class Recipe(_Strict):
    """A whole pipeline: layers of agents, their defaults, limits and retry policy."""

    name: str = Field(..., min_length=1, description="Short name, used in results and logs.")
    description: str = Field("", description="One or two sentences for `moa recipes list`.")
    defaults: CallParams = Field(default_factory=CallParams, description="Settings passed to every call.")
    layers: list[Layer] = Field(
        default_factory=list,
        description="The stages, in order. Paper counting: a 3-layer MoA with 6 proposers is "
        "propose(6) → aggregate(6) → aggregate(1) = 13 calls. The last layer must produce "
        "exactly one output: the answer.",
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
        if isinstance(data, dict) and data.get("self_moa") is not None:
            if data.get("layers"):
                raise ValueError("give either `self_moa` or `layers`, not both")
            self_moa = data["self_moa"]
            try:
                spec = self_moa if isinstance(self_moa, SelfMoA) else SelfMoA.model_validate(self_moa)
            except ValidationError:
                return data  # field validation of `self_moa` reports it, with its path
            data = {**data, "layers": spec.expand()}
        return data

    @model_validator(mode="after")
    def _check_shape(self) -> Recipe:
        if not self.layers:
            raise ValueError("a recipe needs `layers` (at least one) or `self_moa`")
        for index, layer in enumerate(self.layers):
            if index == 0 and layer.kind != "propose":
                raise ValueError(
                    f"layers[0].kind is {layer.kind!r}: the first layer has nothing to "
                    "aggregate, so it must be `propose`"
                )
            if index > 0 and layer.kind == "propose":
                raise ValueError(
                    f"layers[{index}].kind is 'propose': later layers receive the previous "
                    "layer's outputs, so use `aggregate` (or `aggregate_seq`)"
                )
        last = self.layers[-1]
        if last.kind != "aggregate_seq" and last.planned_calls_in() != 1:
            raise ValueError(
                f"the last layer makes {last.planned_calls_in()} calls; it must make exactly one "
                "(a single aggregator, or a single agent with n = 1), whose output is the answer"
            )
        self._check_templates()
        return self

    def _check_templates(self) -> None:
        """Trial-render every template with each number of responses its layer can really receive.

        A quorum below the previous layer's size means fewer responses than
        agents; a template that indexes ``responses[1]`` must fail here, when
        the recipe loads, not after the calls before it were paid for.
        """
        fewest = most = 0
        for index, layer in enumerate(self.layers):
            if index:
                if layer.kind == "aggregate_seq":  # (responses, step) of every step, for every number of inputs
                    cases = {
                        (end - start + (step > 1), step)
                        for inputs in range(max(fewest, 1), max(most, 1) + 1)
                        for step, (start, end) in enumerate(seq_windows(inputs, layer.effective_window), start=1)
                    }
                else:
                    cases = {(count, 0) for count in range(max(fewest, 1), max(most, 1) + 1)}
                try:
                    for count, step in sorted(cases):
                        layer.compiled_template.check([count], [step], layer=index + 1)
                except TemplateError as exc:
                    raise ValueError(f"layers[{index}].template: {exc}") from None
            calls = layer.planned_calls_in()
            if layer.kind == "aggregate_seq" or calls is None:
                fewest = most = 1
            else:
                fewest, most = layer.min_success or calls, calls

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        # The shorthand regenerates its layers on load, so it alone round-trips.
        if isinstance(data, dict) and data.get("self_moa") is not None:
            data.pop("layers", None)
        return data

    def calls_by_layer(self) -> list[int]:
        """Calls of each layer when every call succeeds."""
        counts, inputs = [], 0
        for layer in self.layers:
            counts.append(layer.calls(inputs))
            inputs = layer.outputs()
        return counts

    @property
    def calls_per_query(self) -> int:
        """Calls one query makes when every call succeeds (paper counting: 3 layers x 6 proposers = 13)."""
        return sum(self.calls_by_layer())

    @property
    def models(self) -> list[str]:
        """Distinct model strings, in order of first use."""
        seen: dict[str, None] = {}
        for layer in self.layers:
            for agent in layer.agents:
                seen.setdefault(agent.model, None)
        return list(seen)
