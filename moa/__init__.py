"""moa: layered Mixture-of-Agents pipelines over any LLM provider.

```python
import moa
recipe = moa.load_recipe("moa-lite")
result = await moa.run("Explain CRDTs to a new engineer.", recipe)
print(result.output, result.usage.total_tokens, result.cost_usd)
```
Only the names below are public; modules starting with ``_`` may change.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moa._call import Budget, CacheError, CallCache
    from moa._engine import LayerPlan, plan, run, run_sync
    from moa._errors import (
        BadResponseError,
        BudgetExceeded,
        CallbackError,
        CallSite,
        CallTimeoutError,
        CascadeError,
        ConfigError,
        DeadlineExceeded,
        ExecutionError,
        MissingAPIKeyError,
        MoAError,
        PromptError,
        ProviderError,
        ProviderUnavailableError,
        QuorumError,
        RateLimitedError,
        RecipeError,
        RequestRejectedError,
        RouteError,
        RunError,
        StageError,
        TemplateError,
        UnpricedModelError,
        VerificationError,
    )
    from moa._limits import Limiter
    from moa._loader import builtin_recipes, load_recipe
    from moa._provider import Completion, Provider, Request
    from moa._stages import Estimate, EstimateContext, Outcome, Stage, StageContext, register_stage
    from moa.events import Event
    from moa.recipe import Agent, CallParams, Layer, ProviderLimit, Recipe, RetryPolicy, SelfMoA, Tool
    from moa.recipe.tools import register_tool
    from moa.result import (
        AgentOutput,
        CallError,
        Candidate,
        Decision,
        LayerResult,
        MoAResult,
        ToolCall,
        Usage,
        Verdict,
    )

__version__ = "0.1.0"

# Names are imported on first use, so `import moa` (and `moa --help`) stays instant.
_EXPORTS = {
    "Agent": "moa.recipe",
    "AgentOutput": "moa.result",
    "BadResponseError": "moa._errors",
    "Budget": "moa._call",
    "CacheError": "moa._call",
    "CallCache": "moa._call",
    "Candidate": "moa.result",
    "Decision": "moa.result",
    "BudgetExceeded": "moa._errors",
    "CallError": "moa.result",
    "CallParams": "moa.recipe",
    "CallbackError": "moa._errors",
    "CallSite": "moa._errors",
    "CallTimeoutError": "moa._errors",
    "Completion": "moa._provider",
    "ConfigError": "moa._errors",
    "CascadeError": "moa._errors",
    "RouteError": "moa._errors",
    "DeadlineExceeded": "moa._errors",
    "Estimate": "moa._stages",
    "EstimateContext": "moa._stages",
    "Event": "moa.events",
    "Layer": "moa.recipe",
    "LayerPlan": "moa._engine",
    "LayerResult": "moa.result",
    "Limiter": "moa._limits",
    "MissingAPIKeyError": "moa._errors",
    "MoAError": "moa._errors",
    "MoAResult": "moa.result",
    "Outcome": "moa._stages",
    "PromptError": "moa._errors",
    "Provider": "moa._provider",
    "ProviderError": "moa._errors",
    "ProviderLimit": "moa.recipe",
    "ProviderUnavailableError": "moa._errors",
    "QuorumError": "moa._errors",
    "RateLimitedError": "moa._errors",
    "Recipe": "moa.recipe",
    "RecipeError": "moa._errors",
    "Request": "moa._provider",
    "RequestRejectedError": "moa._errors",
    "RetryPolicy": "moa.recipe",
    "RunError": "moa._errors",
    "SelfMoA": "moa.recipe",
    "Stage": "moa._stages",
    "StageError": "moa._errors",
    "StageContext": "moa._stages",
    "TemplateError": "moa._errors",
    "Tool": "moa.recipe",
    "ToolCall": "moa.result",
    "UnpricedModelError": "moa._errors",
    "Usage": "moa.result",
    "Verdict": "moa.result",
    "VerificationError": "moa._errors",
    "ExecutionError": "moa._errors",
    "builtin_recipes": "moa._loader",
    "load_recipe": "moa._loader",
    "plan": "moa._engine",
    "register_stage": "moa._stages",
    "register_tool": "moa.recipe.tools",
    "run": "moa._engine",
    "run_sync": "moa._engine",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'moa' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


# Kept literal for linters and IDEs; tests/test_public_api.py checks it, _EXPORTS and the imports agree.
__all__ = [
    "Agent",
    "AgentOutput",
    "BadResponseError",
    "Budget",
    "BudgetExceeded",
    "CacheError",
    "CallCache",
    "CallError",
    "CallParams",
    "CallSite",
    "CallTimeoutError",
    "CallbackError",
    "Candidate",
    "Decision",
    "Completion",
    "CascadeError",
    "ConfigError",
    "DeadlineExceeded",
    "Estimate",
    "EstimateContext",
    "Event",
    "Layer",
    "LayerPlan",
    "LayerResult",
    "Limiter",
    "MissingAPIKeyError",
    "MoAError",
    "MoAResult",
    "Outcome",
    "PromptError",
    "Provider",
    "ProviderError",
    "ProviderLimit",
    "ProviderUnavailableError",
    "QuorumError",
    "RateLimitedError",
    "Recipe",
    "RecipeError",
    "Request",
    "RequestRejectedError",
    "RouteError",
    "RetryPolicy",
    "RunError",
    "SelfMoA",
    "Stage",
    "StageContext",
    "StageError",
    "TemplateError",
    "Tool",
    "ToolCall",
    "UnpricedModelError",
    "Usage",
    "Verdict",
    "VerificationError",
    "ExecutionError",
    "builtin_recipes",
    "load_recipe",
    "plan",
    "register_stage",
    "register_tool",
    "run",
    "run_sync",
]
