"""The call pipeline (limits, budget, events, answer checks, retries around a provider) and what it needs.

Stages make every call through ``Caller.call``; nothing above this package
talks to a provider directly.
"""

from .budget import Budget, BudgetRefused
from .cache import CacheError, CallCache, Occurrences
from .cost import Pricing, embedded, output_tokens, pricing_of, prompt_tokens, tools_tokens, total
from .pipeline import Caller, CallFailed, CallRefused
from .retry import Sleep, with_retries
from .spec import (
    DEFAULT_TIMEOUT_S,
    CallSpec,
    ToolPlan,
    call_params,
    every_spec,
    nested_recipe,
    nested_recipes,
    plan_layer,
)
from .trace import CallRecord, Tracer, abandoned

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Budget",
    "BudgetRefused",
    "CacheError",
    "CallCache",
    "Occurrences",
    "CallFailed",
    "CallRefused",
    "CallRecord",
    "CallSpec",
    "Caller",
    "Pricing",
    "Sleep",
    "ToolPlan",
    "Tracer",
    "abandoned",
    "call_params",
    "embedded",
    "every_spec",
    "nested_recipe",
    "nested_recipes",
    "output_tokens",
    "plan_layer",
    "pricing_of",
    "prompt_tokens",
    "tools_tokens",
    "total",
    "with_retries",
]
