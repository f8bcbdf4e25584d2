"""Planned calls: which model, where in the pipeline, with which litellm arguments.

Pure and synchronous: a recipe, a layer index and the run's overrides give the
layer's ``CallSpec``s, in agent order, one per sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from moa._errors import CallSite
from moa._loader import load_recipe
from moa.recipe import Agent, CallParams, Recipe, Tool

DEFAULT_TIMEOUT_S = 120.0
_PARAM_FIELDS = ("temperature", "max_tokens", "top_p", "timeout", "api_base")


@dataclass(frozen=True)
class CallSpec:
    """One planned call: where it sits, which model, and its litellm keyword arguments.

    ``params`` never holds a secret; the key is looked up from ``api_key_env``
    (or passed by the caller) only when the request is sent.  An agent with
    tools has them in ``tools``: its call is a tool loop of up to
    ``max_steps`` model calls running up to ``max_tool_calls`` tools.
    """

    site: CallSite
    params: Mapping[str, Any] = field(default_factory=dict)
    api_key_env: str | None = None
    tools: tuple[ToolPlan, ...] = ()
    max_steps: int = 1
    max_tool_calls: int = 0

    @property
    def model(self) -> str:
        return self.site.model


@dataclass(frozen=True)
class ToolPlan:
    """One tool of a planned call: its recipe entry and, for ``ask``, what it asks (planned like any call)."""

    tool: Tool
    spec: CallSpec | None = None  # `ask` an agent: its call, with the recipe's defaults and the run's overrides
    recipe: Recipe | None = None  # `ask` a recipe: the recipe, loaded

    @property
    def name(self) -> str:
        """The name the model calls it by."""
        return self.tool.called


def every_spec(specs: Iterable[CallSpec]) -> Iterator[CallSpec]:
    """The specs and, after each, the specs of the agents its tools ask (depth first)."""
    for spec in specs:
        yield spec
        yield from every_spec(plan.spec for plan in spec.tools if plan.spec is not None)


def nested_recipes(specs: Iterable[CallSpec]) -> list[Recipe]:
    """Every recipe the tools of these calls (and of the agents they ask) may run, each once."""
    found: dict[int, Recipe] = {}
    for spec in every_spec(specs):
        for plan in spec.tools:
            if plan.recipe is not None:
                found.setdefault(id(plan.recipe), plan.recipe)
    return list(found.values())


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


def plan_agent(recipe: Recipe, site: CallSite, agent: Agent, overrides: CallParams | None = None) -> CallSpec:
    """One call of ``agent`` at ``site``, its tools planned too (an asked agent's call sits at the same site)."""
    params, key_env = call_params(recipe.defaults, agent, overrides)
    if not agent.tools:
        return CallSpec(site=site, params=params, api_key_env=key_env)
    plans = []
    for tool in agent.tools:
        asked = None
        if tool.agent is not None:
            inner = replace(site, agent_name=tool.agent.label, model=tool.agent.model)
            asked = plan_agent(recipe, inner, tool.agent, overrides)
        plans.append(ToolPlan(tool, asked, nested_recipe(tool) if tool.recipe is not None else None))
    return CallSpec(site, params, key_env, tuple(plans), agent.steps, agent.tool_call_limit)


def nested_recipe(tool: Tool) -> Recipe:
    """The recipe an ``ask`` tool runs: loaded with the recipe that names it, or now (a ``Recipe`` built in code)."""
    if tool._loaded is None:
        tool._loaded = load_recipe(str(tool.recipe))
    loaded: Recipe = tool._loaded
    return loaded


def plan_layer(recipe: Recipe, layer_index: int, overrides: CallParams | None = None) -> list[CallSpec]:
    """The calls of one layer (0-based index): one per sample of each agent its stage may call
    (``Layer.call_agents()``), in that order.

    A stage that calls an agent several times (``aggregate_seq`` steps, a
    judge's verdicts, debate rounds) repeats its spec with a step number.
    """
    layer = recipe.layers[layer_index]
    specs = []
    for agent_index, agent in enumerate(layer.call_agents()):
        for sample in range(agent.n):
            site = CallSite(
                layer=layer_index + 1,
                agent=agent_index,
                sample=sample,
                agent_name=agent.label,
                model=agent.model,
            )
            specs.append(plan_agent(recipe, site, agent, overrides))
    return specs
