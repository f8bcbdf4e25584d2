"""Run logs: every CLI run recorded in a SQLite database.

Where: ``--log-db PATH``, else ``$MOA_LOG_DB``, else ``$XDG_DATA_HOME/moa/runs.sqlite``
(``~/.local/share/moa/runs.sqlite``).  A run is written when it starts and
updated when it ends (done, failed or interrupted), with the whole trace:
prompt, recipe, every call's messages, output or error, tokens, cost and
latency.  API keys are never part of a trace, and are scrubbed from error text.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moa._errors import MoAError
from moa.result import AgentOutput, MoAResult

# Version 1: the schema of the first release, which wrote it without a version (user_version 0).
# IF NOT EXISTS makes the step 0 -> 1 adopt such a database as it is, and create a new one.
_SCHEMA_V1 = """
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


Migration = Callable[[sqlite3.Connection], None] | str
"""One schema step, from version n to n + 1: a function given the connection, or an SQL script.

Every step runs inside the one transaction of the migration (which holds the write lock): a
function must not commit, and a script is run statement by statement (not ``executescript``).
"""

MIGRATIONS: tuple[Migration, ...] = (_SCHEMA_V1,)
"""``MIGRATIONS[n]`` takes a database from version n to n + 1; the last version is ``len(MIGRATIONS)``.

Append only: a released step is never edited (databases out there have run it).
"""


def default_path() -> Path:
    """The database the CLI uses when no ``--log-db`` is given."""
    explicit = os.environ.get("MOA_LOG_DB")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "moa" / "runs.sqlite"


def default_timeout() -> float:
    """Seconds to wait for a locked run log: ``$MOA_LOG_TIMEOUT``, else 10."""
    try:
        value = float(os.environ.get("MOA_LOG_TIMEOUT", "10"))
    except ValueError:
        return 10.0
    return value if 0 <= value < 3600 else 10.0


class RunLogError(MoAError):
    """The run log cannot be opened, read or written (locked, corrupt, read-only, no such folder)."""


@dataclass(frozen=True)
class FinishedRun:
    """A run that has ended, to be recorded whole (``RunLog.record_finished``)."""

    recipe: str
    recipe_json: str
    prompt: Sequence[dict[str, Any]]
    status: str  # "done" or "failed"
    calls: Sequence[AgentOutput]
    result: MoAResult | None = None
    error: str | None = None
    started_at: float = 0.0


class RunLog:
    """A run-log database (created on first use, brought up to this moa's schema when opened).

    Every failure of the database (or its folder) is a ``RunLogError`` naming
    the file; the CLI treats it as a warning, so a broken log never costs an answer.
    A database written by a newer moa (a later schema version) is refused, never modified.
    """

    def __init__(
        self, path: Path | None = None, *, timeout_s: float | None = None, migrations: Sequence[Migration] | None = None
    ) -> None:
        self.path = path or default_path()
        self.timeout_s = default_timeout() if timeout_s is None else timeout_s
        self.migrations = tuple(MIGRATIONS if migrations is None else migrations)

    @property
    def schema_version(self) -> int:
        """The schema version this moa writes (and the newest it can read)."""
        return len(self.migrations)

    @contextmanager
    def _db(self, timeout_s: float | None = None) -> Iterator[sqlite3.Connection]:
        wait = self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: every transaction below is begun and ended explicitly.
            with closing(sqlite3.connect(self.path, timeout=wait, isolation_level=None)) as db:
                db.row_factory = sqlite3.Row
                self._migrate(db)
                db.execute("BEGIN")  # one transaction
                try:
                    yield db
                except BaseException:
                    db.rollback()
                    raise
                db.commit()
        except (sqlite3.Error, OSError, ValueError) as exc:  # ValueError: text that cannot be stored
            raise RunLogError(f"the run log {self.path} cannot be used: {exc}") from None

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring the database to ``schema_version``; a current one is only read (one PRAGMA)."""
        if self._checked_version(db) == self.schema_version:
            return
        # One migrator at a time: the write lock is taken before the version is read again, so a
        # concurrent opener waits here (up to the timeout) and then finds the work done.
        db.execute("BEGIN IMMEDIATE")
        try:
            version = self._checked_version(db)
            for n in range(version, self.schema_version):
                step = self.migrations[n]
                try:
                    if isinstance(step, str):
                        _execute_script(db, step)
                    else:
                        step(db)
                except Exception as exc:  # a broken step is a warning like any run-log failure, never a lost run
                    raise RunLogError(
                        f"the run log {self.path} cannot be brought from schema {n} to {n + 1}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
            if version != self.schema_version:
                db.execute(f"PRAGMA user_version = {self.schema_version:d}")
            db.commit()
        except BaseException:
            db.rollback()
            raise

    def _checked_version(self, db: sqlite3.Connection) -> int:
        version = _user_version(db)
        if version < 0:
            raise RunLogError(f"the run log {self.path} has a schema version moa never writes ({version})")
        if version > self.schema_version:
            raise RunLogError(
                f"the run log {self.path} was written by a newer moa (schema {version}, this moa knows up to "
                f"{self.schema_version}); it is left untouched: use that moa, or another --log-db / $MOA_LOG_DB"
            )
        return version

    def start(self, recipe: str, recipe_json: str, prompt: Sequence[dict[str, Any]]) -> int:
        with self._db() as db:
            cursor = db.execute(
                "INSERT INTO runs (started_at, status, recipe, recipe_json, prompt_json) VALUES (?, ?, ?, ?, ?)",
                (time.time(), "running", recipe, recipe_json, json.dumps(list(prompt))),
            )
            return int(cursor.lastrowid or 0)

    def finish(
        self,
        run_id: int,
        status: str,
        calls: Sequence[AgentOutput],
        *,
        result: MoAResult | None = None,
        error: str | None = None,
    ) -> None:
        """Record how a run ended and every call it made (for a partial run: the finished ones)."""
        usage = (sum(c.usage.prompt_tokens for c in calls), sum(c.usage.completion_tokens for c in calls))
        cost = result.cost_usd if result else _sum_cost(calls)
        latency = result.latency_s if result else None
        with self._db() as db:
            db.execute(
                "UPDATE runs SET finished_at=?, status=?, output=?, error=?, calls=?, failed_calls=?, "
                "prompt_tokens=?, completion_tokens=?, cost_usd=?, latency_s=? WHERE id=?",
                (
                    time.time(),
                    status,
                    result.output if result else None,
                    error,
                    len(calls),
                    sum(not c.ok for c in calls),
                    usage[0],
                    usage[1],
                    cost,
                    latency,
                    run_id,
                ),
            )
            db.execute("DELETE FROM calls WHERE run_id=?", (run_id,))
            db.executemany(_INSERT_CALL, [_call_row(run_id, position, c) for position, c in enumerate(calls)])

    def record_finished(self, runs: Sequence[FinishedRun]) -> list[int]:
        """Record runs that have ended, all in one transaction (a server logs many at once); their ids, in order."""
        ids = []
        with self._db() as db:
            for run in runs:
                calls = run.calls
                cost = run.result.cost_usd if run.result else _sum_cost(calls)
                cursor = db.execute(
                    "INSERT INTO runs (started_at, finished_at, status, recipe, recipe_json, prompt_json, output, "
                    "error, calls, failed_calls, prompt_tokens, completion_tokens, cost_usd, latency_s) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run.started_at,
                        time.time(),
                        run.status,
                        run.recipe,
                        run.recipe_json,
                        json.dumps(list(run.prompt)),
                        run.result.output if run.result else None,
                        run.error,
                        len(calls),
                        sum(not c.ok for c in calls),
                        sum(c.usage.prompt_tokens for c in calls),
                        sum(c.usage.completion_tokens for c in calls),
                        cost,
                        run.result.latency_s if run.result else None,
                    ),
                )
                run_id = int(cursor.lastrowid or 0)
                db.executemany(_INSERT_CALL, [_call_row(run_id, position, c) for position, c in enumerate(calls)])
                ids.append(run_id)
        return ids

    def record_call(self, run_id: int, position: int, call: AgentOutput) -> None:
        """Record one finished call while the run goes on, so that not even ``kill -9`` loses it.

        Called from the run's event loop: a locked log is waited on for half a second at most.
        """
        with self._db(timeout_s=0.5) as db:
            db.execute(_INSERT_CALL.replace("INSERT", "INSERT OR REPLACE", 1), _call_row(run_id, position, call))
            db.execute("UPDATE runs SET calls=(SELECT COUNT(*) FROM calls WHERE run_id=?) WHERE id=?", (run_id, run_id))

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self._db() as db:
            rows = db.execute(
                "SELECT id, started_at, status, recipe, prompt_json, calls, failed_calls, prompt_tokens, "
                "completion_tokens, cost_usd, latency_s FROM runs ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [_summary(row) for row in rows]

    def get(self, run_id: int) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        with self._db() as db:
            row = db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                return None
            calls = db.execute("SELECT * FROM calls WHERE run_id=? ORDER BY position", (run_id,)).fetchall()
        run = dict(row)
        run["recipe_json"] = json.loads(run["recipe_json"])
        run["prompt"] = json.loads(run.pop("prompt_json"))
        run["calls"] = []
        for call in calls:
            entry = dict(call)
            entry["messages"] = json.loads(entry.pop("messages_json"))
            error = entry.pop("error_json")
            entry["error"] = json.loads(error) if error else None
            del entry["run_id"]
            run["calls"].append(entry)
        return run


_INSERT_CALL = "INSERT INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _user_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _execute_script(db: sqlite3.Connection, script: str) -> None:
    """Run an SQL script statement by statement, inside the open transaction.

    (``executescript`` would commit it first.)
    """
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \t\r\n;"):
                db.execute(statement)
            statement = ""
    if statement.strip(" \t\r\n;"):
        db.execute(statement)  # an incomplete tail: let SQLite say what is wrong with it


def _call_row(run_id: int, position: int, c: AgentOutput) -> tuple[Any, ...]:
    return (
        run_id,
        position,
        c.layer,
        c.agent,
        c.sample,
        c.step,
        c.name,
        c.model,
        json.dumps(c.messages),
        c.text,
        c.error.model_dump_json() if c.error else None,
        c.usage.prompt_tokens,
        c.usage.completion_tokens,
        c.cost_usd,
        c.latency_s,
        c.attempts,
    )


def _sum_cost(calls: Sequence[AgentOutput]) -> float | None:
    done = [c for c in calls if c.ok]
    if any(c.cost_usd is None for c in done):
        return None
    return sum(c.cost_usd or 0.0 for c in done)


def _summary(row: sqlite3.Row) -> dict[str, Any]:
    prompt = json.loads(row["prompt_json"])
    last = prompt[-1]["content"] if prompt else ""
    summary = dict(row)
    del summary["prompt_json"]
    summary["prompt"] = last
    return summary
