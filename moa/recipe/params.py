"""Call settings and agents: what one model call is sent with.

Every field's ``description`` is the recipe documentation (``moa schema`` and
the README are generated from the same text), so keep them exact.
"""

from __future__ import annotations

import math
import re
from typing import Any, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

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
