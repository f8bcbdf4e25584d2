"""``moa.run``: run a prompt through a recipe.  The machinery is ``Engine`` (engine.py)."""

from __future__ import annotations

import asyncio
import difflib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from moa._call import Budget, CallCache
from moa._errors import ConfigError
from moa._limits import Limiter
from moa._loader import RecipeSource, load_recipe
from moa._overrides import CALL_SETTINGS, call_overrides, merge
from moa._prompt import normalize_prompt
from moa._provider import Provider, TokenCallback
from moa.events import EventCallback
from moa.recipe import CallParams
from moa.result import LayerResult, MoAResult

from .engine import Engine
from .planning import LayerPlan, plan, run_worst_case

__all__ = ["Engine", "LayerPlan", "plan", "run", "run_sync", "run_worst_case"]


_RUN_OPTIONS = (
    "provider",
    "limiter",
    "on_event",
    "on_token",
    "api_key",
    "reuse",
    "max_cost_usd",
    "allow_unpriced",
    "budget",
    "deadline_s",
    "settings",
    "cache",
)


async def run(
    prompt: str | Sequence[Mapping[str, Any]],
    recipe: RecipeSource,
    *,
    provider: Provider | None = None,
    limiter: Limiter | None = None,
    on_event: EventCallback | None = None,
    on_token: TokenCallback | None = None,
    api_key: str | None = None,
    reuse: Sequence[LayerResult] = (),
    max_cost_usd: float | None = None,
    allow_unpriced: bool = False,
    budget: Budget | None = None,
    deadline_s: float | None = None,
    settings: CallParams | None = None,
    cache: CallCache | str | Path | None = None,
    **overrides: Any,
) -> MoAResult:
    """Run a prompt through a recipe and return the answer with its full trace.

    ``prompt`` is a string or a list of chat messages (``{"role", "content"}``;
    the last one from the user).  ``recipe`` is a ``Recipe`` or anything
    ``load_recipe`` takes.  Keyword ``overrides`` are call settings
    (``temperature=``, ``max_tokens=``, ``top_p=``, ``timeout=``,
    ``api_base=``, ``api_key_env=``, ``extra={...}`` for any other litellm
    argument): they apply to every call, beat the recipe, and are validated
    like recipe fields; any other keyword is a ``TypeError``.  ``settings``
    takes the same as a ``CallParams``.  ``api_key`` is sent with every call
    and never recorded.  ``provider`` replaces litellm (tests use
    ``moa.testing.FakeProvider``); ``limiter`` shares provider limits between
    concurrent runs; ``on_event`` receives progress ``Event``s; ``on_token``
    receives the final answer's text as it streams (an exception raised by
    either stops the run with ``CallbackError``).  ``reuse`` takes the first
    layers' results of an earlier run (``result.layers[:k]``): they are not
    called again, and the next layer aggregates their outputs (re-aggregation).
    ``max_cost_usd`` bounds what the run may spend (or ``budget``: one
    ``Budget`` shared by many runs): the run's worst case is reserved first,
    and a run that might not be paid for does not start.  ``deadline_s``
    bounds its wall time.  ``cache`` (a ``moa.CallCache`` or the path of its
    SQLite file) answers a call asked before from its stored answer, for free,
    and stores every new answer (the n-th identical call of a run has a key of
    its own, so samples stay distinct).

    Raises ``ConfigError`` subclasses before any call for bad input;
    ``QuorumError``, ``BudgetExceeded``, ``DeadlineExceeded`` and
    ``CallbackError`` (each with ``.partial``, the trace so far) when the run
    cannot finish.
    """
    unknown = [name for name in overrides if name not in CALL_SETTINGS]
    if unknown:
        raise TypeError(_unexpected_keyword(unknown[0]))
    if deadline_s is not None and (
        isinstance(deadline_s, bool) or not (isinstance(deadline_s, int | float) and 0 < deadline_s < math.inf)
    ):
        raise ConfigError(f"deadline_s must be a positive number of seconds, got {deadline_s!r}")
    if budget is not None and not isinstance(budget, Budget):
        raise TypeError(f"budget must be a moa.Budget, got {type(budget).__name__}")
    if cache is not None and not isinstance(cache, str | Path) and not callable(getattr(cache, "lookup", None)):
        raise TypeError(f"cache must be a moa.CallCache or the path of one, got {type(cache).__name__}")
    loaded = load_recipe(recipe)
    conversation = normalize_prompt(prompt)
    call_settings = merge(settings, call_overrides(overrides, "moa.run") if overrides else None)
    if provider is None:
        from moa._litellm import LiteLLMProvider

        provider = LiteLLMProvider()
    engine = Engine(
        recipe=loaded,
        provider=provider,
        limiter=limiter or Limiter(loaded.limits),
        overrides=call_settings,
        api_key=api_key,
        on_event=on_event,
        on_token=on_token,
        budget=budget or (Budget(max_cost_usd, allow_unpriced) if max_cost_usd is not None else None),
        cache=CallCache(cache) if isinstance(cache, str | Path) else cache,  # (or any object that acts as one)
    )
    try:
        return await engine.run(conversation, reuse, deadline_s)
    finally:
        if engine.cache is not None and isinstance(cache, str | Path):
            engine.cache.close()  # opened here for this run


def _unexpected_keyword(name: str) -> str:
    known = (*_RUN_OPTIONS, *CALL_SETTINGS)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"run() got an unexpected keyword argument {name!r}{hint}; run options: {', '.join(_RUN_OPTIONS)}; "
        f"call settings: {', '.join(CALL_SETTINGS)} (other litellm arguments go in extra={{...}})"
    )


def run_sync(prompt: str | Sequence[Mapping[str, Any]], recipe: RecipeSource, **kwargs: Any) -> MoAResult:
    """``run`` for scripts and notebooks: works with or without a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run(prompt, recipe, **kwargs))
    # Inside a running loop (Jupyter): run on a private loop in a worker thread.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, run(prompt, recipe, **kwargs)).result()
