"""Planning: who gets which prompt.  Pure and synchronous, so it is tested without a loop.

The paper's semantics (Wang et al. 2024, and its reference code):
- layer 1 agents see the user's conversation unchanged;
- every agent of a later layer sees the same conversation, with the previous
  layer's outputs rendered by the layer's template and injected into the
  system message: appended after a blank line when there is one, otherwise as
  a new system message at the front;
- user and assistant turns are never changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moa._errors import CallSite, PromptError
from moa._loader import RecipeSource, load_recipe
from moa.recipe import Agent, CallParams, Layer, Recipe, seq_windows

Message = dict[str, Any]
DEFAULT_TIMEOUT_S = 120.0
_ROLES = {"system", "user", "assistant"}
_PARAM_FIELDS = ("temperature", "max_tokens", "top_p", "timeout", "api_base")


@dataclass(frozen=True)
class CallSpec:
    """One planned call: where it sits, which model, and its litellm keyword arguments.

    ``params`` never holds a secret; the key is looked up from ``api_key_env``
    (or passed by the caller) only when the request is sent.
    """

    site: CallSite
    params: Mapping[str, Any] = field(default_factory=dict)
    api_key_env: str | None = None

    @property
    def model(self) -> str:
        return self.site.model


def normalize_prompt(prompt: str | Sequence[Mapping[str, Any]]) -> list[Message]:
    """Turn a string or a chat conversation into checked messages (raises ``PromptError``)."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise PromptError("the prompt is empty")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, Sequence) or not prompt:
        raise PromptError("the prompt must be a non-empty string or a non-empty list of messages")
    messages: list[Message] = []
    for index, message in enumerate(prompt):
        if not isinstance(message, Mapping):
            raise PromptError(f"prompt[{index}] is {type(message).__name__}, not a message dict")
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES:
            raise PromptError(f"prompt[{index}].role is {role!r}; expected one of {', '.join(sorted(_ROLES))}")
        if not isinstance(content, str):
            raise PromptError(f"prompt[{index}].content must be a string")
        if role == "system" and index != 0:
            raise PromptError(f"prompt[{index}]: a system message may only come first")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise PromptError("the last message of the prompt must be a user message")
    if not messages[-1]["content"].strip():
        raise PromptError(f"prompt[{len(messages) - 1}] (the last user message) is empty")
    return messages


def build_messages(
    conversation: Sequence[Message], *, system: str | None = None, references: str | None = None
) -> list[Message]:
    """The messages one agent receives.

    ``system`` (the agent's own system prompt) comes first, then the
    conversation's system message, then the ``references`` block, each joined
    by a blank line into one system message.  Other turns are copied unchanged.
    """
    turns = [dict(message) for message in conversation]
    parts: list[str] = []
    if system:
        parts.append(system)
    if turns and turns[0]["role"] == "system":
        parts.append(turns.pop(0)["content"])
    if references:
        parts.append(references)
    if parts:
        turns.insert(0, {"role": "system", "content": "\n\n".join(parts)})
    return turns


def call_params(
    defaults: CallParams, agent: Agent, overrides: CallParams | None = None
) -> tuple[dict[str, Any], str | None]:
    """litellm keyword arguments for one agent, and its ``api_key_env``.

    Precedence: recipe defaults < agent settings < run overrides (a validated
    ``CallParams``; see ``moa._overrides``).
    """
    params: dict[str, Any] = {"timeout": DEFAULT_TIMEOUT_S}
    key_env = None
    for source in (defaults, agent, overrides):
        if source is None:
            continue
        params.update(source.extra)
        for name in _PARAM_FIELDS:
            value = getattr(source, name)
            if value is not None:
                params[name] = value
        key_env = source.api_key_env or key_env
    return params, key_env


def plan_layer(recipe: Recipe, layer_index: int, overrides: CallParams | None = None) -> list[CallSpec]:
    """The calls of one ``propose`` or ``aggregate`` layer (0-based index), in agent order.

    For ``aggregate_seq`` it plans the single agent's call once; the engine
    repeats it per step.
    """
    layer = recipe.layers[layer_index]
    specs = []
    for agent_index, agent in enumerate(layer.agents):
        params, key_env = call_params(recipe.defaults, agent, overrides)
        for sample in range(agent.n):
            site = CallSite(
                layer=layer_index + 1,
                agent=agent_index,
                sample=sample,
                agent_name=agent.label,
                model=agent.model,
            )
            specs.append(CallSpec(site=site, params=params, api_key_env=key_env))
    return specs


def layer_calls(layer: Layer, inputs: int) -> int:
    """Calls a layer makes, given how many outputs the previous layer produced."""
    if layer.kind == "aggregate_seq":
        return len(seq_windows(inputs, layer.effective_window))
    return sum(agent.n for agent in layer.agents)


def layer_outputs(layer: Layer) -> int:
    """Outputs a layer passes on when every call succeeds."""
    return 1 if layer.kind == "aggregate_seq" else sum(agent.n for agent in layer.agents)


def calls_by_layer(recipe: Recipe) -> list[int]:
    """Planned calls of each layer when every call succeeds."""
    counts, inputs = [], 0
    for layer in recipe.layers:
        counts.append(layer_calls(layer, inputs))
        inputs = layer_outputs(layer)
    return counts


def count_calls(recipe: Recipe) -> int:
    """Calls one query makes when every call succeeds (3 layers x 6 proposers = 13)."""
    return sum(calls_by_layer(recipe))


@dataclass(frozen=True)
class LayerPlan:
    """What one layer will do when every call succeeds (``moa.plan``)."""

    index: int  # 1-based
    kind: str
    calls: int
    agents: list[str]  # "label" or "label x n"
    sees_previous: bool  # whether its prompts carry the previous layer's outputs
    template: str | None


def plan(recipe: RecipeSource) -> list[LayerPlan]:
    """The layers of a recipe with their planned call counts, without calling anything."""
    loaded = load_recipe(recipe)
    counts = calls_by_layer(loaded)
    plans = []
    for index, (layer, calls) in enumerate(zip(loaded.layers, counts, strict=True)):
        labels = [a.label if a.n == 1 else f"{a.label} x {a.n}" for a in layer.agents]
        template = layer.compiled_template.source if index else None
        plans.append(LayerPlan(index + 1, layer.kind, calls, labels, index > 0, template))
    return plans
