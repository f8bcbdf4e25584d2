"""What a run returns: the answer and a JSON-able trace of every call.

``MoAResult.model_dump()`` (or ``model_dump_json()``) is the whole trace:
every layer, every agent's messages, text or error, tokens, cost and latency.
API keys are never part of it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field


class Usage(BaseModel):
    """Token counts, as reported by the provider."""

    # ``total_tokens`` is computed: ignore it when a dumped trace is read back.
    model_config = ConfigDict(extra="ignore")

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class CallError(BaseModel):
    """Why a call failed."""

    type: str = Field(description="moa error class, e.g. `RateLimitedError`.")
    message: str
    status_code: int | None = None
    transient: bool = False


class AgentOutput(BaseModel):
    """One call: who made it, what it was sent, and what came back (text or error)."""

    layer: int = Field(description="1-based layer number.")
    agent: int = Field(description="0-based index of the agent in its layer.")
    sample: int = Field(0, description="0-based sample of that agent (`n > 1`).")
    step: int = Field(0, description="1-based step of an `aggregate_seq` layer, else 0.")
    name: str
    model: str
    messages: list[dict[str, Any]] = Field(default_factory=list)
    text: str | None = None
    error: CallError | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = Field(None, description="None when the model's price is unknown.")
    latency_s: float = 0.0
    attempts: int = 0
    top_logprobs: dict[str, float] | None = Field(
        None, description="First token's top alternatives {token: logprob}, when requested."
    )

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


class LayerResult(BaseModel):
    """One layer: all of its calls, failed ones included, in agent order."""

    index: int = Field(description="1-based layer number.")
    kind: str
    outputs: list[AgentOutput]
    latency_s: float = 0.0

    @property
    def succeeded(self) -> list[AgentOutput]:
        return [output for output in self.outputs if output.ok]

    @property
    def failed(self) -> list[AgentOutput]:
        return [output for output in self.outputs if not output.ok]


class MoAResult(BaseModel):
    """A finished run."""

    recipe: str
    prompt: list[dict[str, Any]]
    output: str = Field(description="The final aggregator's answer.")
    layers: list[LayerResult]
    usage: Usage
    cost_usd: float | None = Field(description="Total USD cost; None when any successful call's model is unpriced.")
    unpriced_models: list[str] = Field(default_factory=list, description="Models whose cost is unknown in this run.")
    latency_s: float

    @property
    def calls(self) -> list[AgentOutput]:
        return [output for layer in self.layers for output in layer.outputs]
