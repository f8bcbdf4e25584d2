"""Per-provider limits: grouping by provider, concurrency, request pacing (token pacing: test_tpm.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_tpm import run_virtual, starts

from moa import Limiter, ProviderLimit
from moa._errors import ConfigError
from moa._provider import provider_of


def test_provider_grouping() -> None:
    assert provider_of("together_ai/Qwen/Qwen1.5-72B-Chat") == "together_ai"
    assert provider_of("openai/gpt-4o") == "openai"
    assert provider_of("gpt-4o-mini") == "openai"
    assert provider_of("claude-3-5-sonnet") == "anthropic"
    assert provider_of("mystery") == "mystery"


def test_gates_are_shared_per_provider_and_default_applies() -> None:
    limiter = Limiter({"openai": ProviderLimit(max_concurrency=2), "default": ProviderLimit(max_concurrency=5)})
    assert limiter.gate("openai/a") is limiter.gate("gpt-4o")
    assert limiter.gate("openai/a").limit.max_concurrency == 2
    assert limiter.gate("together_ai/x").limit.max_concurrency == 5


def test_each_local_model_has_a_gate_of_its_own_one_call_at_a_time_by_default() -> None:
    limiter = Limiter({"default": ProviderLimit(max_concurrency=5)})
    bundled, own = limiter.gate("local/smollm2-135m"), limiter.gate("local:/models/qwen.gguf")
    assert bundled is not own and bundled is limiter.gate("local/smollm2-135m")
    assert bundled.limit.max_concurrency == own.limit.max_concurrency == 1  # (not the default's 5)
    assert limiter.gate("openai/a").limit.max_concurrency == 5
    limiter = Limiter({"local": ProviderLimit(max_concurrency=2)})
    assert limiter.gate("local/smollm2-135m").limit.max_concurrency == 2
    assert limiter.gate("local:/models/qwen.gguf") is not limiter.gate("local/smollm2-135m")


def test_every_path_to_one_local_file_shares_its_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "weights.gguf"
    weights.write_bytes(b"GGUF")
    (tmp_path / "link.gguf").symlink_to(weights)
    monkeypatch.chdir(tmp_path)
    limiter = Limiter()
    gates = {id(limiter.gate(f"local:{path}")) for path in (weights, tmp_path / "link.gguf", "weights.gguf")}
    assert len(gates) == 1  # one server answers them all: one call at a time between them


def test_the_bundled_model_named_by_its_file_is_the_bundled_model(tmp_path: Path) -> None:
    from moa._local import local_name, model_file

    try:
        weights = model_file("smollm2-135m")
    except ConfigError:
        pytest.skip("the bundled model is not installed")
    (tmp_path / "mine.gguf").symlink_to(weights)
    for named in (f"local:{weights}", f"local:{tmp_path / 'mine.gguf'}", "local/smollm2-135m"):
        assert local_name(named) == "smollm2-135m"  # one server for it, however a recipe names it
    limiter = Limiter()
    assert limiter.gate(f"local:{tmp_path / 'mine.gguf'}") is limiter.gate("local/smollm2-135m")


async def test_two_local_models_each_answer_one_call_at_a_time_and_both_at_once() -> None:
    limiter = Limiter()
    inside: dict[str, int] = {"local/a": 0, "local/b": 0}
    most: dict[str, int] = {"local/a": 0, "local/b": 0}
    both = asyncio.Event()

    async def call(model: str) -> None:
        async with limiter.gate(model).slot():
            inside[model] += 1
            most[model] = max(most[model], inside[model])
            if all(inside.values()):
                both.set()
            await asyncio.wait_for(both.wait(), 5)  # each model's call waits until the other model has one in
            inside[model] -= 1

    await asyncio.gather(*(call(model) for model in ["local/a", "local/b"] * 3))
    assert most == {"local/a": 1, "local/b": 1}


def test_rpm_paces_request_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = Limiter({"p": ProviderLimit(rpm=600)})  # 10 per second
    gate = limiter.gate("p/m")
    started = run_virtual(starts(gate, *((str(i), 0) for i in range(15))), monkeypatch)
    # The first 10 start at once, the other 5 once the 1 s period has passed (the pacer polls every 10 ms).
    assert [t for _, t in started[:10]] == [0.0] * 10
    assert all(1.0 < t <= 1.02 for _, t in started[10:])
    assert len({t for _, t in started[10:]}) == 1


def test_rpm_below_60_spreads_requests_over_the_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Limiter({"p": ProviderLimit(rpm=6)}).gate("p/m")  # one every 10 s, no burst
    started = [t for _, t in run_virtual(starts(gate, ("a", 0), ("b", 0), ("c", 0)), monkeypatch)]
    assert started[0] == 0.0 and 10.0 < started[1] <= 10.02 and 10.0 < started[2] - started[1] <= 10.02


def test_max_concurrency_caps_calls_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Limiter({"p": ProviderLimit(max_concurrency=2)}).gate("p/m")

    async def main() -> list[int]:
        release = asyncio.Event()
        seen: list[int] = []

        async def one() -> None:
            async with gate.slot():
                seen.append(gate.in_flight)
                await release.wait()

        tasks = [asyncio.create_task(one()) for _ in range(5)]
        await asyncio.sleep(3600)  # an hour of virtual time, no real time: the others stay queued
        assert gate.in_flight == 2 and len(seen) == 2
        release.set()
        await asyncio.gather(*tasks)
        assert gate.in_flight == 0
        return seen

    assert max(run_virtual(main(), monkeypatch)) == 2


def test_served_recipes_share_the_strictest_limit_each_sets() -> None:
    from moa._limits import strictest

    merged, differ = strictest([
        {"openai": ProviderLimit(max_concurrency=64)},
        {"openai": ProviderLimit(rpm=100), "together": ProviderLimit(tpm=5000)},
        {"openai": ProviderLimit(max_concurrency=4, rpm=None)},
    ])  # fmt: skip
    assert merged == {"openai": ProviderLimit(max_concurrency=4, rpm=100), "together": ProviderLimit(tpm=5000)}
    assert differ == ["openai"]
    assert strictest([{"openai": ProviderLimit(rpm=10)}, {"openai": ProviderLimit(rpm=10)}])[1] == []
    # A recipe's `default` is its limit for every provider it does not name, so it holds for them here too.
    merged, _ = strictest([{"default": ProviderLimit(max_concurrency=2)}, {"openai": ProviderLimit(rpm=600)}])
    assert merged["openai"] == ProviderLimit(max_concurrency=2, rpm=600)
    assert Limiter(merged).gate("openai/m").limit.max_concurrency == 2
