"""The run log's exact records: where it lives, how long it waits, and what a finished run stores.

Written against the mutants of ``moa/_runlog.py`` that survived the rest of the suite
(``benchmarks/mutation_score.py``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from moa import _runlog
from moa._runlog import RunLog, RunLogError, default_path, default_timeout
from moa.result import AgentOutput, CallError, LayerResult, MoAResult, Usage

PROMPT = [{"role": "user", "content": "What is MoA?"}]


def output(name: str, *, cost: float | None, ok: bool = True, prompt: int = 3, completion: int = 4) -> AgentOutput:
    return AgentOutput(
        layer=1,
        agent=0,
        name=name,
        model=f"openai/{name}",
        messages=PROMPT,
        text=f"reply {name}" if ok else None,
        error=None if ok else CallError(type="RateLimitedError", message="429"),
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
        cost_usd=cost,
        latency_s=0.25,
        attempts=1,
    )


def test_the_default_log_is_under_xdg_data_home_else_under_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MOA_LOG_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_path() == tmp_path / "data" / "moa" / "runs.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".local" / "share" / "moa" / "runs.sqlite"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("2.5", 2.5), ("3599.5", 3599.5), ("3600", 10.0), ("5000", 10.0), ("-1", 10.0), ("soon", 10.0)],
)
def test_the_lock_timeout_comes_from_the_environment_within_an_hour(
    monkeypatch: pytest.MonkeyPatch, value: str, seconds: float
) -> None:
    monkeypatch.setenv("MOA_LOG_TIMEOUT", value)
    assert default_timeout() == seconds


def test_a_started_run_is_running_with_its_prompt_and_an_empty_prompt_shows_as_empty(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "runs.sqlite")
    first = log.start("tiny", "{}", PROMPT)
    second = log.start("tiny", "{}", [])
    run = log.get(first)
    assert run is not None and run["status"] == "running" and run["prompt"] == PROMPT
    assert [(r["id"], r["status"], r["prompt"]) for r in log.recent()] == [
        (second, "running", ""),
        (first, "running", "What is MoA?"),
    ]


def test_recent_lists_the_last_twenty_runs_by_default(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "runs.sqlite")
    ids = [log.start("tiny", "{}", PROMPT) for _ in range(21)]
    assert [r["id"] for r in log.recent()] == ids[:0:-1]


def test_a_finished_run_stores_the_results_cost_latency_and_token_counts(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "runs.sqlite")
    run_id = log.start("tiny", "{}", PROMPT)
    calls = [output("a", cost=0.25, prompt=3, completion=4), output("b", cost=0.5, prompt=5, completion=7)]
    result = MoAResult(
        recipe="tiny",
        prompt=PROMPT,
        output="final",
        layers=[LayerResult(index=1, kind="propose", outputs=calls)],
        usage=Usage(prompt_tokens=8, completion_tokens=11),
        cost_usd=0.875,  # what the run says it cost, not the sum of the calls (it may hold refused answers)
        latency_s=6.5,
    )
    log.finish(run_id, "done", calls, result=result)
    run = log.get(run_id)
    assert run is not None
    assert (run["status"], run["output"], run["cost_usd"], run["latency_s"]) == ("done", "final", 0.875, 6.5)
    assert (run["calls"][0]["prompt_tokens"], run["prompt_tokens"], run["completion_tokens"]) == (3, 8, 11)


@pytest.mark.parametrize(
    ("costs", "total"),
    [
        ([0.25, 0.0, 0.5], 0.75),
        ([0.25, None], None),  # a successful call of an unpriced model: the total is unknown
    ],
)
def test_a_partial_run_costs_what_its_successful_calls_cost(
    tmp_path: Path, costs: list[float | None], total: float | None
) -> None:
    log = RunLog(tmp_path / "runs.sqlite")
    run_id = log.start("tiny", "{}", PROMPT)
    calls = [output(f"c{i}", cost=cost) for i, cost in enumerate(costs)]
    calls.append(output("failed", cost=None, ok=False))  # a failed call's unknown cost is not a successful one's
    log.finish(run_id, "interrupted", calls, error="stopped")
    run = log.get(run_id)
    assert run is not None
    assert (run["status"], run["cost_usd"], run["latency_s"], run["failed_calls"]) == ("interrupted", total, None, 1)


def test_recording_a_call_waits_half_a_second_at_most_for_a_locked_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = RunLog(tmp_path / "runs.sqlite", timeout_s=5.0)
    run_id = log.start("tiny", "{}", PROMPT)
    timeouts: list[float] = []
    connect = sqlite3.connect

    def spy(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        timeouts.append(kwargs["timeout"])
        return connect(*args, **kwargs)

    monkeypatch.setattr(_runlog.sqlite3, "connect", spy)
    log.record_call(run_id, 0, output("a", cost=0.25))
    log.record_call(run_id, 0, output("a2", cost=0.5))  # the same position again: replaced
    log.get(run_id)
    assert timeouts == [0.5, 0.5, 5.0]
    run = log.get(run_id)
    assert run is not None and run["calls"][0]["name"] == "a2"


def test_a_migration_step_that_is_not_sql_fails_and_is_never_skipped(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "runs.sqlite", migrations=[*_runlog.MIGRATIONS, "X"])
    with pytest.raises(RunLogError) as info:
        log.start("tiny", "{}", PROMPT)
    assert "cannot be brought from schema 1 to 2: OperationalError" in str(info.value)


def test_an_incomplete_migration_script_fails_with_sqlites_reason(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "runs.sqlite", migrations=[*_runlog.MIGRATIONS, "CREATE TABLE extra (a TEXT DEFAULT 'x"])
    with pytest.raises(RunLogError) as info:
        log.start("tiny", "{}", PROMPT)
    assert str(info.value).endswith(
        'cannot be brought from schema 1 to 2: OperationalError: unrecognized token: "\'x;"'
    )
