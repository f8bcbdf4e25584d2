"""The engine: runs a recipe's layers in order, each layer's calls concurrently.

Per call: limits -> provider, wrapped in retries; every outcome (text or
error) is recorded.  Per layer: ``settle`` with the layer's quorum; a layer
that misses it raises ``QuorumError`` carrying the partial trace.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moa._budget import Budget, BudgetRefused
from moa._errors import (
    BudgetExceeded,
    CallSite,
    ConfigError,
    DeadlineExceeded,
    MissingAPIKeyError,
    ProviderError,
    QuorumError,
    UnpricedModelError,
)
from moa._fanout import Abandoned, settle
from moa._limits import Limiter
from moa._loader import RecipeSource, load_recipe
from moa._plan import CallSpec, Message, build_messages, normalize_prompt, plan_layer, seq_windows
from moa._provider import Provider, Request, TokenCallback
from moa._retry import Sleep, with_retries
from moa.events import Event, EventCallback
from moa.recipe import Layer, Recipe
from moa.result import AgentOutput, CallError, LayerResult, MoAResult, Usage


class _CallFailed(Exception):
    """Internal: a call failed; carries its recorded output and the cause."""

    def __init__(self, output: AgentOutput, cause: ProviderError) -> None:
        super().__init__(str(cause))
        self.output = output
        self.cause = cause


class _CallRefused(Exception):
    """Internal: the budget refused to start a call; carries its recorded output."""

    def __init__(self, output: AgentOutput) -> None:
        super().__init__(output.error.message if output.error else "refused")
        self.output = output


def _abandons(exc: Exception) -> bool:
    return not isinstance(exc, _CallRefused)  # calls in flight finish when the budget runs out


@dataclass
class Engine:
    """One configured pipeline run.  Use ``moa.run``; this is the machinery behind it."""

    recipe: Recipe
    provider: Provider
    limiter: Limiter
    overrides: Mapping[str, Any] = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)
    on_event: EventCallback | None = None
    on_token: TokenCallback | None = None
    sleep: Sleep | None = None
    budget: Budget | None = None

    def __post_init__(self) -> None:
        # Planned once: key checks, preflight and the layers all read the same specs.
        self._specs = [plan_layer(self.recipe, i, self.overrides) for i in range(len(self.recipe.layers))]
        self._keys = self._resolve_keys()
        self._layers: list[LayerResult] = []  # finished layers, for partial traces
        self._current: list[AgentOutput] = []  # finished calls of the layer in progress

    # -------------------------------------------------------------- set-up

    def _resolve_keys(self) -> dict[str, str]:
        """Read every ``api_key_env`` now, so a missing one fails before any call."""
        if self.api_key is not None:
            return {}
        needed: dict[str, list[str]] = {}
        for index in range(len(self.recipe.layers)):
            for spec in self._specs[index]:
                if spec.api_key_env:
                    needed.setdefault(spec.api_key_env, []).append(spec.model)
        keys = {}
        for variable, models in needed.items():
            value = os.environ.get(variable)
            if not value:
                raise MissingAPIKeyError(variable, models)
            keys[variable] = value
        return keys

    def _emit(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)

    # ---------------------------------------------------------------- run

    def preflight(self, start: int = 0) -> None:
        """Let the provider refuse unreachable models (missing key or extra) before any call."""
        check = getattr(self.provider, "preflight", lambda calls: None)
        calls = []
        for index in range(start, len(self.recipe.layers)):
            for spec in self._specs[index]:
                has_key = self.api_key is not None or spec.api_key_env is not None
                calls.append((spec.model, spec.params, has_key))
        check(calls)
        price = getattr(self.provider, "worst_case_cost", None)
        if self.budget is not None and not self.budget.allow_unpriced:
            probes = [Request(model=m, messages=[{"role": "user", "content": ""}], params=p) for m, p, _ in calls]
            unpriced = [r.model for r in probes if price is None or price(r) is None]
            if unpriced:
                raise UnpricedModelError(unpriced)

    async def run(
        self, conversation: list[Message], reuse: Sequence[LayerResult] = (), deadline_s: float | None = None
    ) -> MoAResult:
        self.preflight(start=len(reuse))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(deadline_s):
                return await self._run(conversation, reuse, started)
        except TimeoutError as exc:
            error = DeadlineExceeded(f"the run's deadline of {deadline_s:g} s passed; calls in flight were cancelled")
            error.partial = self._result(conversation, self._layers, started, output="")
            raise error from exc

    async def _run(self, conversation: list[Message], reuse: Sequence[LayerResult], started: float) -> MoAResult:
        layers: list[LayerResult] = []
        references: list[str] = []
        last = len(self.recipe.layers) - 1
        if len(reuse) > last:
            raise ConfigError(f"can reuse at most {last} layers of this recipe (the last must run), got {len(reuse)}")
        for cached in reuse:  # layers answered before: their outputs feed the next layer, no calls
            layers.append(cached)
            texts = [output.text for output in cached.outputs if output.ok and output.text is not None]
            references = texts[-1:] if cached.kind == "aggregate_seq" else texts
        for index, layer in enumerate(self.recipe.layers):
            if index < len(reuse):
                continue
            self._emit(Event("layer_started", layer=index + 1))
            layer_started = time.perf_counter()
            on_token = self.on_token if index == last else None
            self._current = []
            try:
                if layer.kind == "aggregate_seq":
                    outputs = await self._sequential(index, layer, conversation, references, on_token)
                else:
                    outputs = await self._parallel(index, layer, conversation, references, on_token)
            except (QuorumError, BudgetExceeded) as exc:
                recorded = exc.outputs if isinstance(exc, QuorumError) else self._current
                layers.append(self._layer(index, layer, recorded, layer_started))
                exc.partial = self._result(conversation, layers, started, output="")
                raise
            except asyncio.CancelledError:  # the run's deadline, or the caller cancelled
                layers.append(self._layer(index, layer, self._current, layer_started))
                raise
            finally:
                self._layers = layers
            layers.append(self._layer(index, layer, outputs, layer_started))
            self._emit(Event("layer_finished", layer=index + 1))
            texts = [output.text for output in outputs if output.ok and output.text is not None]
            references = texts[-1:] if layer.kind == "aggregate_seq" else texts
        return self._result(conversation, layers, started, output=references[0])

    def _layer(self, index: int, layer: Layer, outputs: Sequence[AgentOutput], started: float) -> LayerResult:
        return LayerResult.model_construct(  # built from checked values: no re-validation
            index=index + 1,
            kind=layer.kind,
            outputs=list(outputs),
            latency_s=time.perf_counter() - started,
        )

    def _result(self, conversation: list[Message], layers: list[LayerResult], started: float, output: str) -> MoAResult:
        calls = [call for layer in layers for call in layer.outputs]
        usage = sum((call.usage for call in calls), Usage())
        priced = [call for call in calls if call.ok]
        unpriced = sorted({call.model for call in priced if call.cost_usd is None})
        cost = None if unpriced else sum(call.cost_usd or 0.0 for call in priced)
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

    # -------------------------------------------------------------- layers

    async def _parallel(
        self,
        index: int,
        layer: Layer,
        conversation: list[Message],
        references: list[str],
        on_token: TokenCallback | None,
    ) -> list[AgentOutput]:
        block = layer.compiled_template.render(responses=references, layer=index + 1) if index else None
        specs = self._specs[index]
        factories: list[Callable[[], Awaitable[AgentOutput]]] = []
        for spec in specs:
            agent = layer.agents[spec.site.agent]
            messages = build_messages(conversation, system=agent.system, references=block)
            factories.append(_bind(self._call, spec, messages, 0, on_token))
        outcomes = await settle(
            factories, min_success=layer.min_success, straggler_s=layer.straggler_s, abandons=_abandons
        )
        outputs = [self._outcome(spec, outcome) for spec, outcome in zip(specs, outcomes, strict=True)]
        self._current = outputs
        need = layer.min_success or len(specs)
        succeeded = sum(output.ok for output in outputs)
        refused = [o for o in outcomes if isinstance(o, _CallRefused)]
        if refused:
            raise BudgetExceeded(f"layer {index + 1}: {refused[0]}; {len(refused)} call(s) not started")
        if succeeded < need:
            causes = [o.cause for o in outcomes if isinstance(o, _CallFailed)]
            raise QuorumError(index + 1, need, succeeded, len(specs), causes, outputs)
        return outputs

    async def _sequential(
        self,
        index: int,
        layer: Layer,
        conversation: list[Message],
        references: list[str],
        on_token: TokenCallback | None,
    ) -> list[AgentOutput]:
        """Self-MoA-Seq: fold the inputs in ``window`` at a time; each step sees the synthesis so far."""
        spec = self._specs[index][0]
        agent = layer.agents[0]
        windows = seq_windows(len(references), layer.effective_window)
        outputs: list[AgentOutput] = []
        synthesis: str | None = None
        for step, (start, end) in enumerate(windows, start=1):
            responses = references[start:end] if synthesis is None else [synthesis, *references[start:end]]
            block = layer.compiled_template.render(responses=responses, layer=index + 1, step=step)
            messages = build_messages(conversation, system=agent.system, references=block)
            final_step = step == len(windows)
            try:
                output = await self._call(spec, messages, step, on_token if final_step else None)
            except _CallRefused as refused:
                self._current = [*outputs, refused.output]
                raise BudgetExceeded(f"layer {index + 1}, step {step}: {refused}") from None
            except _CallFailed as failed:
                outputs.append(failed.output)
                raise QuorumError(
                    index + 1, len(windows), step - 1, len(windows), [failed.cause], outputs
                ) from failed.cause
            outputs.append(output)
            self._current = list(outputs)
            synthesis = output.text
        return outputs

    def _outcome(self, spec: CallSpec, outcome: AgentOutput | Exception) -> AgentOutput:
        if isinstance(outcome, AgentOutput):
            return outcome
        if isinstance(outcome, _CallFailed | _CallRefused):
            return outcome.output
        if isinstance(outcome, Abandoned):
            return _output(spec, [], 0, error=CallError(type="Abandoned", message=str(outcome)))
        raise outcome  # a bug, not a provider failure: let it surface

    # --------------------------------------------------------------- calls

    async def _call(
        self, spec: CallSpec, messages: list[Message], step: int, on_token: TokenCallback | None
    ) -> AgentOutput:
        site = spec.site
        key = self.api_key if self.api_key is not None else self._keys.get(spec.api_key_env or "")
        request = Request(model=spec.model, messages=messages, params=spec.params, api_key=key)
        gate = self.limiter.gate(spec.model)
        attempts = 0
        started = 0.0  # when the first attempt got past the limits: queueing is not latency

        price = getattr(self.provider, "worst_case_cost", None)

        async def attempt() -> Any:
            nonlocal attempts, started
            attempts += 1
            async with gate.slot():  # queued until the provider's limits let it go
                held = self.budget.reserve(price(request) if price else None) if self.budget else 0.0
                started = started or time.perf_counter()
                self._emit(Event("call_started", layer=site.layer, site=site, step=step, attempt=attempts))
                try:
                    completion = await self.provider.complete(request, on_token)
                except BaseException:
                    if self.budget:
                        self.budget.settle(held, 0.0)
                    raise
                if self.budget:
                    self.budget.settle(held, completion.cost_usd)
                return completion

        def elapsed() -> float:
            return time.perf_counter() - started if started else 0.0

        def on_retry(number: int, error: ProviderError, delay: float) -> None:
            error.site = site
            self._emit(
                Event(
                    "call_retried",
                    layer=site.layer,
                    site=site,
                    step=step,
                    attempt=number,
                    error=error,
                    delay_s=delay,
                )
            )

        try:
            completion, attempts = await with_retries(attempt, self.recipe.retry, on_retry=on_retry, sleep=self.sleep)
        except BudgetRefused as exc:
            error = CallError(type="BudgetExceeded", message=str(exc))
            output = _output(spec, messages, attempts - 1, step=step, error=error, latency=elapsed())
            self._emit(Event("call_failed", layer=site.layer, site=site, step=step, attempt=attempts, output=output))
            raise _CallRefused(output) from None
        except ProviderError as exc:
            exc.site = site
            error = CallError(
                type=type(exc).__name__,
                message=str(exc),
                status_code=exc.status_code,
                transient=exc.transient,
            )
            output = _output(
                spec,
                messages,
                exc.attempts,
                step=step,
                error=error,
                latency=elapsed(),
            )
            self._emit(
                Event("call_failed", layer=site.layer, site=site, attempt=exc.attempts, error=exc, output=output)
            )
            self._current.append(output)
            raise _CallFailed(output, exc) from exc
        output = _output(
            spec,
            messages,
            attempts,
            step=step,
            text=completion.text,
            usage=Usage(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens),
            cost=completion.cost_usd,
            latency=elapsed(),
            top_logprobs=completion.top_logprobs,
        )
        self._current.append(output)
        self._emit(Event("call_finished", layer=site.layer, site=site, step=step, attempt=attempts, output=output))
        return output


def _bind(
    call: Callable[[CallSpec, list[Message], int, TokenCallback | None], Awaitable[AgentOutput]],
    spec: CallSpec,
    messages: list[Message],
    step: int,
    on_token: TokenCallback | None,
) -> Callable[[], Awaitable[AgentOutput]]:
    return lambda: call(spec, messages, step, on_token)


def _output(
    spec: CallSpec,
    messages: list[Message],
    attempts: int,
    *,
    step: int = 0,
    text: str | None = None,
    error: CallError | None = None,
    usage: Usage | None = None,
    cost: float | None = None,
    latency: float = 0.0,
    top_logprobs: dict[str, float] | None = None,
) -> AgentOutput:
    site: CallSite = spec.site
    # Every field is built here from checked values: skip re-validation on this hot path.
    return AgentOutput.model_construct(
        layer=site.layer,
        agent=site.agent,
        sample=site.sample,
        step=step,
        name=site.agent_name,
        model=site.model,
        messages=messages,
        text=text,
        error=error,
        usage=usage or Usage(),
        top_logprobs=top_logprobs,
        cost_usd=cost,
        latency_s=latency,
        attempts=attempts,
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
    **overrides: Any,
) -> MoAResult:
    """Run a prompt through a recipe and return the answer with its full trace.

    ``prompt`` is a string or a list of chat messages (``{"role", "content"}``;
    the last one from the user).  ``recipe`` is a ``Recipe`` or anything
    ``load_recipe`` takes.  Keyword ``overrides`` (``temperature=``,
    ``api_base=``, ``max_tokens=``, ``timeout=``, any litellm argument) apply
    to every call and beat the recipe.  ``api_key`` is sent with every call
    and never recorded.  ``provider`` replaces litellm (tests use
    ``moa.testing.FakeProvider``); ``limiter`` shares provider limits between
    concurrent runs; ``on_event`` receives progress ``Event``s; ``on_token``
    receives the final answer's text as it streams.  ``reuse`` takes the first
    layers' results of an earlier run (``result.layers[:k]``): they are not
    called again, and the next layer aggregates their outputs (re-aggregation).
    ``max_cost_usd`` bounds what the run may spend (or ``budget``: one
    ``Budget`` shared by many runs); ``deadline_s`` bounds its wall time.

    Raises ``ConfigError`` subclasses before any call for bad input;
    ``QuorumError``, ``BudgetExceeded`` and ``DeadlineExceeded`` (each with
    ``.partial``, the trace so far) when the run cannot finish.
    """
    loaded = load_recipe(recipe)
    conversation = normalize_prompt(prompt)
    if provider is None:
        from moa._litellm import LiteLLMProvider

        provider = LiteLLMProvider()
    engine = Engine(
        recipe=loaded,
        provider=provider,
        limiter=limiter or Limiter(loaded.limits),
        overrides=overrides,
        api_key=api_key,
        on_event=on_event,
        on_token=on_token,
        budget=budget or (Budget(max_cost_usd, allow_unpriced) if max_cost_usd is not None else None),
    )
    return await engine.run(conversation, reuse, deadline_s)


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
