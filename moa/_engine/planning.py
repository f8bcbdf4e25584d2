"""Plans: what a recipe will do, and what it can cost, without calling anything.

``moa.plan`` and a run's budget reservation read the same numbers: the calls
each layer makes when every call succeeds (counted by the recipe's layers),
and, given a prompt and a pricing provider, each layer's worst case
(estimated by its stage, by the rule of ``moa._call.cost``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from moa._call import Pricing, plan_layer, pricing_of
from moa._loader import RecipeSource, load_recipe
from moa._prompt import Message, normalize_prompt
from moa._stages import EstimateContext, stage_of, writers_of
from moa._tools import QUESTION_CHARS
from moa.recipe import CallParams, Recipe


@dataclass(frozen=True)
class LayerPlan:
    """What one layer will do when every call succeeds (``moa.plan``)."""

    index: int  # 1-based
    kind: str
    calls: int
    agents: list[str]  # every agent it may call: "label" or "label x n"
    sees_previous: bool  # whether it works on the previous layer's outputs
    template: str | None  # its prompt template's file, for stages that have one
    #: The most this layer can cost for the prompt given to ``moa.plan`` (every call at its token
    #: limit); None without a prompt, or when a model has no known price.
    worst_case_usd: float | None = None


def layer_worst_cases(
    pricing: Pricing,
    recipe: Recipe,
    conversation: list[Message],
    overrides: CallParams | None = None,
    *,
    start: int = 0,
    reused_outputs: Sequence[tuple[int, int]] = (),
) -> tuple[list[float | None], list[str]]:
    """Each layer's worst case from ``start`` on (None where a model is unpriced), and the unpriced models.

    ``reused_outputs`` are the (characters, tokens) of the outputs the layers
    before ``start`` passed on (re-aggregation).
    """
    costs, unpriced, _ = _worst_cases(
        pricing, recipe, conversation, overrides, start=start, reused_outputs=reused_outputs
    )
    return costs, unpriced


def _worst_cases(
    pricing: Pricing,
    recipe: Recipe,
    conversation: list[Message],
    overrides: CallParams | None = None,
    *,
    start: int = 0,
    reused_outputs: Sequence[tuple[int, int]] = (),
) -> tuple[list[float | None], list[str], list[tuple[int, int]]]:
    """``layer_worst_cases``, and the (characters, tokens) of what the last layer passes on at its longest."""
    costs: list[float | None] = []
    unpriced: set[str] = set()
    inputs = list(reused_outputs)

    def asked(nested: Recipe) -> tuple[float | None, list[str]]:
        """One run of a recipe an `ask` tool runs, on the longest question the tool takes."""
        question: list[Message] = [{"role": "user", "content": "?" * QUESTION_CHARS}]
        return run_worst_case(pricing, nested, question, overrides)

    def answered(nested: Recipe, on: list[Message]) -> tuple[float | None, list[str], int]:
        """One run of a recipe that answers the conversation (a cascade tier): its worst case, and the most
        tokens its answer can have."""
        costs, missing, outputs = _worst_cases(pricing, nested, on, overrides)
        return (None if missing else sum(c or 0.0 for c in costs)), missing, max((t for _, t in outputs), default=0)

    specs = [plan_layer(recipe, index, overrides) for index in range(len(recipe.layers))]
    writers = writers_of(recipe.layers, specs)
    for index in range(start, len(recipe.layers)):
        layer = recipe.layers[index]
        earlier = [writer for (at, _, _), writer in writers.items() if at <= index]
        ctx = EstimateContext(
            index, layer, conversation, specs[index], pricing, earlier, recipe_cost=asked, answer_cost=answered
        )
        estimate = stage_of(layer).estimate(ctx, inputs)
        costs.append(estimate.cost)
        unpriced.update(estimate.unpriced)
        inputs = estimate.outputs
    return costs, sorted(unpriced), inputs


def run_worst_case(
    pricing: Pricing,
    recipe: Recipe,
    conversation: list[Message],
    overrides: CallParams | None = None,
    *,
    start: int = 0,
    reused_outputs: Sequence[tuple[int, int]] = (),
) -> tuple[float | None, list[str]]:
    """The most one run can cost (None when a model is unpriced), and the unpriced models."""
    costs, unpriced = layer_worst_cases(
        pricing, recipe, conversation, overrides, start=start, reused_outputs=reused_outputs
    )
    return (None if unpriced else sum(c or 0.0 for c in costs)), unpriced


def plan(
    recipe: RecipeSource,
    prompt: str | Sequence[Mapping[str, Any]] | None = None,
    *,
    provider: object | None = None,
    settings: CallParams | None = None,
) -> list[LayerPlan]:
    """The layers of a recipe with their planned calls, and with ``prompt``, their worst-case cost.

    The worst case is the one ``moa.run(..., max_cost_usd=...)`` reserves before
    any call and ``moa eval ... --dry-run`` prints (``provider`` prices the
    calls; litellm's price map by default).  Nothing is called.
    """
    loaded = load_recipe(recipe)
    costs: list[float | None] = [None] * len(loaded.layers)
    if prompt is not None:
        if provider is None:
            from moa._litellm import LiteLLMProvider

            provider = LiteLLMProvider()
        pricing = pricing_of(provider)
        if pricing is not None:
            costs, _ = layer_worst_cases(pricing, loaded, normalize_prompt(prompt), settings)
    plans = []
    for index, (layer, calls) in enumerate(zip(loaded.layers, loaded.calls_by_layer(), strict=True)):
        labels = [a.label if a.n == 1 else f"{a.label} x {a.n}" for a in layer.call_agents()]
        template = next(iter(layer.template_sources()), None)
        plans.append(LayerPlan(index + 1, layer.kind, calls, labels, layer.takes_candidates, template, costs[index]))
    return plans
