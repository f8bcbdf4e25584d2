"""The request log of `moa serve` (moa.serve._log): every request a JSON line and a run in the run log, written
off the event loop in batches, each line naming its own run."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import moa
from moa._runlog import RunLog
from moa.serve._log import RequestLog
from moa.testing import FakeProvider

RECIPE = {"name": "pair", "layers": [{"kind": "propose", "agents": [{"model": "openai/a"}, {"model": "openai/b"}]},
                                     {"kind": "aggregate", "agents": [{"model": "openai/c"}]}]}  # fmt: skip


def _entry(run_id: str, ok: bool = True) -> dict[str, object]:
    return {"run_id": run_id, "recipe": "pair", "ok": ok, "error": None if ok else "QuorumError: lost", "cost_usd": 0}


def test_many_requests_from_many_threads_are_each_logged_once_with_their_own_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = moa.load_recipe(RECIPE)
    results = {}
    for n in range(3):
        prompt = f"question {n}"
        results[prompt] = asyncio.run(moa.run(prompt, recipe, provider=FakeProvider(), api_key="k"))
    log = RequestLog(tmp_path / "runs.sqlite")
    started = threading.Barrier(4)

    def send(worker: int) -> None:
        started.wait()
        for n in range(50):
            prompt = f"question {n % 3}"
            log(_entry(f"run-{worker}-{n}"), recipe, [{"role": "user", "content": prompt}], results[prompt], None)

    threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log(_entry("run-failed", ok=False), recipe, [{"role": "user", "content": "q"}], None, RuntimeError("lost"))
    log.close()

    lines = [json.loads(line.removeprefix("moa serve: ")) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 201 and len({line["run_id"] for line in lines}) == 201
    runs = RunLog(tmp_path / "runs.sqlite")
    assert len({line["log_id"] for line in lines}) == 201
    for line in lines:  # each line's log_id is the run it describes
        stored = runs.get(line["log_id"])
        assert stored is not None
        if line["ok"]:
            prompt = stored["prompt"][0]["content"]
            assert stored["status"] == "done" and stored["output"] == results[prompt].output
            assert [c["model"] for c in stored["calls"]] == ["openai/a", "openai/b", "openai/c"]
            assert stored["recipe_json"]["name"] == "pair"
        else:
            assert (stored["status"], stored["error"], stored["calls"]) == ("failed", "QuorumError: lost", [])


def test_a_run_log_that_cannot_be_written_is_one_warning_and_the_lines_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocked = tmp_path / "runs.sqlite"
    blocked.mkdir()  # a folder where the database should be
    recipe = moa.load_recipe(RECIPE)
    log = RequestLog(blocked)
    for n in range(3):
        log(_entry(f"run-{n}", ok=False), recipe, [{"role": "user", "content": "q"}], None, RuntimeError("x"))
    log.close()
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if "warning" in line]
    assert len(warnings) == 1 and str(blocked) in warnings[0] and "requests are kept and logged" in warnings[0]
    entries = [json.loads(line.removeprefix("moa serve: ")) for line in err if line not in warnings]
    assert [e["run_id"] for e in entries] == ["run-0", "run-1", "run-2"] and all("log_id" not in e for e in entries)


def test_requests_logged_while_the_run_log_is_locked_are_written_when_it_is_free_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_LOG_TIMEOUT", "0.2")
    path = tmp_path / "runs.sqlite"
    RunLog(path).start("earlier", "{}", [])  # a log that exists
    recipe = moa.load_recipe(RECIPE)
    result = asyncio.run(moa.run("question 0", recipe, provider=FakeProvider(), api_key="k"))
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another program holds the file
    log = RequestLog(path)
    for n in range(2):
        log(_entry(f"run-{n}"), recipe, [{"role": "user", "content": "question 0"}], result, None)
    deadline = time.monotonic() + 60
    while not log._warned:  # the writer found the log locked (past its timeout)
        assert time.monotonic() < deadline, "the lock was never hit"
        time.sleep(0.02)
    locker.rollback()
    locker.close()
    log(_entry("run-2"), recipe, [{"role": "user", "content": "question 0"}], result, None)
    log.close()
    err = capsys.readouterr().err.splitlines()
    assert sum("warning" in line for line in err) == 1
    assert any("the run log works again (2 kept request(s) written)" in line for line in err)
    stored = [run["recipe"] for run in RunLog(path).recent(10)]
    assert sorted(stored) == ["earlier", "pair", "pair", "pair"]


def test_without_a_run_log_only_the_lines_are_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = RequestLog(tmp_path / "runs.sqlite", runlog=False)
    log(_entry("run-0"), moa.load_recipe(RECIPE), [{"role": "user", "content": "q"}], None, None)
    log.close()
    assert json.loads(capsys.readouterr().err.removeprefix("moa serve: "))["run_id"] == "run-0"
    assert not (tmp_path / "runs.sqlite").exists()
