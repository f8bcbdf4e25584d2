"""The worst case of an agent with tools: every step at its limit, every tool call at its longest result.

Each of the ``max_steps`` model calls counts the agent's prompt, the tool
definitions, and everything earlier steps can have added: each step's
assistant message (what the model wrote: at most its ``max_tokens``) and up to
``max_tool_calls`` results of at most ``RESULT_CHARS`` characters (a character
is at most a token, by the estimate's own rule), with their ids and frames.
Each ``ask`` call counts what it asks at its most (a question of
``QUESTION_CHARS`` characters), up to ``max_tool_calls`` times.  The real
calls reserve their real prompts by the same rule (``moa._call.cost``), so
this bounds them: a budget that holds the worst case never refuses a step.
"""

from __future__ import annotations

from collections.abc import Callable

from moa._call import CallSpec, Pricing, output_tokens, prompt_tokens, tools_tokens
from moa._call.cost import MESSAGE_OVERHEAD_CHARS, TOOL_CALL_OVERHEAD_CHARS
from moa._prompt import build_messages
from moa.recipe import Recipe

from .calls import QUESTION_CHARS, RESULT_CHARS, definitions

#: The longest id of a function call the loop keeps (longer ones are replaced by its own).
ID_CHARS = 64
#: The longest note the loop adds when it does not run some calls of a step.
NOTE_CHARS = 200
#: What one tool call adds to later prompts beside its result: its id twice (the call and the result), the call's
#: frame, the separators, the result message's overhead.
PER_CALL_CHARS = 2 * (ID_CHARS + 1) + TOOL_CALL_OVERHEAD_CHARS + 4 + MESSAGE_OVERHEAD_CHARS
#: What one step's assistant message adds beside what the model wrote in it.
PER_STEP_CHARS = MESSAGE_OVERHEAD_CHARS + 1

#: The worst case of one run of a recipe an ``ask`` tool may run: its cost (None: unpriced) and unpriced models.
RecipeCost = Callable[[Recipe], tuple[float | None, list[str]]]


def loop_worst_case(
    pricing: Pricing, spec: CallSpec, base_tokens: int, recipe_cost: RecipeCost | None
) -> tuple[float | None, list[str]]:
    """The most one answer of ``spec`` (an agent with tools) can cost, and the unpriced models on the way.

    ``base_tokens`` is its prompt's estimate (``prompt_tokens`` of the messages it is sent).
    """
    written = output_tokens(pricing, spec.model, spec.params) + PER_STEP_CHARS
    offered = tools_tokens({"tools": definitions(spec)})
    results = spec.max_tool_calls * (RESULT_CHARS + PER_CALL_CHARS) + NOTE_CHARS
    costs: list[float] = []
    unpriced: list[str] = []
    for number in range(1, spec.max_steps + 1):
        tokens = base_tokens + offered + ((number - 1) * written + results if number > 1 else 0)
        cost = pricing.worst_case_cost(spec.model, spec.params, tokens)
        if cost is None:
            unpriced.append(spec.model)
        else:
            costs.append(cost)
    asks: list[float] = []
    for plan in spec.tools:
        if plan.spec is not None:
            agent = plan.tool.agent
            messages = build_messages([{"role": "user", "content": "?" * QUESTION_CHARS}],
                                      system=agent.system if agent else None)  # fmt: skip
            cost, missing = answer_worst_case(pricing, plan.spec, prompt_tokens(messages), recipe_cost)
        elif plan.recipe is not None:
            cost, missing = recipe_cost(plan.recipe) if recipe_cost is not None else (None, [plan.recipe.name])
        else:
            continue
        unpriced += missing
        if cost is not None:
            asks.append(cost)
    if asks:
        costs.append(max(asks) * spec.max_tool_calls)
    return (None if unpriced else sum(costs)), unpriced


def answer_worst_case(
    pricing: Pricing, spec: CallSpec, base_tokens: int, recipe_cost: RecipeCost | None
) -> tuple[float | None, list[str]]:
    """The most one answer of ``spec`` can cost: one call, or its tool loop."""
    if spec.tools:
        return loop_worst_case(pricing, spec, base_tokens, recipe_cost)
    cost = pricing.worst_case_cost(spec.model, spec.params, base_tokens)
    return cost, [] if cost is not None else [spec.model]
