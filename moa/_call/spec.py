"""Planned calls: which model, where in the pipeline, with which litellm arguments.

Pure and synchronous: a recipe, a layer index and the run's overrides give the
layer's ``CallSpec``s, in agent order, one per sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moa._errors import CallSite
from moa.recipe import Agent, CallParams, Recipe

DEFAULT_TIMEOUT_S = 120.0
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
    """The calls of one layer (0-based index): one per sample of each agent its stage may call
    (``Layer.call_agents()``), in that order.

    A stage that calls an agent several times (``aggregate_seq`` steps, a
    judge's verdicts, debate rounds) repeats its spec with a step number.
    """
    layer = recipe.layers[layer_index]
    specs = []
    for agent_index, agent in enumerate(layer.call_agents()):
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
