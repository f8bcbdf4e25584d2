"""The run log's schema: versioned with ``PRAGMA user_version``, migrated once, never downgraded."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from moa import _runlog
from moa._runlog import MIGRATIONS, RunLog, RunLogError
from moa.result import AgentOutput, CallError, Usage

# The DDL of the release before schema versions, exactly as it wrote it (`git show c23f7d8:moa/_runlog.py`).
OLD_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,              -- running | done | failed | interrupted
    recipe TEXT NOT NULL,
    recipe_json TEXT NOT NULL,
    prompt_json TEXT NOT NULL,
    output TEXT,
    error TEXT,
    calls INTEGER NOT NULL DEFAULT 0,
    failed_calls INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL,
    latency_s REAL
);
CREATE TABLE IF NOT EXISTS calls (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    position INTEGER NOT NULL,
    layer INTEGER NOT NULL,
    agent INTEGER NOT NULL,
    sample INTEGER NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    messages_json TEXT NOT NULL,
    text TEXT,
    error_json TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL,
    latency_s REAL NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (run_id, position)
);
"""

PROMPT = [{"role": "user", "content": "What is MoA?"}]
RECIPE_JSON = json.dumps({"name": "tiny", "layers": []})
ERROR_JSON = json.dumps({"type": "RateLimitedError", "message": "429", "status_code": 429, "transient": True})


def old_database(path: Path) -> Path:
    """A log as the previous release left it: no user_version, one finished run with two calls."""
    with sqlite3.connect(path) as db:
        db.executescript(OLD_DDL)
        db.execute(
            "INSERT INTO runs VALUES (1, 100.5, 107.25, 'done', 'tiny', ?, ?, 'the answer', NULL, 2, 1, 30, 12, "
            "0.0042, 6.75)",
            (RECIPE_JSON, json.dumps(PROMPT)),
        )
        db.execute(
            "INSERT INTO calls VALUES (1, 0, 1, 0, 0, 0, 'a', 'openai/a', ?, 'hello', NULL, 10, 5, 0.001, 1.5, 1)",
            (json.dumps(PROMPT),),
        )
        db.execute(
            "INSERT INTO calls VALUES (1, 1, 1, 1, 0, 0, 'b', 'openai/b', ?, NULL, ?, 0, 0, NULL, 3.0, 4)",
            (json.dumps(PROMPT), ERROR_JSON),
        )
    return path


def dump(path: Path) -> dict[str, Any]:
    """Everything in a log that a migration could lose: every table's schema and rows."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {
            "schema": db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall(),
            **{table: db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall() for table in tables},
        }


def user_version(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def call(name: str, position: int = 0) -> AgentOutput:
    return AgentOutput(
        layer=1,
        agent=position,
        name=name,
        model=f"openai/{name}",
        messages=PROMPT,
        text=f"reply {name}",
        usage=Usage(prompt_tokens=3, completion_tokens=4),
        cost_usd=0.5,
        latency_s=0.25,
        attempts=1,
    )


@pytest.fixture
def traced_statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every SQL statement any connection runs while the test does."""
    statements: list[str] = []
    connect = sqlite3.connect

    def tracing_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db: sqlite3.Connection = connect(*args, **kwargs)
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr(sqlite3, "connect", tracing_connect)
    yield statements


WRITES = ("CREATE", "INSERT", "UPDATE", "DELETE", "REPLACE", "ALTER", "DROP", "BEGIN IMMEDIATE", "BEGIN EXCLUSIVE")


def writes_in(statements: list[str]) -> list[str]:
    return [s for s in statements if s.strip().upper().startswith(WRITES) or "USER_VERSION =" in s.upper()]


# ---- version 1, and the logs of the release before it ----------------------------------------------------------


def test_a_new_log_is_created_at_the_current_version(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "sub" / "runs.sqlite")
    assert log.schema_version == len(MIGRATIONS) == 1
    run_id = log.start("tiny", RECIPE_JSON, PROMPT)
    log.record_call(run_id, 0, call("a"))
    log.finish(run_id, "done", [call("a"), call("b", 1)], error=None)
    assert user_version(log.path) == 1
    run = log.get(run_id)
    assert run is not None and run["status"] == "done" and [c["name"] for c in run["calls"]] == ["a", "b"]
    assert [r["id"] for r in log.recent()] == [run_id]


def test_a_log_of_the_release_before_versions_is_adopted_as_version_1_without_loss(tmp_path: Path) -> None:
    path = old_database(tmp_path / "runs.sqlite")
    assert user_version(path) == 0
    before = dump(path)

    log = RunLog(path)
    (summary,) = log.recent()
    assert summary == {
        "id": 1,
        "started_at": 100.5,
        "status": "done",
        "recipe": "tiny",
        "calls": 2,
        "failed_calls": 1,
        "prompt_tokens": 30,
        "completion_tokens": 12,
        "cost_usd": 0.0042,
        "latency_s": 6.75,
        "prompt": "What is MoA?",
    }
    run = log.get(1)
    assert run is not None
    assert (run["finished_at"], run["output"], run["recipe_json"], run["prompt"]) == (
        107.25,
        "the answer",
        json.loads(RECIPE_JSON),
        PROMPT,
    )
    first, second = run["calls"]
    assert first["text"] == "hello" and first["error"] is None and first["cost_usd"] == 0.001
    assert second["text"] is None and second["error"] == json.loads(ERROR_JSON) and second["attempts"] == 4
    assert user_version(path) == 1
    assert dump(path) == before  # the same tables, the same rows: only the version changed

    # And it goes on working as a current log.
    run_id = log.start("tiny", RECIPE_JSON, PROMPT)
    log.record_call(run_id, 0, call("c"))
    assert run_id == 2 and [r["id"] for r in log.recent()] == [2, 1]
    assert dump(path)["runs"][0] == before["runs"][0]


def test_opening_a_current_log_writes_nothing(tmp_path: Path, traced_statements: list[str]) -> None:
    log = RunLog(tmp_path / "runs.sqlite")
    run_id = log.start("tiny", RECIPE_JSON, PROMPT)
    assert any(s.strip().startswith("CREATE TABLE") for s in traced_statements)  # the first open did create it
    assert "BEGIN IMMEDIATE" in traced_statements
    before = (log.path.read_bytes(), log.path.stat().st_mtime_ns)

    traced_statements.clear()
    log.recent()
    log.get(run_id)
    RunLog(log.path).recent()
    assert traced_statements.count("PRAGMA user_version") == 3  # one read of the version per opening
    assert writes_in(traced_statements) == []
    assert (log.path.read_bytes(), log.path.stat().st_mtime_ns) == before

    # Reading works while another connection holds the write lock: the opening took none.
    holder = sqlite3.connect(log.path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        assert [r["id"] for r in RunLog(log.path, timeout_s=0).recent()] == [run_id]
        with pytest.raises(RunLogError, match=r"runs\.sqlite cannot be used: database is locked"):
            RunLog(log.path, timeout_s=0).start("tiny", RECIPE_JSON, PROMPT)  # writing does need the lock
    finally:
        holder.close()


# ---- logs from a newer moa -------------------------------------------------------------------------------------

ACTIONS: dict[str, Callable[[RunLog], object]] = {
    "recent": lambda log: log.recent(),
    "get": lambda log: log.get(1),
    "start": lambda log: log.start("tiny", RECIPE_JSON, PROMPT),
    "record_call": lambda log: log.record_call(1, 5, call("x")),
    "finish": lambda log: log.finish(1, "failed", [], error="boom"),
}


@pytest.mark.parametrize("action", ACTIONS)
def test_a_log_written_by_a_newer_moa_is_refused_and_left_untouched(
    tmp_path: Path, action: str, traced_statements: list[str]
) -> None:
    path = old_database(tmp_path / "runs.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE call_cache (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("PRAGMA user_version = 7")
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    traced_statements.clear()

    with pytest.raises(RunLogError) as caught:
        ACTIONS[action](RunLog(path))
    assert str(caught.value).startswith(
        f"the run log {path} was written by a newer moa (schema 7, this moa knows up to 1)"
    )
    assert writes_in(traced_statements) == []
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.sqlite"]  # no journal left behind either


def test_a_log_with_a_negative_version_is_refused_untouched(tmp_path: Path) -> None:
    path = old_database(tmp_path / "runs.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = -1")
    before = path.read_bytes()
    with pytest.raises(RunLogError, match=r"runs\.sqlite has a schema version moa never writes \(-1\)"):
        RunLog(path).start("tiny", RECIPE_JSON, PROMPT)
    assert path.read_bytes() == before


# ---- migrations ------------------------------------------------------------------------------------------------


def test_a_migration_chain_runs_each_step_once_in_order_and_records_the_version(tmp_path: Path) -> None:
    path = old_database(tmp_path / "runs.sqlite")
    ran: list[str] = []

    def add_cache(db: sqlite3.Connection) -> None:  # 1 -> 2, a function
        ran.append("1->2")
        db.execute("CREATE TABLE call_cache (key TEXT PRIMARY KEY, value TEXT)")  # fails if run twice

    search = """
        -- 2 -> 3, a script; its semicolons in comments; and 'strings;' do not split it
        CREATE TABLE search_results (id INTEGER PRIMARY KEY, query TEXT NOT NULL);
        INSERT INTO search_results (query) VALUES ('a; b');
        CREATE INDEX search_by_query ON search_results (query);  -- trailing; comment
    """
    chain = (*MIGRATIONS, add_cache, search)
    before = dump(path)

    log = RunLog(path, migrations=chain)
    assert log.schema_version == 3
    assert [r["id"] for r in log.recent()] == [1]  # 0 -> 1 -> 2 -> 3 on the first opening
    assert ran == ["1->2"] and user_version(path) == 3
    after = dump(path)
    assert after["runs"] == before["runs"] and after["calls"] == before["calls"]
    assert after["call_cache"] == [] and after["search_results"] == [(1, "a; b")]
    assert ("index", "search_by_query") in [(t, n) for t, n, _ in after["schema"]]

    for _ in range(3):  # later openings find it current
        RunLog(path, migrations=chain).start("tiny", RECIPE_JSON, PROMPT)
    assert ran == ["1->2"] and user_version(path) == 3

    # A version-1 log takes only the steps it lacks.
    current = tmp_path / "current.sqlite"
    RunLog(current).recent()
    RunLog(current).start("tiny", RECIPE_JSON, PROMPT)
    ran.clear()
    RunLog(current, migrations=chain).recent()
    assert ran == ["1->2"] and user_version(current) == 3

    # And this moa, which knows only version 1, now refuses both.
    with pytest.raises(RunLogError, match=r"schema 3, this moa knows up to 1"):
        RunLog(path).recent()


def test_a_monkeypatched_migration_list_is_used_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runlog, "MIGRATIONS", (*MIGRATIONS, "CREATE TABLE call_cache (key TEXT PRIMARY KEY)"))
    log = RunLog(tmp_path / "runs.sqlite")
    log.recent()
    assert log.path.exists() is False  # recent() never creates a log
    log.start("tiny", RECIPE_JSON, PROMPT)
    assert user_version(log.path) == 2 and "call_cache" in dump(log.path)


@pytest.mark.parametrize("failure", ["sql", "python"])
def test_a_failing_migration_leaves_the_log_as_it_was(tmp_path: Path, failure: str) -> None:
    path = old_database(tmp_path / "runs.sqlite")
    before_bytes, before = path.read_bytes(), dump(path)

    def half_done(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE call_cache (key TEXT PRIMARY KEY)")
        db.execute("DELETE FROM calls")
        if failure == "sql":
            db.execute("ALTER TABLE no_such_table ADD COLUMN x")
        raise ValueError("a bug in the migration")

    cause = r"OperationalError: no such table: no_such_table" if failure == "sql" else r"ValueError: a bug"
    with pytest.raises(RunLogError, match=rf"the run log .*runs\.sqlite cannot be brought from schema 1 to 2: {cause}"):
        RunLog(path, migrations=(*MIGRATIONS, half_done)).recent()
    # One transaction: neither step 0 -> 1 nor the half of 1 -> 2 is kept, and the version is still 0.
    assert dump(path) == before and user_version(path) == 0 and path.read_bytes() == before_bytes
    assert RunLog(path).get(1) is not None and user_version(path) == 1


def test_a_locked_log_that_needs_migrating_is_a_run_log_error_and_unchanged(tmp_path: Path) -> None:
    path = old_database(tmp_path / "runs.sqlite")
    before = path.read_bytes()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(RunLogError, match=r"the run log .*runs\.sqlite cannot be used: database is locked"):
            RunLog(path, timeout_s=0).recent()
    finally:
        holder.close()
    assert path.read_bytes() == before and user_version(path) == 0


def test_two_openers_at_once_migrate_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both openers read the old version, and the second begins its transaction while the first migrates.

    BEGIN IMMEDIATE makes the second wait for the first to commit, then find the version current and skip.
    (With a deferred BEGIN the second would read version 1 too and fail, or run the step again.)
    """
    path = tmp_path / "runs.sqlite"
    RunLog(path).start("tiny", RECIPE_JSON, PROMPT)
    names = ("first", "second")
    # The timeouts below only turn a bug into a failure instead of a hang; nothing waits for a set time.
    both_read = threading.Barrier(2, timeout=30)
    began = {name: threading.Event() for name in names}
    read_in: set[str] = set()
    ran: list[str] = []
    real_user_version, real_connect = _runlog._user_version, sqlite3.connect

    def user_version_then_meet(db: sqlite3.Connection) -> int:
        version: int = real_user_version(db)
        me = threading.current_thread().name
        if me not in read_in:  # each opener's first read: wait until the other has read the old version too
            read_in.add(me)
            both_read.wait()
        return version

    def connect_noting_begins(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db: sqlite3.Connection = real_connect(*args, **kwargs)
        me = threading.current_thread().name

        def trace(statement: str) -> None:  # called as a statement starts, before it waits for a lock
            if statement.startswith("BEGIN") and me in began:
                began[me].set()

        db.set_trace_callback(trace)
        return db

    def add_cache(db: sqlite3.Connection) -> None:
        me = threading.current_thread().name
        ran.append(me)
        (other,) = set(names) - {me}
        assert began[other].wait(timeout=30), "the other opener never began a transaction"
        db.execute("CREATE TABLE call_cache (key TEXT PRIMARY KEY)")  # a second run would fail

    monkeypatch.setattr(_runlog, "_user_version", user_version_then_meet)
    monkeypatch.setattr(sqlite3, "connect", connect_noting_begins)
    results: dict[str, object] = {}

    def opener() -> None:
        try:
            log = RunLog(path, timeout_s=30, migrations=(*MIGRATIONS, add_cache))
            results[threading.current_thread().name] = log.recent()
        except BaseException as exc:
            results[threading.current_thread().name] = exc

    threads = [threading.Thread(target=opener, name=name) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert read_in == set(names) and all(event.is_set() for event in began.values())
    assert len(ran) == 1, ran
    assert all(isinstance(r, list) and len(r) == 1 for r in results.values()), results
    assert user_version(path) == 2


def test_an_opener_during_a_migration_does_not_start_migrating_too(tmp_path: Path) -> None:
    """Deterministic: a second connection opens the log from inside the first one's migration step."""
    path = tmp_path / "runs.sqlite"
    RunLog(path).start("tiny", RECIPE_JSON, PROMPT)
    ran: list[str] = []
    inner: list[BaseException] = []

    def add_cache(db: sqlite3.Connection) -> None:
        ran.append("outer" if not ran else "inner")
        if len(ran) == 1:
            try:  # the outer migration holds the write lock; a second opener must wait for it (here: give up)
                RunLog(path, timeout_s=0, migrations=chain).recent()
            except RunLogError as exc:
                inner.append(exc)
        db.execute("CREATE TABLE call_cache (key TEXT PRIMARY KEY)")

    chain = (*MIGRATIONS, add_cache)
    RunLog(path, migrations=chain).recent()
    assert ran == ["outer"]  # the second opener read version 1 but never began the step
    assert len(inner) == 1 and "database is locked" in str(inner[0])
    assert user_version(path) == 2
    RunLog(path, timeout_s=0, migrations=chain).recent()
    assert ran == ["outer"]


CHILD = """
import sys
from pathlib import Path
from moa._runlog import MIGRATIONS, RunLog
sys.stdin.read(1)  # all start together
step = "CREATE TABLE migrated (by TEXT); INSERT INTO migrated VALUES ('{name}')"
RunLog(Path(sys.argv[1]), migrations=(*MIGRATIONS, step.format(name=sys.argv[2]))).recent()
"""


@pytest.mark.slow
def test_processes_opening_an_old_log_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = old_database(tmp_path / "runs.sqlite")
    before = dump(path)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(i)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    errors = [child.communicate(b"go", timeout=600)[1].decode() for child in children]
    assert [child.returncode for child in children] == [0, 0, 0, 0], errors
    after = dump(path)
    assert len(after["migrated"]) == 1 and user_version(path) == 2
    assert after["runs"] == before["runs"] and after["calls"] == before["calls"]


def test_run_log_errors_still_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    path.write_bytes(b"this is not a database, just bytes " * 100)
    with pytest.raises(RunLogError, match=r"the run log .*runs\.sqlite cannot be used: file is not a database"):
        RunLog(path).recent()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(RunLogError, match=r"the run log .*blocker/runs\.sqlite cannot be used"):
        RunLog(blocker / "runs.sqlite").start("tiny", RECIPE_JSON, PROMPT)


def test_the_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOA_LOG_TIMEOUT", "0.25")
    assert RunLog(tmp_path / "x.sqlite").timeout_s == 0.25
    monkeypatch.setenv("MOA_LOG_TIMEOUT", "nonsense")
    assert RunLog(tmp_path / "x.sqlite").timeout_s == 10.0
    assert RunLog(tmp_path / "x.sqlite", timeout_s=1.0).timeout_s == 1.0


def test_finish_replaces_the_calls_recorded_while_running(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "runs.sqlite")
    run_id = log.start("tiny", RECIPE_JSON, PROMPT)
    log.record_call(run_id, 0, call("a"))
    log.record_call(run_id, 0, call("a"))  # recorded twice: replaced, not duplicated
    failed = call("b", 1).model_copy(update={"text": None, "error": CallError(type="RateLimitedError", message="429")})
    log.record_call(run_id, 1, failed)
    running = log.get(run_id)
    assert running is not None and running["calls"][1]["error"]["type"] == "RateLimitedError"
    assert log.recent()[0]["calls"] == 2
    log.finish(run_id, "interrupted", [call("a")], error="SIGTERM")
    run = log.get(run_id)
    assert run is not None and run["status"] == "interrupted" and run["error"] == "SIGTERM"
    assert [c["name"] for c in run["calls"]] == ["a"] and run["calls"][0]["cost_usd"] == 0.5
