"""The call pipeline (limits, budget, events, answer checks, retries around a provider) and what it needs.

Stages make every call through ``Caller.call``; nothing above this package
talks to a provider directly.
"""

from .budget import Budget, BudgetRefused
from .cost import Pricing, embedded, output_tokens, pricing_of, prompt_tokens, total
from .pipeline import Caller, CallFailed, CallRefused
from .retry import Sleep, with_retries
from .spec import DEFAULT_TIMEOUT_S, CallSpec, call_params, plan_layer
from .trace import Tracer, abandoned

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Budget",
    "BudgetRefused",
    "CallFailed",
    "CallRefused",
    "CallSpec",
    "Caller",
    "Pricing",
    "Sleep",
    "Tracer",
    "abandoned",
    "call_params",
    "embedded",
    "output_tokens",
    "plan_layer",
    "pricing_of",
    "prompt_tokens",
    "total",
    "with_retries",
]
