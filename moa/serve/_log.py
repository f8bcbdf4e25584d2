"""The request log of ``moa serve``: a JSON line per request on stderr, and each run in the run log.

Requests are handed over without waiting (the event loop never touches SQLite)
to one writer thread, which records what comes in within a tenth of a second in
one transaction on one database and then prints those requests' lines together.
Under load that is one commit for many requests instead of several connections
and commits for each: measured with ``python benchmarks/serve.py``, it is most of
what serving used to add at 50 concurrent clients.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

from moa._runlog import FinishedRun, RunLog, RunLogError
from moa._secrets import redact

Refusal = TypeVar("Refusal")

#: The most requests recorded in one transaction, and how long the writer gathers them after the first.
BATCH = 500
GATHER_S = 0.1
#: The most runs kept back while the run log cannot be written.
KEPT = 10_000
#: The most characters written at once: a pipe writes up to 4,096 bytes in one piece (the lines are ASCII: JSON).
ATOMIC = 4096


class RequestLog:
    """Call it once per request: ``(entry, recipe, messages, result or None, error or None)``; never blocks."""

    def __init__(self, path: Path | None, *, runlog: bool = True) -> None:
        self.runlog = RunLog(path) if runlog else None
        self._queue: queue.SimpleQueue[tuple[dict[str, Any], FinishedRun | None] | None] = queue.SimpleQueue()
        self._recipes: dict[int, tuple[Any, str]] = {}  # id(recipe) -> (recipe, its JSON): dumped once each
        self._warned = False  # the run log failed: warned once, until it works again
        self._kept: list[FinishedRun] = []  # runs not written yet, for that reason
        self._thread = threading.Thread(target=self._write, name="moa-serve-log", daemon=True)
        self._thread.start()

    def __call__(self, entry: dict[str, Any], recipe: Any, messages: Any, result: Any, exc: Any) -> None:
        run = None
        if self.runlog is not None and recipe is not None:  # (no recipe: refused before any run)
            partial = getattr(exc, "partial", None)
            calls = result.calls if result is not None else list(getattr(partial, "calls", None) or [])
            latency = result.latency_s if result is not None else 0.0
            run = FinishedRun(recipe=recipe.name, recipe_json=self._recipe_json(recipe), prompt=messages,
                              status="done" if result is not None else "failed", calls=calls, result=result,
                              error=entry["error"], started_at=time.time() - (latency or 0.0))  # fmt: skip
        self._queue.put((entry, run))

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (waiting ``timeout_s`` at most), then stop the writer."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _recipe_json(self, recipe: Any) -> str:
        known = self._recipes.get(id(recipe))
        if known is None or known[0] is not recipe:
            if len(self._recipes) >= 256:  # recipes made per request (overrides): keep the dict small
                self._recipes.clear()
            known = self._recipes[id(recipe)] = (recipe, recipe.model_dump_json())
        return known[1]

    def _write(self) -> None:
        while True:
            batch = [self._queue.get()]
            if batch[0] is not None:
                time.sleep(GATHER_S)  # what comes in meanwhile goes in the same transaction (no wake-up each)
            while batch[-1] is not None and len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            try:
                self._flush([item for item in batch if item is not None])
            except Exception as exc:  # the log must never stop the server, nor this thread
                print(f"moa serve: warning: requests could not be logged ({type(exc).__name__}: {exc})",
                      file=sys.stderr, flush=True)  # fmt: skip
            if stop:
                return

    def _flush(self, batch: list[tuple[dict[str, Any], FinishedRun | None]]) -> None:
        """Record the batch's runs (and any an earlier failure kept back), then print the batch's lines.

        When the run log cannot be written (locked past its timeout, a full disk), the lines are printed without a
        ``log_id``, the runs are kept (``KEPT`` at most, the newest) and written with the next batch that can be:
        one warning when it stops working, one line when it works again."""
        runs = [run for _, run in batch if run is not None]
        ids: list[int] = []
        if self.runlog is not None and (runs or self._kept):
            try:
                ids = self.runlog.record_finished([*self._kept, *runs])[len(self._kept) :]
            except RunLogError as failed:
                self._kept = [*self._kept, *runs][-KEPT:]
                if not self._warned:
                    print(f"moa serve: warning: {failed}; requests are kept and logged when it works again",
                          file=sys.stderr, flush=True)  # fmt: skip
                self._warned = True
            else:
                if self._warned:
                    print(f"moa serve: the run log works again ({len(self._kept)} kept request(s) written)",
                          file=sys.stderr, flush=True)  # fmt: skip
                self._kept, self._warned = [], False
        numbered = iter(ids)
        lines = []
        for entry, run in batch:
            if run is not None and ids:
                entry = {**entry, "log_id": next(numbered)}
            lines.append("moa serve: " + json.dumps(entry) + "\n")
        # Whole lines, at most a pipe's atomic write at a time: the lines of ``--workers`` never cut into each other.
        chunk, size = "", 0
        for line in lines:
            if chunk and size + len(line) > ATOMIC:
                sys.stderr.write(chunk)
                sys.stderr.flush()
                chunk, size = "", 0
            chunk, size = chunk + line, size + len(line)
        if chunk:
            sys.stderr.write(chunk)
            sys.stderr.flush()


def log_refused(log: Any, response: Refusal) -> Refusal:
    """A request refused before any run (401, 400, 404, 402, 413) is a line in the log too (no run: no run log)."""
    if log is not None:
        sent: Any = response
        error = json.loads(bytes(sent.body))["error"]
        entry = {"run_id": None, "recipe": None, "ok": False, "status": sent.status_code,
                 "error": error["message"][:300]}  # fmt: skip
        with contextlib.suppress(Exception):
            log(entry, None, None, None, None)
    return response


def log_run(log: Any, run_id: str, recipe: Any, messages: Any, result: Any, exc: BaseException | None) -> None:
    """Hand a request that ran to ``log`` (which must not block: it is called on the event loop)."""
    if log is None:
        return
    entry = {"run_id": run_id, "recipe": recipe.name, "ok": exc is None,
             "error": None if exc is None else redact(f"{type(exc).__name__}: {exc}")[:300],
             "cost_usd": result.cost_usd if result else None,
             "tokens": result.usage.total_tokens if result else None}  # fmt: skip
    with contextlib.suppress(Exception):
        log(entry, recipe, messages, result, exc)
