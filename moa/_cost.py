"""Cost: the one rule for a call's and a run's worst case.

Budgets (per call and per run), ``--dry-run`` and eval items all use these
functions, so "fits" means the same thing everywhere.

- A prompt counts ~3 characters a token (English averages ~4: this errs high),
  plus 16 characters per message for the chat format; outputs of earlier calls
  embedded in it (an aggregator's references) count their own token counts.
- A call's output counts its ``max_tokens``, or the model's own output limit
  when unset.
- Prices come from the provider (``Pricing``); a model without a price makes
  the worst case unknown (None).

A run's worst case replays the recipe's plan with every call succeeding and
every answer at its token limit.  A call's reservation at run time uses the
real prompt, counting the references it embeds by their real token counts,
so it never exceeds its share of the run's worst case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from moa._plan import CallSpec, Message, build_messages, plan_layer
from moa.recipe import CallParams, Recipe, seq_windows

CHARS_PER_TOKEN = 3
MESSAGE_OVERHEAD_CHARS = 16


@runtime_checkable
class Pricing(Protocol):
    """A provider that can price calls before making them (budgets and ``--dry-run`` need it)."""

    def worst_case_cost(self, model: str, params: Mapping[str, Any], prompt_tokens: int) -> float | None:
        """The most a call can cost with this many prompt tokens; None when the model has no known price."""
        ...

    def max_output_tokens(self, model: str) -> int:
        """The model's own output limit (the worst case of a call without ``max_tokens``)."""
        ...


def pricing_of(provider: object) -> Pricing | None:
    """The provider's pricing, when it can price calls."""
    return provider if isinstance(provider, Pricing) else None


def prompt_tokens(messages: Sequence[Mapping[str, Any]], embedded: Sequence[tuple[int, int]] = ()) -> int:
    """Estimated prompt tokens of ``messages``; ``embedded`` holds (characters, tokens) of outputs quoted in them."""
    chars = sum(len(str(m.get("content", ""))) + MESSAGE_OVERHEAD_CHARS for m in messages)
    chars -= sum(c for c, _ in embedded)
    return max(0, chars) // CHARS_PER_TOKEN + 1 + sum(t for _, t in embedded)


def output_tokens(pricing: Pricing, model: str, params: Mapping[str, Any]) -> int:
    """The most tokens one answer can have: ``max_tokens``, else the model's own limit."""
    limit = params.get("max_tokens")
    return int(limit) if limit else pricing.max_output_tokens(model)


def run_worst_case(
    pricing: Pricing,
    recipe: Recipe,
    conversation: Sequence[Message],
    overrides: CallParams | None = None,
    *,
    start: int = 0,
    reused_outputs: Sequence[tuple[int, int]] = (),
) -> tuple[float | None, list[str]]:
    """The most one run can cost, and the models without a known price.

    ``start`` skips layers reused from an earlier run; ``reused_outputs`` are
    then the (characters, tokens) of the outputs those layers passed on.
    """
    total = 0.0
    unpriced: list[str] = []
    previous: list[tuple[int, int]] = list(reused_outputs)  # (chars, tokens) of the outputs passed on

    def add(spec: CallSpec, messages: list[Message], embedded: Sequence[tuple[int, int]]) -> int:
        nonlocal total
        cost = pricing.worst_case_cost(spec.model, spec.params, prompt_tokens(messages, embedded))
        if cost is None:
            unpriced.append(spec.model)
        else:
            total += cost
        return output_tokens(pricing, spec.model, spec.params)

    for index in range(start, len(recipe.layers)):
        layer = recipe.layers[index]
        specs = plan_layer(recipe, index, overrides)
        outputs: list[tuple[int, int]] = []
        if layer.kind == "propose":
            for spec in specs:
                agent = layer.agents[spec.site.agent]
                tokens = add(spec, build_messages(conversation, system=agent.system), ())
                outputs.append((0, tokens))
        elif layer.kind == "aggregate":
            block = layer.compiled_template.render(responses=[""] * len(previous), layer=index + 1)
            for spec in specs:
                agent = layer.agents[spec.site.agent]
                messages = build_messages(conversation, system=agent.system, references=block)
                outputs.append((0, add(spec, messages, [(0, t) for _, t in previous])))
        else:  # aggregate_seq: each step sees the synthesis so far and the next inputs
            spec, agent = specs[0], layer.agents[0]
            synthesis: tuple[int, int] | None = None
            for step, (first, last) in enumerate(seq_windows(len(previous), layer.effective_window), start=1):
                window = previous[first:last] if synthesis is None else [synthesis, *previous[first:last]]
                block = layer.compiled_template.render(responses=[""] * len(window), layer=index + 1, step=step)
                messages = build_messages(conversation, system=agent.system, references=block)
                synthesis = (0, add(spec, messages, [(0, t) for _, t in window]))
            outputs = [synthesis] if synthesis else []
        previous = outputs
    return (None if unpriced else total), sorted(set(unpriced))
