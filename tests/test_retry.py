"""Retry policy, with an injected sleep: no real waiting."""

from __future__ import annotations

import pytest

from moa import (
    BadResponseError,
    CallTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
    RequestRejectedError,
    RetryPolicy,
)
from moa._call import with_retries


class Script:
    def __init__(self, *steps: object) -> None:
        self.steps = list(steps)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return str(step)


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


POLICY = RetryPolicy(max_attempts=4, initial_backoff_s=1.0, max_backoff_s=8.0, max_retry_after_s=30.0)


async def test_retry_after_is_honoured_exactly() -> None:
    sleep = FakeSleep()
    script = Script(RateLimitedError("429", retry_after=7.5), "ok")
    assert await with_retries(script, POLICY, sleep=sleep) == ("ok", 2)
    assert sleep.delays == [7.5]


async def test_backoff_is_jittered_and_bounded() -> None:
    sleep = FakeSleep()
    script = Script(ProviderUnavailableError("503"), CallTimeoutError("slow"), ProviderUnavailableError("conn"), "ok")
    assert await with_retries(script, POLICY, sleep=sleep) == ("ok", 4)
    assert len(sleep.delays) == 3 and all(0 <= d <= 8.0 for d in sleep.delays)


async def test_attempts_are_bounded_and_recorded_on_the_error() -> None:
    sleep = FakeSleep()
    script = Script(*[ProviderUnavailableError("503")] * 10)
    with pytest.raises(ProviderUnavailableError) as info:
        await with_retries(script, POLICY, sleep=sleep)
    assert script.calls == 4 and info.value.attempts == 4 and len(sleep.delays) == 3


@pytest.mark.parametrize(
    "error",
    [
        RequestRejectedError("400", status_code=400),
        RequestRejectedError("401", status_code=401),
        RequestRejectedError("404", status_code=404),
        BadResponseError("no choices"),
    ],
)
async def test_permanent_errors_are_not_retried(error: Exception) -> None:
    sleep = FakeSleep()
    script = Script(error, "never")
    with pytest.raises(type(error)):
        await with_retries(script, POLICY, sleep=sleep)
    assert script.calls == 1 and sleep.delays == []


async def test_too_long_retry_after_fails_at_once() -> None:
    sleep = FakeSleep()
    script = Script(RateLimitedError("429", retry_after=3600), "never")
    with pytest.raises(RateLimitedError):
        await with_retries(script, POLICY, sleep=sleep)
    assert script.calls == 1


async def test_on_retry_reports_attempt_error_and_delay() -> None:
    seen: list[tuple[int, str, float]] = []
    script = Script(RateLimitedError("429", retry_after=2.0), "ok")
    await with_retries(
        script, POLICY, sleep=FakeSleep(), on_retry=lambda n, e, d: seen.append((n, type(e).__name__, d))
    )
    assert seen == [(1, "RateLimitedError", 2.0)]
