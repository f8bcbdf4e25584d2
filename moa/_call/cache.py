"""A persistent call cache: answers stored by what was asked, so that the same call is never paid twice.

A call's key is a digest of its model, messages, settings (those that shape the
answer: not ``timeout``), whether it embeds, and its *occurrence*: the how-many-th
identical request of the run it is.  So the k samples of a Self-MoA (or two
debate agents on one model) stay k distinct answers, and a second run of a recipe
that differs only in its aggregator finds every proposer answer of the first.
Keys hold no secret: ``params`` never do, and the request's key is not part of it.

Stored in SQLite with write-ahead logging: many processes may read and write one
file at once; each answer is committed when it comes back, so a run killed half
way re-pays only the calls that were in flight.  Failed calls are not stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moa._errors import ConfigError
from moa._provider import Completion, Request, ToolRequest

#: Settings that do not change the answer (they are not part of the key).
UNKEYED = frozenset({"timeout", "max_retries"})
SCHEMA = 1


class CacheError(ConfigError):
    """The call cache file cannot be read or written (names the file and what to do)."""


class CallCache:
    """The answers of earlier calls, by key (``key``), in a SQLite file; hit and miss counts of this process.

    ``refresh``: look nothing up (every call is made again) but store what comes back.
    """

    def __init__(self, path: str | Path, *, refresh: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.refresh = refresh
        self.hits = 0
        self.misses = 0
        self.saved_usd = 0.0  # what the hits cost when they were made (priced ones)
        self.failure: str | None = None  # why the cache stopped working mid-run (a full disk): the run goes on
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"CallCache({str(self.path)!r}, hits={self.hits}, misses={self.misses})"

    def open(self) -> None:
        """Open the file now (created when missing): a file that is no cache fails here, before any call.
        Once open, it is not checked again (each run calls this)."""
        if self._db is not None or self.failure is not None:
            return
        with self._lock:
            try:
                self._connection().execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            except CacheError as exc:
                if not _out_of_space(exc.__context__):
                    raise
                self._stop(exc.__context__)  # type: ignore[arg-type]
            except sqlite3.Error as exc:
                if not _out_of_space(exc):
                    raise self._error(exc) from None
                self._stop(exc)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if tables and not ({"calls", "meta"} >= tables and _columns(db) == _COLUMNS):
                    db.close()  # someone else's database: not changed in any way
                    raise CacheError(
                        f"{self.path} is an SQLite database but not a moa call cache (its tables: "
                        f"{', '.join(sorted(tables))}); it was left as it was: give --cache a new file's path"
                    )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                    "created REAL NOT NULL, answer TEXT NOT NULL)"
                )
                db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
            except (sqlite3.Error, OSError) as exc:
                raise self._error(exc) from None
            self._db = db
        return self._db

    def _error(self, exc: BaseException) -> CacheError:
        return CacheError(
            f"the call cache {self.path} cannot be used ({type(exc).__name__}: {exc}); if it is a call cache, "
            "delete it (it only saves calls); if it is some other file, name a new one (--cache PATH); or run "
            "without one (--no-cache)"
        )

    def get(self, key: str) -> Completion | None:
        """The stored answer for ``key`` (None: none, or ``refresh``); counts a hit or a miss."""
        found = None
        if not self.refresh and self.failure is None:
            with self._lock:
                try:
                    row = self._connection().execute("SELECT answer FROM calls WHERE key = ?", (key,)).fetchone()
                except sqlite3.Error as exc:
                    self._stop(exc)
                    row = None
            if row is not None:
                found = _completion(json.loads(row[0]))
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
            self.saved_usd += found.cost_usd or 0.0
        return found

    def put(self, key: str, model: str, completion: Completion) -> None:
        """Store an answer (an answer already stored under ``key`` is kept; ``refresh``: replaced).

        A write that fails (a full disk) does not stop the run that paid for the answer: the cache stops, with
        one warning, and ``failure`` says why (summaries report it)."""
        if self.failure is not None:
            return
        answer = json.dumps(dataclasses.asdict(completion), ensure_ascii=False)
        with self._lock:
            try:
                self._connection().execute(
                    "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?)" if self.refresh else
                    "INSERT OR IGNORE INTO calls VALUES (?, ?, ?, ?)",
                    (key, model, time.time(), answer),
                )  # fmt: skip
            except sqlite3.Error as exc:
                self._stop(exc)

    async def lookup(self, key: str) -> Completion | None:
        """``get`` as the call pipeline asks it (a cache in another process, ``moa.distributed``, answers later)."""
        return self.get(key)

    async def store(self, key: str, model: str, completion: Completion) -> None:
        """``put`` as the call pipeline asks it."""
        self.put(key, model, completion)

    def _stop(self, exc: sqlite3.Error) -> None:
        """Stop using the cache for the rest of this process (it was opened fine: a full disk, a lost file)."""
        self.failure = f"{type(exc).__name__}: {exc}"
        print(f"moa: the call cache {self.path} stopped working ({self.failure}); the run goes on without it",
              file=sys.stderr)  # fmt: skip

    def stored(self) -> int:
        """How many answers the file holds."""
        with self._lock:
            try:
                return int(self._connection().execute("SELECT COUNT(*) FROM calls").fetchone()[0])
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    def summary(self) -> dict[str, Any]:
        """Hits, misses and the USD the hits saved, for run summaries."""
        found = {"path": str(self.path), "hits": self.hits, "misses": self.misses}
        found["saved_usd"] = round(self.saved_usd, 6)
        return {**found, "failure": self.failure} if self.failure else found

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class Occurrences:
    """How many identical requests a run has made so far: the n-th one gets its own key."""

    def __init__(self) -> None:
        self._seen: Counter[str] = Counter()

    def key(self, request: Request) -> str:
        base = _material(request)
        number = self._seen[base]
        self._seen[base] += 1
        return hashlib.sha256(f"{base}\n{number}".encode()).hexdigest()


_COLUMNS = ["key", "model", "created", "answer"]


def _columns(db: sqlite3.Connection) -> list[str]:
    return [row[1] for row in db.execute("PRAGMA table_info(calls)")]


def _out_of_space(exc: BaseException | None) -> bool:
    """A full disk (or file size limit): the run goes on without the cache, as it would without one."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("disk i/o error" in text or "disk is full" in text)


def _material(request: Request) -> str:
    params = {name: value for name, value in request.params.items() if name not in UNKEYED}
    body = {"schema": SCHEMA, "model": request.model, "messages": request.messages, "params": params,
            "embed": request.embed}  # fmt: skip
    return json.dumps(body, sort_keys=True, ensure_ascii=False, default=str)


def _completion(data: Mapping[str, Any]) -> Completion:
    fields = dict(data)
    fields["tool_calls"] = tuple(ToolRequest(**call) for call in fields.get("tool_calls") or ())
    fields["embeddings"] = tuple(tuple(vector) for vector in fields.get("embeddings") or ())
    return Completion(**fields)
