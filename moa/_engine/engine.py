"""The engine: runs a recipe's stages in order.

It knows no stage kind: each layer runs as the ``moa._stages`` stage of its
kind, every call going through the call pipeline (``moa._call``).  The engine
owns what spans the whole run: the API keys (read before any call), the
provider's preflight, the run's budget reservation (its whole worst case,
before any call), the deadline, and the partial trace when a run stops early.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from moa import _secrets
from moa._call import (
    Budget,
    BudgetRefused,
    CacheError,
    CallCache,
    Caller,
    CallFailed,
    CallRefused,
    CallSpec,
    Occurrences,
    Sleep,
    Tracer,
    embedded,
    every_spec,
    nested_recipes,
    plan_layer,
    pricing_of,
)
from moa._errors import (
    BudgetExceeded,
    CallbackError,
    CascadeError,
    ConfigError,
    DeadlineExceeded,
    MissingAPIKeyError,
    QuorumError,
    RouteError,
    StageError,
    UnpricedModelError,
    VerificationError,
)
from moa._limits import Limiter
from moa._prompt import Message
from moa._provider import Preflight, Provider, TokenCallback
from moa._stages import Outcome, StageContext, stage_of, writers_of
from moa._tools import ToolRuntime, tool_runtime
from moa.events import EventCallback
from moa.recipe import CallParams, Recipe
from moa.result import AgentOutput, Candidate, Decision, LayerResult, MoAResult, Usage, unpriced_models

from .planning import run_worst_case


@dataclass
class Engine:
    """One configured pipeline run.  Use ``moa.run``; this is the machinery behind it."""

    recipe: Recipe
    provider: Provider
    limiter: Limiter
    overrides: CallParams | None = None
    api_key: str | None = field(default=None, repr=False)
    on_event: EventCallback | None = None
    on_token: TokenCallback | None = None
    sleep: Sleep | None = None
    budget: Budget | None = None
    cache: CallCache | None = None  # answers of earlier calls (``moa._call.cache``)
    #: Identical requests counted across this run and the recipes it runs (each n-th one has its own cache key).
    occurrences: Occurrences = field(default_factory=Occurrences)

    def __post_init__(self) -> None:
        _secrets.register(self.api_key)
        self._pricing = pricing_of(self.provider)
        # Planned once: key checks, preflight and the stages all read the same specs.
        self._specs = [plan_layer(self.recipe, i, self.overrides) for i in range(len(self.recipe.layers))]
        self._writers = writers_of(self.recipe.layers, self._specs)
        self._keys = self._resolve_keys()
        # The recipes `ask` tools may run, checked now (their keys too): each run of one is an Engine of its own.
        answering = [a._loaded for layer in self.recipe.layers for _, a in layer.answerers() if a._loaded is not None]
        self._asked = [self._nested(recipe) for recipe in [*nested_recipes(self.calls()), *answering]]
        self._layers: list[LayerResult] = []  # finished layers, for partial traces
        self._tracer = Tracer(self.on_event, record=self._record)
        self._stage: StageContext | None = None  # the stage in progress

    def _resolve_keys(self) -> dict[str, str]:
        """Read every ``api_key_env`` now, so a missing one fails before any call."""
        if self.api_key is not None:
            return {}
        needed: dict[str, list[str]] = {}
        for spec in every_spec(spec for specs in self._specs for spec in specs):
            if spec.api_key_env:
                needed.setdefault(spec.api_key_env, []).append(spec.model)
        keys = {}
        for variable, models in needed.items():
            value = os.environ.get(variable)
            if not value:
                raise MissingAPIKeyError(variable, models)
            _secrets.register(value)
            keys[variable] = value
        return keys

    def _record(self, output: AgentOutput) -> None:
        if self._stage is not None:
            self._stage.recorded.append(output)

    def calls(self, start: int = 0) -> list[CallSpec]:
        """Every planned call from layer ``start`` on, and the calls of the agents their tools ask."""
        return list(every_spec(spec for specs in self._specs[start:] for spec in specs))

    def _nested(self, recipe: Recipe) -> Engine:
        """An engine for one run of a recipe an ``ask`` tool runs: same provider, limits, keys and settings;
        its budget is this run's (set when it starts); no events of its own (its calls are in the tool call)."""
        return Engine(recipe, self.provider, self.limiter, self.overrides, self.api_key, sleep=self.sleep,
                      cache=self.cache, occurrences=self.occurrences)  # fmt: skip

    async def _ask(self, recipe: Recipe, question: str | list[Message]) -> MoAResult:
        """One run of a recipe an `ask` tool asks (``question``) or a stage's tier answers with (a conversation)."""
        nested = self._nested(recipe)
        nested.budget = self.budget
        conversation = [{"role": "user", "content": question}] if isinstance(question, str) else question
        return await nested.run(conversation)

    def tool_runtime(self, caller: Caller) -> ToolRuntime:
        """What this run's tool calls need: a quiet copy of ``caller``, and this engine to run asked recipes."""
        return tool_runtime(caller, self._ask)

    def preflight(self, start: int = 0) -> None:
        """Let the provider refuse unreachable models (missing key or extra) before any call; open the cache."""
        if self.cache is not None:
            self.cache.open()
        calls = self.calls(start)
        if isinstance(self.provider, Preflight):
            has_key = self.api_key is not None
            # An agent with tools says so (`tools` in its params): its provider must call functions.
            planned = [(s.model, {**s.params, "tools": True} if s.tools else s.params, s.api_key_env) for s in calls]
            self.provider.preflight([(model, params, has_key or env is not None) for model, params, env in planned])
        if self.budget is not None and not self.budget.allow_unpriced:
            pricing = self._pricing
            unpriced = [
                s.model for s in calls if pricing is None or pricing.worst_case_cost(s.model, s.params, 0) is None
            ]
            if unpriced:
                raise UnpricedModelError(unpriced)
        for asked in self._asked:
            asked.budget = self.budget
            asked.preflight()

    def worst_case(self, conversation: list[Message], reuse: Sequence[LayerResult] = ()) -> float | None:
        """The most this run can cost (every call at its limit); None when a model has no known price."""
        if self._pricing is None:
            return None
        passed = reuse[-1].passed_on() if reuse else []
        reused = embedded((c.text, c.completion_tokens) for c in passed)
        total, _ = run_worst_case(
            self._pricing, self.recipe, conversation, self.overrides, start=len(reuse), reused_outputs=reused
        )
        return total

    async def run(
        self, conversation: list[Message], reuse: Sequence[LayerResult] = (), deadline_s: float | None = None
    ) -> MoAResult:
        self.preflight(start=len(reuse))
        started = time.perf_counter()
        outer = self.budget
        if outer is not None:
            worst = self.worst_case(conversation, reuse)
            try:
                self.budget = outer.child(worst)
            except BudgetRefused:
                error = BudgetExceeded(
                    f"not started: this run's worst case (${worst or 0:.4f}: every call at its max_tokens) does "
                    f"not fit the budget (${outer.remaining_usd:.4f} left of ${outer.max_cost_usd:g}); "
                    "raise the budget or lower max_tokens"
                )
                error.partial = self._result(conversation, [], started, output="")
                raise error from None
        caller = Caller(
            self.provider,
            self.limiter,
            self._tracer,
            self.recipe.retry,
            pricing=self._pricing,
            budget=self.budget,
            keys=self._keys,
            api_key=self.api_key,
            sleep=self.sleep,
            cache=self.cache,
            occurrences=self.occurrences,
        )
        try:
            async with asyncio.timeout(deadline_s):
                return await self._run(caller, conversation, reuse, started)
        except TimeoutError as exc:
            late = DeadlineExceeded(f"the run's deadline of {deadline_s:g} s passed; calls in flight were cancelled")
            late.partial = self._result(conversation, self._layers, started, output="")
            raise late from exc
        except CallbackError as exc:
            if exc.partial is None:  # raised outside a layer (its start or end event)
                exc.partial = self._result(conversation, self._layers, started, output="")
            raise
        finally:
            if outer is not None and self.budget is not outer and self.budget is not None:
                self.budget.close()
                self.budget = outer

    async def _run(
        self, caller: Caller, conversation: list[Message], reuse: Sequence[LayerResult], started: float
    ) -> MoAResult:
        layers: list[LayerResult] = []
        self._layers = layers  # kept current for partial traces
        last = len(self.recipe.layers) - 1
        if len(reuse) > last:
            raise ConfigError(f"can reuse at most {last} layers of this recipe (the last must run), got {len(reuse)}")
        writers = dict(self._writers)  # who wrote what, shared by this run's stages (a repair adds its site)
        tools = self.tool_runtime(caller)
        inputs: list[Candidate] = []
        for cached in reuse:  # layers answered before: what they passed on feeds the next layer, no calls
            layers.append(cached)
            inputs = cached.passed_on()
        for index in range(len(reuse), last + 1):
            layer = self.recipe.layers[index]
            on_token = self.on_token if index == last else None
            ctx = StageContext(
                index, layer, conversation, self._specs[index], caller, on_token, writers=writers, tools=tools
            )
            self._stage = ctx
            self._tracer.layer_started(index + 1)
            layer_started = time.perf_counter()
            try:
                outcome = await self._stage_run(ctx, inputs)
            except (QuorumError, BudgetExceeded, CallbackError, VerificationError, StageError, CascadeError,
                    RouteError) as exc:  # fmt: skip
                recorded = exc.outputs if isinstance(exc, QuorumError) else ctx.recorded
                considered = exc.considered if isinstance(exc, VerificationError) else ()
                decisions = getattr(exc, "decisions", ())  # a cascade's or router's choices before it stopped
                layers.append(_layer(index, layer.kind, recorded, layer_started, considered=considered,
                                     decisions=decisions))  # fmt: skip
                exc.partial = self._result(conversation, layers, started, output="")
                raise
            except asyncio.CancelledError:  # the run's deadline, or the caller cancelled
                layers.append(_layer(index, layer.kind, ctx.recorded, layer_started))
                raise
            finally:
                self._stage = None
            finished = _layer(index, layer.kind, ctx.recorded, layer_started, outcome.candidates, outcome.considered,
                              outcome.decisions)  # fmt: skip
            layers.append(finished)
            self._tracer.layer_finished(index + 1, layers[-1])
            inputs = outcome.candidates
        return self._result(conversation, layers, started, output=inputs[0].text)

    async def _stage_run(self, ctx: StageContext, inputs: list[Candidate]) -> Outcome:
        """The stage's outcome; a stage that raises something unexpected, or passes nothing on, is a
        ``StageError`` (with the partial trace), never a bare exception that loses the paid calls."""
        kind = ctx.layer.kind
        try:
            outcome = await stage_of(ctx.layer).run(ctx, inputs)
        except (QuorumError, BudgetExceeded, CallbackError, VerificationError, StageError, CascadeError, RouteError,
                CacheError, asyncio.CancelledError):  # fmt: skip
            raise
        except CallRefused as exc:  # a stage's own ctx.call, not caught: the budget said no
            raise BudgetExceeded(f"layer {ctx.index + 1}: {exc}") from None
        except CallFailed as exc:
            problem = f"a call failed and the stage did not handle it: {type(exc.cause).__name__}: {exc.cause}"
            raise StageError(ctx.index + 1, kind, problem) from exc.cause
        except Exception as exc:
            raise StageError(ctx.index + 1, kind, f"the stage raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(outcome, Outcome) or not outcome.candidates:
            problem = "passed on no candidate" if isinstance(outcome, Outcome) else f"returned {type(outcome).__name__}"
            raise StageError(ctx.index + 1, kind, f"the stage {problem}; it must return an Outcome with candidates")
        return outcome

    def _result(self, conversation: list[Message], layers: list[LayerResult], started: float, output: str) -> MoAResult:
        calls = [call for layer in layers for call in layer.outputs]
        usage = sum((call.usage for call in calls), Usage())  # an agent's usage holds its tools' calls
        # Failed calls count too: an attempt that returned (an empty answer) was paid for.
        unpriced = sorted(unpriced_models(calls))
        cost = None if unpriced else sum(call.cost_usd or 0.0 for call in calls)
        return MoAResult.model_construct(
            recipe=self.recipe.name,
            prompt=conversation,
            output=output,
            layers=layers,
            usage=usage,
            cost_usd=cost,
            unpriced_models=unpriced,
            latency_s=time.perf_counter() - started,
        )


def _layer(
    index: int,
    kind: str,
    outputs: Sequence[AgentOutput],
    started: float,
    candidates: Sequence[Candidate] = (),
    considered: Sequence[Candidate] = (),
    decisions: Sequence[Decision] = (),
) -> LayerResult:
    return LayerResult.model_construct(  # built from checked values: no re-validation
        index=index + 1,
        kind=kind,
        outputs=list(outputs),
        latency_s=time.perf_counter() - started,
        candidates=list(candidates),
        considered=list(considered),
        decisions=list(decisions),
    )
