"""moa: layered Mixture-of-Agents pipelines over any LLM provider.

```python
import moa
recipe = moa.load_recipe("moa-lite")
result = await moa.run("Explain CRDTs to a new engineer.", recipe)
print(result.output, result.usage.total_tokens, result.cost_usd)
```
Only the names below are public; modules starting with ``_`` may change.
"""

from moa._engine import run, run_sync
from moa._errors import (
    BadResponseError,
    CallSite,
    CallTimeoutError,
    ConfigError,
    MissingAPIKeyError,
    MoAError,
    PromptError,
    ProviderError,
    ProviderUnavailableError,
    QuorumError,
    RateLimitedError,
    RecipeError,
    RequestRejectedError,
    RunError,
    TemplateError,
)
from moa._limits import Limiter
from moa._loader import builtin_recipes, load_recipe
from moa._plan import LayerPlan, plan
from moa._provider import Completion, Provider, Request
from moa.events import Event
from moa.recipe import Agent, CallParams, Layer, ProviderLimit, Recipe, RetryPolicy, SelfMoA
from moa.result import AgentOutput, CallError, LayerResult, MoAResult, Usage

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentOutput",
    "BadResponseError",
    "CallError",
    "CallParams",
    "CallSite",
    "CallTimeoutError",
    "Completion",
    "ConfigError",
    "Event",
    "Layer",
    "LayerPlan",
    "LayerResult",
    "Limiter",
    "MissingAPIKeyError",
    "MoAError",
    "MoAResult",
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
    "RetryPolicy",
    "RunError",
    "SelfMoA",
    "TemplateError",
    "Usage",
    "builtin_recipes",
    "load_recipe",
    "plan",
    "run",
    "run_sync",
]
