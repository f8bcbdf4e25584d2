"""The call pipeline: one request through small wrappers around a provider.

Each attempt of a call runs, outermost first::

    limits   a slot of the provider's concurrency, requests and tokens per minute
    budget   reserve the attempt's worst case; replace it by the real cost after
    trace    ``call_started`` (queueing in the limits is not latency)
    answers  an empty answer is a failure (paid for: its cost is kept)
    provider litellm (or any ``Provider``), streaming to ``on_token`` when given

and ``Caller.call`` looks the call up in the call cache when there is one
(``cache.py``), wraps the attempts in the retry policy (``retry.py``) and
records the outcome (``trace.py``): an ``AgentOutput``, or ``CallFailed`` /
``CallRefused`` carrying the recorded failure.  A wrapper is a function of
the next handler, so a new concern (a cache) is one more function here.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from moa._errors import BadResponseError, CallbackError, ProviderError
from moa._limits import Limiter
from moa._prompt import clean_text, is_blank
from moa._provider import Completion, Provider, Request, TokenCallback
from moa.recipe import RetryPolicy
from moa.result import AgentOutput, Usage

from .budget import Budget, BudgetRefused
from .cache import CallCache, Occurrences
from .cost import Pricing, output_tokens, prompt_tokens, tools_tokens, total
from .retry import Sleep, with_retries
from .spec import CallSpec
from .trace import CallRecord, Tracer


class CallFailed(Exception):
    """A call failed for good; carries its recorded output and the cause."""

    def __init__(self, output: AgentOutput, cause: ProviderError) -> None:
        super().__init__(str(cause))
        self.output = output
        self.cause = cause


class CallRefused(Exception):
    """The budget refused to start a call; carries its recorded output."""

    def __init__(self, output: AgentOutput) -> None:
        super().__init__(output.error.message if output.error else "refused")
        self.output = output


@dataclass
class Attempt:
    """One attempt of a call, as the wrappers see it."""

    record: CallRecord
    request: Request
    on_token: TokenCallback | None
    prompt_tokens: int


Handler = Callable[[Attempt], Awaitable[Completion]]


def provided(provider: Provider) -> Handler:
    """The innermost handler: the provider; a failing ``on_token`` is the caller's error, never the provider's."""

    async def handle(attempt: Attempt) -> Completion:
        failures: list[Exception] = []
        sink: TokenCallback | None = None
        if attempt.on_token is not None:
            callback = attempt.on_token

            def sink(text: str) -> None:
                try:
                    callback(clean_text(text))
                except Exception as exc:  # remembered: whatever the provider makes of it, the run stops
                    failures.append(exc)
                    raise

        try:
            completion = await provider.complete(attempt.request, sink)
        except BaseException:
            if failures:
                raise CallbackError("on_token", failures[0]) from failures[0]
            raise
        cost = completion.cost_usd
        if cost is not None and (isinstance(cost, bool) or not math.isfinite(cost) or cost < 0):
            return replace(completion, cost_usd=None)  # a provider's nonsense price is an unknown one
        return completion

    return handle


def answers(inner: Handler) -> Handler:
    """An empty answer (nothing visible in it) is a failure: it fills no quorum and reaches no aggregator.

    Not retried: the same request would most likely be answered the same way.
    Lone surrogates in an answer are replaced by U+FFFD.  An answer that calls
    functions (to a request that offered them) may have no text.
    """

    async def handle(attempt: Attempt) -> Completion:
        completion = await inner(attempt)
        if attempt.request.embed:
            return completion  # vectors, checked by the provider
        if completion.tool_calls and "tools" in attempt.request.params:  # it calls functions: text is optional
            text = clean_text(completion.text)
            return completion if text is completion.text else replace(completion, text=text)
        if not is_blank(completion.text):
            text = clean_text(completion.text)  # half a character (a cut emoji) cannot be stored or printed
            return completion if text is completion.text else replace(completion, text=text)
        record = attempt.record
        record.paid += Usage(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens)
        record.paid_cost = total([record.paid_cost, completion.cost_usd])
        record.last_refused_cost = completion.cost_usd
        hint = ""
        if completion.finish_reason == "length":
            hint = " (it stopped at max_tokens before writing any text: a reasoning model may spend them all thinking)"
        elif completion.finish_reason:
            hint = f" (finish_reason {completion.finish_reason!r})"
        raise BadResponseError(f"the answer is empty{hint}", model=attempt.request.model)

    return handle


def traced(inner: Handler, tracer: Tracer) -> Handler:
    """Emit ``call_started`` when an attempt really starts (past the limits and the budget)."""

    async def handle(attempt: Attempt) -> Completion:
        tracer.started(attempt.record)
        return await inner(attempt)

    return handle


def budgeted(inner: Handler, budget: Budget | None, pricing: Pricing | None) -> Handler:
    """Reserve each attempt's worst case before it starts; settle the real cost after (``BudgetRefused`` if not)."""
    if budget is None:
        return inner

    async def handle(attempt: Attempt) -> Completion:
        spec = attempt.record.spec
        worst = pricing.worst_case_cost(spec.model, spec.params, attempt.prompt_tokens) if pricing else None
        held = budget.reserve(worst)
        try:
            completion = await inner(attempt)
        except BadResponseError:
            budget.settle(held, attempt.record.last_refused_cost)  # an empty answer was still paid for
            attempt.record.last_refused_cost = 0.0
            raise
        except BaseException:
            budget.settle(held, 0.0)
            raise
        budget.settle(held, completion.cost_usd)
        return completion

    return handle


def limited(inner: Handler, limiter: Limiter, pricing: Pricing | None) -> Handler:
    """Wait for the provider's limits: a concurrency slot, then request and token pacing."""

    async def handle(attempt: Attempt) -> Completion:
        spec = attempt.record.spec
        tokens = attempt.prompt_tokens + (output_tokens(pricing, spec.model, spec.params) if pricing else 0)
        async with limiter.gate(spec.model).slot(tokens):
            return await inner(attempt)

    return handle


class Caller:
    """Makes calls through the pipeline: the one ``call()`` every stage uses."""

    def __init__(
        self,
        provider: Provider,
        limiter: Limiter,
        tracer: Tracer,
        retry: RetryPolicy,
        *,
        pricing: Pricing | None = None,
        budget: Budget | None = None,
        keys: Mapping[str, str] | None = None,
        api_key: str | None = None,
        sleep: Sleep | None = None,
        cache: CallCache | None = None,
        occurrences: Occurrences | None = None,
    ) -> None:
        self.tracer = tracer
        self.cache = cache
        self.occurrences = occurrences or Occurrences()
        self.retry = retry
        self.sleep = sleep
        self.pricing = pricing
        self.budget = budget
        self._provider = provider
        self._limiter = limiter
        self._keys = dict(keys or {})
        self._api_key = api_key
        attempt = provided(provider)
        attempt = answers(attempt)
        attempt = traced(attempt, tracer)
        attempt = budgeted(attempt, budget, pricing)
        self._attempt = limited(attempt, limiter, pricing)

    def quiet(self) -> Caller:
        """A caller on the same provider, limits, budget, keys and retry policy that sends no events and
        records nothing (the calls a tool makes: they are recorded with the tool call)."""
        return Caller(
            self._provider,
            self._limiter,
            Tracer(None),
            self.retry,
            pricing=self.pricing,
            budget=self.budget,
            keys=self._keys,
            api_key=self._api_key,
            sleep=self.sleep,
            cache=self.cache,
            occurrences=self.occurrences,
        )

    async def complete(
        self,
        record: CallRecord,
        *,
        on_token: TokenCallback | None = None,
        embedded: Sequence[tuple[int, int]] = (),
        embed: bool = False,
    ) -> Completion:
        """One model call with its retries, limits, budget and ``call_started`` / ``call_retried`` events, but
        nothing recorded: the caller records it (``call`` does; a tool loop records the whole answer once).

        With a call cache, an answer stored for the same request (its n-th occurrence in this run) comes back
        at once, with ``cost_usd`` 0.0 (nothing was paid; ``record.saved_usd`` is what it cost when made) and
        its text sent to ``on_token`` whole; a new answer is stored.

        Raises ``BudgetRefused`` when the budget did not start it, ``ProviderError`` when it failed for good.
        """
        spec, messages = record.spec, record.messages
        key = self._api_key if self._api_key is not None else self._keys.get(spec.api_key_env or "")
        request = Request(model=spec.model, messages=messages, params=spec.params, api_key=key, embed=embed)
        tokens = prompt_tokens(messages, embedded) + tools_tokens(spec.params)
        attempt = Attempt(record, request, on_token, tokens)
        key = self.occurrences.key(request) if self.cache is not None else None
        if self.cache is not None and key is not None:
            stored = await self.cache.lookup(key)
            if stored is not None:
                return self._hit(record, stored, on_token)

        def on_retry(number: int, error: ProviderError, delay: float) -> None:
            self.tracer.retried(record, number, error, delay)

        completion, _ = await with_retries(
            lambda: self._attempt(attempt), self.retry, on_retry=on_retry, sleep=self.sleep
        )
        if self.cache is not None and key is not None:
            await self.cache.store(key, spec.model, completion)
        return completion

    def _hit(self, record: CallRecord, stored: Completion, on_token: TokenCallback | None) -> Completion:
        record.cached, record.saved_usd = True, stored.cost_usd
        self.tracer.started(record)  # (the live view shows it start and finish)
        record.attempts = 0  # no request was made
        if on_token is not None and stored.text:
            try:
                on_token(stored.text)
            except Exception as exc:
                raise CallbackError("on_token", exc) from exc
        return replace(stored, cost_usd=0.0)

    async def call(
        self,
        spec: CallSpec,
        messages: list[dict[str, object]],
        *,
        step: int = 0,
        on_token: TokenCallback | None = None,
        embedded: Sequence[tuple[int, int]] = (),
        embed: bool = False,
    ) -> AgentOutput:
        """One call with its retries; its ``AgentOutput``, or ``CallFailed`` / ``CallRefused``.

        ``embed``: an embedding call; each message's content is one text, and the output's ``embeddings`` hold
        their vectors."""
        record = CallRecord(spec=spec, messages=messages, step=step)
        try:
            completion = await self.complete(record, on_token=on_token, embedded=embedded, embed=embed)
        except BudgetRefused as exc:
            raise CallRefused(self.tracer.refused(record, str(exc))) from None
        except ProviderError as exc:
            raise CallFailed(self.tracer.failed(record, exc), exc) from exc
        return self.tracer.finished(
            record,
            completion.text,
            record.paid + Usage(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens),
            total([record.paid_cost, completion.cost_usd]),
            completion.top_logprobs,
            completion.finish_reason,
            mean_logprob=completion.mean_logprob,
            embeddings=completion.embeddings,
            cached=record.cached,
            saved_usd=record.saved_usd,
        )
