"""The engine: runs a recipe's layers in order, each layer's calls concurrently.

Per call: limits -> provider, wrapped in retries; every outcome (text or
error) is recorded.  Per layer: ``settle`` with the layer's quorum; a layer
that misses it raises ``QuorumError`` carrying the partial trace.
"""

from __future__ import annotations

import asyncio
import difflib
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moa import _secrets
from moa._budget import Budget, BudgetRefused
from moa._cost import CHARS_PER_TOKEN, pricing_of, prompt_tokens, run_worst_case
from moa._errors import (
    BadResponseError,
    BudgetExceeded,
    CallbackError,
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
from moa._overrides import CALL_SETTINGS, call_overrides, merge
from moa._plan import CallSpec, Message, build_messages, normalize_prompt, plan_layer
from moa._provider import Completion, Preflight, Provider, Request, TokenCallback
from moa._retry import Sleep, with_retries
from moa.events import Event, EventCallback
from moa.recipe import CallParams, Layer, Recipe, seq_windows
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


def _fatal(exc: Exception) -> bool:
    return isinstance(exc, CallbackError)  # the caller's own code failed: stop everything now


def _embedded(outputs: Sequence[AgentOutput]) -> list[tuple[int, int]]:
    """(characters, tokens) of outputs quoted in a prompt, for its worst-case estimate."""
    embedded = []
    for output in outputs:
        chars = len(output.text or "")
        embedded.append((chars, output.usage.completion_tokens or -(-chars // CHARS_PER_TOKEN)))
    return embedded


def _empty_answer(completion: Completion, model: str) -> BadResponseError:
    reason = completion.finish_reason
    hint = ""
    if reason == "length":
        hint = " (it stopped at max_tokens before writing any text: a reasoning model may spend them all thinking)"
    elif reason:
        hint = f" (finish_reason {reason!r})"
    return BadResponseError(f"the answer is empty{hint}", model=model)


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

    def __post_init__(self) -> None:
        _secrets.register(self.api_key)
        self._pricing = pricing_of(self.provider)
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
            _secrets.register(value)
            keys[variable] = value
        return keys

    def _emit(self, event: Event) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception as exc:
                raise CallbackError("on_event", exc) from exc

    # ---------------------------------------------------------------- run

    def preflight(self, start: int = 0) -> None:
        """Let the provider refuse unreachable models (missing key or extra) before any call."""
        calls = []
        for index in range(start, len(self.recipe.layers)):
            for spec in self._specs[index]:
                has_key = self.api_key is not None or spec.api_key_env is not None
                calls.append((spec.model, spec.params, has_key))
        if isinstance(self.provider, Preflight):
            self.provider.preflight(calls)
        if self.budget is not None and not self.budget.allow_unpriced:
            pricing = self._pricing
            unpriced = [m for m, p, _ in calls if pricing is None or pricing.worst_case_cost(m, p, 0) is None]
            if unpriced:
                raise UnpricedModelError(unpriced)

    def worst_case(self, conversation: list[Message], reuse: Sequence[LayerResult] = ()) -> float | None:
        """The most this run can cost (``moa._cost``); None when a model has no known price."""
        if self._pricing is None:
            return None
        reused = _embedded(_passed_on(reuse[-1])) if reuse else ()
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
        try:
            async with asyncio.timeout(deadline_s):
                return await self._run(conversation, reuse, started)
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

    async def _run(self, conversation: list[Message], reuse: Sequence[LayerResult], started: float) -> MoAResult:
        layers: list[LayerResult] = []
        self._layers = layers  # finished layers, kept current for partial traces
        references: list[AgentOutput] = []
        last = len(self.recipe.layers) - 1
        if len(reuse) > last:
            raise ConfigError(f"can reuse at most {last} layers of this recipe (the last must run), got {len(reuse)}")
        for cached in reuse:  # layers answered before: their outputs feed the next layer, no calls
            layers.append(cached)
            references = _passed_on(cached)
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
            except (QuorumError, BudgetExceeded, CallbackError) as exc:
                recorded = exc.outputs if isinstance(exc, QuorumError) else self._current
                layers.append(self._layer(index, layer, recorded, layer_started))
                exc.partial = self._result(conversation, layers, started, output="")
                raise
            except asyncio.CancelledError:  # the run's deadline, or the caller cancelled
                layers.append(self._layer(index, layer, self._current, layer_started))
                raise
            layers.append(self._layer(index, layer, outputs, layer_started))
            self._current = []
            self._emit(Event("layer_finished", layer=index + 1))
            references = _passed_on(layers[-1])
        return self._result(conversation, layers, started, output=references[0].text or "")

    def _layer(self, index: int, layer: Layer | None, outputs: Sequence[AgentOutput], started: float) -> LayerResult:
        if layer is None:
            layer = self.recipe.layers[index]
        return LayerResult.model_construct(  # built from checked values: no re-validation
            index=index + 1,
            kind=layer.kind,
            outputs=list(outputs),
            latency_s=time.perf_counter() - started,
        )

    def _result(self, conversation: list[Message], layers: list[LayerResult], started: float, output: str) -> MoAResult:
        calls = [call for layer in layers for call in layer.outputs]
        usage = sum((call.usage for call in calls), Usage())
        # Failed calls count too: an attempt that returned (an empty answer) was paid for.
        unpriced = sorted({call.model for call in calls if call.cost_usd is None})
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

    # -------------------------------------------------------------- layers

    async def _parallel(
        self,
        index: int,
        layer: Layer,
        conversation: list[Message],
        references: list[AgentOutput],
        on_token: TokenCallback | None,
    ) -> list[AgentOutput]:
        texts = [output.text or "" for output in references]
        block = layer.compiled_template.render(responses=texts, layer=index + 1) if index else None
        embedded = _embedded(references)
        specs = self._specs[index]
        factories: list[Callable[[], Awaitable[AgentOutput]]] = []
        for spec in specs:
            agent = layer.agents[spec.site.agent]
            messages = build_messages(conversation, system=agent.system, references=block)
            factories.append(_bind(self._call, spec, messages, 0, on_token, embedded))
        outcomes = await settle(
            factories,
            min_success=layer.min_success,
            straggler_s=layer.straggler_s,
            abandons=_abandons,
            fatal=_fatal,
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
        references: list[AgentOutput],
        on_token: TokenCallback | None,
    ) -> list[AgentOutput]:
        """Self-MoA-Seq: fold the inputs in ``window`` at a time; each step sees the synthesis so far."""
        spec = self._specs[index][0]
        agent = layer.agents[0]
        windows = seq_windows(len(references), layer.effective_window)
        outputs: list[AgentOutput] = []
        synthesis: AgentOutput | None = None
        for step, (start, end) in enumerate(windows, start=1):
            window = references[start:end] if synthesis is None else [synthesis, *references[start:end]]
            texts = [output.text or "" for output in window]
            block = layer.compiled_template.render(responses=texts, layer=index + 1, step=step)
            messages = build_messages(conversation, system=agent.system, references=block)
            final_step = step == len(windows)
            try:
                output = await self._call(spec, messages, step, on_token if final_step else None, _embedded(window))
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
            synthesis = output
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
        self,
        spec: CallSpec,
        messages: list[Message],
        step: int,
        on_token: TokenCallback | None,
        embedded: Sequence[tuple[int, int]] = (),
    ) -> AgentOutput:
        site = spec.site
        key = self.api_key if self.api_key is not None else self._keys.get(spec.api_key_env or "")
        request = Request(model=spec.model, messages=messages, params=spec.params, api_key=key)
        gate = self.limiter.gate(spec.model)
        attempts = 0
        started = 0.0  # when the first attempt got past the limits: queueing is not latency
        paid = Usage()  # tokens of answers that came back but were refused (empty)
        paid_cost: float | None = 0.0
        callback_failures: list[Exception] = []
        worst = None
        if self.budget is not None and self._pricing is not None:
            worst = self._pricing.worst_case_cost(spec.model, spec.params, prompt_tokens(messages, embedded))

        sink: TokenCallback | None = None
        if on_token is not None:
            token_callback = on_token

            def sink(text: str) -> None:
                try:
                    token_callback(text)
                except Exception as exc:  # the caller's code, not the provider's: remembered, then stops the run
                    callback_failures.append(exc)
                    raise

        async def attempt() -> Completion:
            nonlocal attempts, started, paid, paid_cost
            attempts += 1
            async with gate.slot():  # queued until the provider's limits let it go
                held = self.budget.reserve(worst) if self.budget else 0.0
                started = started or time.perf_counter()
                self._emit(Event("call_started", layer=site.layer, site=site, step=step, attempt=attempts))
                try:
                    completion = await self.provider.complete(request, sink)
                except BaseException:
                    if self.budget:
                        self.budget.settle(held, 0.0)
                    if callback_failures:
                        raise CallbackError("on_token", callback_failures[0]) from callback_failures[0]
                    raise
                if self.budget:
                    self.budget.settle(held, completion.cost_usd)
                if not completion.text.strip():
                    # Paid for, but nothing to pass on: a failure (it fills no quorum), with its cost kept.
                    paid += Usage(
                        prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens
                    )
                    paid_cost = (
                        None if completion.cost_usd is None or paid_cost is None else paid_cost + completion.cost_usd
                    )
                    raise _empty_answer(completion, spec.model)
                return completion

        def elapsed() -> float:
            return time.perf_counter() - started if started else 0.0

        def on_retry(number: int, error: ProviderError, delay: float) -> None:
            error.site = site
            self._emit(
                Event(
                    "call_retried", layer=site.layer, site=site, step=step, attempt=number, error=error, delay_s=delay
                )
            )

        def failed(error: CallError, attempts: int) -> AgentOutput:
            return _output(
                spec, messages, attempts, step=step, error=error, latency=elapsed(), usage=paid, cost=paid_cost
            )

        try:
            completion, attempts = await with_retries(attempt, self.recipe.retry, on_retry=on_retry, sleep=self.sleep)
        except BudgetRefused as exc:
            output = failed(CallError(type="BudgetExceeded", message=str(exc)), attempts - 1)
            self._emit(Event("call_failed", layer=site.layer, site=site, step=step, attempt=attempts, output=output))
            raise _CallRefused(output) from None
        except ProviderError as exc:
            exc.site = site
            error = CallError(
                type=type(exc).__name__, message=str(exc), status_code=exc.status_code, transient=exc.transient
            )
            output = failed(error, exc.attempts)
            self._current.append(output)
            self._emit(
                Event(
                    "call_failed",
                    layer=site.layer,
                    site=site,
                    step=step,
                    attempt=exc.attempts,
                    error=exc,
                    output=output,
                )
            )
            raise _CallFailed(output, exc) from exc
        output = _output(
            spec,
            messages,
            attempts,
            step=step,
            text=completion.text,
            usage=paid + _usage(completion),
            cost=_plus(paid_cost, completion.cost_usd),
            latency=elapsed(),
            top_logprobs=completion.top_logprobs,
        )
        self._current.append(output)
        self._emit(Event("call_finished", layer=site.layer, site=site, step=step, attempt=attempts, output=output))
        return output


def _usage(completion: Completion) -> Usage:
    return Usage(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens)


def _plus(a: float | None, b: float | None) -> float | None:
    """Sum of two costs; unknown (None) when either is."""
    return None if a is None or b is None else a + b


def _passed_on(layer: LayerResult) -> list[AgentOutput]:
    """The outputs a finished layer hands to the next: its successes (Self-MoA-Seq: the last synthesis)."""
    done = [output for output in layer.outputs if output.ok]
    return done[-1:] if layer.kind == "aggregate_seq" else done


def _bind(
    call: Callable[..., Awaitable[AgentOutput]],
    spec: CallSpec,
    messages: list[Message],
    step: int,
    on_token: TokenCallback | None,
    embedded: Sequence[tuple[int, int]],
) -> Callable[[], Awaitable[AgentOutput]]:
    return lambda: call(spec, messages, step, on_token, embedded)


def _output(
    spec: CallSpec,
    messages: list[Message],
    attempts: int,
    *,
    step: int = 0,
    text: str | None = None,
    error: CallError | None = None,
    usage: Usage | None = None,
    cost: float | None = 0.0,
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
    bounds its wall time.

    Raises ``ConfigError`` subclasses before any call for bad input;
    ``QuorumError``, ``BudgetExceeded``, ``DeadlineExceeded`` and
    ``CallbackError`` (each with ``.partial``, the trace so far) when the run
    cannot finish.
    """
    unknown = [name for name in overrides if name not in CALL_SETTINGS]
    if unknown:
        raise TypeError(_unexpected_keyword(unknown[0]))
    if deadline_s is not None and not (isinstance(deadline_s, int | float) and 0 < deadline_s < math.inf):
        raise ConfigError(f"deadline_s must be a positive number of seconds, got {deadline_s!r}")
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
    )
    return await engine.run(conversation, reuse, deadline_s)


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
