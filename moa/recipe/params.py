"""Call settings and agents: what one model call is sent with.

Every field's ``description`` is the recipe documentation (``moa schema`` and
the README are generated from the same text), so keep them exact.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from moa._resources import builtin_names
from moa._secrets import is_secret_name, looks_like_a_key, looks_like_a_key_not_a_name

from . import local_models
from . import tools as tool_registry

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
    "tools": "give the agent `tools` (moa runs the tool loop)",
    "tool_choice": "the tool loop sets it (`none` on the last step)",
    "functions": "give the agent `tools` (moa runs the tool loop)",
}
#: Steps (model calls) of an agent's tool loop, and tool calls in all, unless the agent says otherwise.
DEFAULT_MAX_STEPS = 6
DEFAULT_MAX_TOOL_CALLS = 8
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


class SandboxLimits(_Strict):
    """What one program may use before it is stopped (each limit hit is recorded with the run)."""

    wall_s: float = Field(10.0, gt=0, le=600, description="Wall-clock seconds, then the program is killed.")
    cpu_s: int = Field(5, ge=1, le=600, description="CPU seconds.")
    memory_mb: int = Field(256, ge=16, le=65536, description="Memory (address space), in MiB.")
    processes: int = Field(16, ge=1, le=4096, description="Processes and threads the program may have.")
    output_bytes: int = Field(
        65536, ge=1024, le=64 * 2**20, description="Bytes of stdout (and of stderr) kept; more kills the program."
    )


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
        "`together_ai/Qwen/Qwen1.5-110B-Chat`, or `openai/<name>` with `api_base`; a local GGUF model: "
        "`local/smollm2-135m` (bundled), `local/<name>` (the recipe's `local_models`), `local:/path/to/model.gguf`.",
    )
    name: str | None = Field(None, description="Label shown in results and logs; defaults to the model string.")
    system: str | None = Field(
        None,
        description="System prompt for this agent. Placed before the conversation's own "
        "system message, if it has one (separated by a blank line).",
    )
    n: int = Field(1, ge=1, le=64, description="How many independent samples to draw from this agent.")

    tools: list[Tool] = Field(
        default_factory=list,
        json_schema_extra=lambda schema: schema.update(items={"anyOf": [{"type": "string"}, schema["items"]]}),
        description="Tools the agent may call, in a loop, before it answers: `python` (runs code in the sandbox), "
        "`ask` (asks another agent or a whole recipe), or a function registered with `moa.register_tool`. Each "
        'is a name, or a mapping with `name` and the tool\'s settings (README, "Tools").',
    )
    max_steps: int | None = Field(
        None,
        le=50,
        description="With `tools`: the most model calls of the agent's tool loop (default 6, at least 2). The "
        "last one is made with `tool_choice: none`, so the model must answer then.",
    )
    max_tool_calls: int | None = Field(
        None,
        ge=1,
        le=64,
        description="With `tools`: the most tool calls the loop runs in all (default 8). Calls asked for beyond "
        "it are not run (the model is told), and the next model call must answer.",
    )

    #: ``local/<name>`` as the recipe wrote it, when its ``local_models`` made ``model`` that file's ``local:`` path.
    _written: str | None = PrivateAttr(default=None)

    @property
    def label(self) -> str:
        return self.name or self._written or self.model

    @field_validator("model")
    @classmethod
    def _local_file(cls, value: str) -> str:
        return local_models.resolve(value)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_written(cls, data: Any, handler: ModelWrapValidatorHandler[Agent]) -> Agent:
        agent = handler(data)
        agent._written = local_models.written(data, agent.model) or agent._written
        return agent

    @field_serializer("model")
    def _as_written(self, value: str) -> str:  # a dump says `local/<name>`: it loads again with `local_models`
        return self._written or value

    @property
    def steps(self) -> int:
        """The most model calls one answer of this agent takes (1 without tools)."""
        return (self.max_steps or DEFAULT_MAX_STEPS) if self.tools else 1

    @property
    def tool_call_limit(self) -> int:
        """The most tool calls one answer of this agent runs (0 without tools)."""
        return (self.max_tool_calls or DEFAULT_MAX_TOOL_CALLS) if self.tools else 0

    @property
    def most_calls(self) -> int:
        """The most model calls one answer of this agent makes: each step of its tool loop, and every tool call
        an `ask` at its most (the agent asked, or every call of the recipe asked)."""
        if not self.tools:
            return 1
        asks = [tool.agent.most_calls if tool.agent is not None else tool._loaded.calls_per_query
                for tool in self.tools if tool.agent is not None or tool._loaded is not None]  # fmt: skip
        return self.steps + self.tool_call_limit * max(asks, default=0)

    @field_validator("max_steps")
    @classmethod
    def _room_for_a_tool(cls, value: int | None) -> int | None:
        if value is not None and value < 2:
            raise ValueError(f"must be at least 2: the last step answers without tools (got {value})")
        return value

    @model_validator(mode="after")
    def _check_tools(self) -> Agent:
        if not self.tools:
            for field in ("max_steps", "max_tool_calls"):
                if getattr(self, field) is not None:
                    raise ValueError(f"`{field}` bounds a tool loop: it needs `tools`")
            return self
        seen: dict[str, int] = {}
        for index, tool in enumerate(self.tools):
            if tool.called in seen:
                raise ValueError(
                    f"tools[{seen[tool.called]}] and tools[{index}] are both called {tool.called!r} by the model: "
                    "give one a `function` name of its own"
                )
            seen[tool.called] = index
        return self


class Tool(_Strict):
    """One tool of an agent: a name (`python`, `ask`, a registered function), or a mapping with its settings."""

    name: str = Field(
        ...,
        description="`python`, `ask`, or the name of a function registered with `moa.register_tool` (or by an "
        "installed package, entry point group `moa.tools`).",
    )
    function: str | None = Field(
        None,
        description="The name the model calls it by (default: `name`; 1-64 letters, digits, `_`, `-`). Two tools "
        "of one kind (two `ask` tools) need different ones.",
    )
    description: str | None = Field(
        None, min_length=1, description="What the tool does, as the model reads it (default: the tool's own)."
    )
    limits: SandboxLimits | None = Field(
        None, description="`python` only: each program's limits (default: 10 s, 5 s CPU, 256 MiB, 16 processes)."
    )
    sandbox: Literal["local", "container"] | None = Field(
        None, description="`python` only: `local` (a separate process; the default) or `container`."
    )
    agent: Agent | None = Field(None, description="`ask` only: the agent asked; its answer is the tool's result.")
    recipe: str | None = Field(
        None,
        description="`ask` only, instead of `agent`: a recipe asked (a built-in name, or a path relative to this "
        "recipe); its answer is the tool's result. It runs under the same limits and budget.",
    )
    _loaded: Any = PrivateAttr(default=None)  # the `recipe`, loaded and checked with the recipe that asks it

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        known = tool_registry.known_tools()
        if value not in known:
            broken = "".join(f"; {why}" for name, why in tool_registry.failed().items() if name == value)
            raise ValueError(
                f"unknown tool {value!r}; tools: {', '.join(known)} (register functions with moa.register_tool "
                f"before loading the recipe){broken}"
            )
        return value

    @field_validator("function")
    @classmethod
    def _function_name(cls, value: str | None) -> str | None:
        if value is not None and not tool_registry.NAME.match(value):
            raise ValueError(f"must be 1-64 letters, digits, `_` or `-` (got {value!r})")
        return value

    @field_validator("recipe")
    @classmethod
    def _recipe_reference(cls, value: str | None, info: ValidationInfo) -> str | None:
        return recipe_reference(value, info)

    @model_validator(mode="after")
    def _settings_of_its_kind(self) -> Tool:
        own = {"python": ("limits", "sandbox"), "ask": ("agent", "recipe")}
        for kind, fields in own.items():
            for field in fields:
                if self.name != kind and getattr(self, field) is not None:
                    raise ValueError(f"`{field}` is a setting of the `{kind}` tool, not of `{self.name}`")
        if self.name == "ask" and (self.agent is None) == (self.recipe is None):
            raise ValueError("the `ask` tool asks an `agent` or a `recipe`: give exactly one of them")
        if self.agent is not None and self.agent.n != 1:
            raise ValueError(f"`agent` is asked once per question: its `n` must be 1, got {self.agent.n}")
        return self

    @property
    def called(self) -> str:
        """The name the model calls it by."""
        return self.function or self.name


Agent.model_rebuild()


def recipe_reference(value: str | None, info: ValidationInfo) -> str | None:
    """A recipe another names (an `ask` tool's, a cascade tier's, a route's): a built-in name as it is, a path
    relative to the naming recipe's folder."""
    if value is None or value in builtin_names("recipes", ".yaml"):
        return value
    path = Path(value).expanduser()
    base_dir = (info.context or {}).get("base_dir")
    return str(path if path.is_absolute() or base_dir is None else Path(base_dir) / path)


def _compiles(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"does not compile: {exc}") from None
    return value


#: A regular expression in a recipe, checked when the recipe loads.
Pattern = Annotated[str, AfterValidator(_compiles)]
