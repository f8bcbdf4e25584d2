"""Retries of transient provider failures, with tenacity.

Retried: errors whose ``transient`` is true (429, 5xx, timeouts, connection
failures).  A 429's Retry-After is honoured (up to ``max_retry_after_s``; a
longer demand fails the call at once); otherwise the wait is full-jitter
exponential backoff.  Permanent errors (400/401/403/404/422, unusable bodies)
are raised on the first attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import tenacity

from moa._errors import ProviderError
from moa.recipe import RetryPolicy

T = TypeVar("T")
#: Called before each backoff sleep with (failed attempt number, its error, seconds to wait).
RetryCallback = Callable[[int, ProviderError, float], None]
Sleep = Callable[[float], Awaitable[None]]


def _is_retryable(policy: RetryPolicy) -> Callable[[BaseException], bool]:
    def check(exc: BaseException) -> bool:
        if not isinstance(exc, ProviderError) or not exc.transient:
            return False
        return exc.retry_after is None or exc.retry_after <= policy.max_retry_after_s

    return check


def _wait(policy: RetryPolicy) -> Callable[[tenacity.RetryCallState], float]:
    jitter = tenacity.wait_random_exponential(multiplier=policy.initial_backoff_s, max=policy.max_backoff_s)

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ProviderError) and exc.retry_after is not None:
            return exc.retry_after
        return float(jitter(state))

    return wait


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_retry: RetryCallback | None = None,
    sleep: Sleep | None = None,
) -> tuple[T, int]:
    """Run ``attempt`` until it succeeds or the policy gives up; return (result, attempts).

    The last error is raised with its ``attempts`` attribute set.  The first
    attempt runs without tenacity's machinery (most calls succeed first time,
    and this is the per-call hot path); a retryable failure is then replayed
    as tenacity's attempt 1, so numbering, waits and callbacks stay tenacity's.
    """
    retryable = _is_retryable(policy)
    try:
        return await attempt(), 1
    except ProviderError as exc:
        if policy.max_attempts == 1 or not retryable(exc):
            exc.attempts = 1
            raise
        first_failure: list[ProviderError] = [exc]
    attempts = 0

    async def replay_then_attempt() -> T:
        nonlocal attempts
        attempts += 1
        if first_failure:
            raise first_failure.pop()
        return await attempt()

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if on_retry is not None and isinstance(exc, ProviderError):
            delay = state.next_action.sleep if state.next_action else 0.0
            on_retry(state.attempt_number, exc, delay)

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts),
        wait=_wait(policy),
        retry=tenacity.retry_if_exception(retryable),
        before_sleep=before_sleep,
        reraise=True,
        sleep=sleep or asyncio.sleep,
    )
    try:
        # Called, not iterated with `async for`: that would take an attempt's StopAsyncIteration for its own end.
        return await retrying(replay_then_attempt), attempts
    except ProviderError as exc:
        exc.attempts = attempts
        raise
