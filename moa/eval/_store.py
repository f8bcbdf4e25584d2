"""Crash-safe checkpoints: one JSON record per line, appended and fsync'd as each item finishes.

A ``kill -9`` can at worst leave a torn last line; it is cut off when the file
is opened again, so finished items are never lost or counted twice and a
re-run skips exactly what is on disk.  Any other line moa cannot read (edited
by hand, another tool's file, a line without its key) is an error naming the
file and line, raised before any call: it is never skipped silently or
overwritten.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

from moa._errors import ConfigError, RunError
from moa._prompt import clean_text


class CheckpointError(ConfigError):
    """A checkpoint line that moa did not write (or that was changed since)."""


class Checkpoint:
    """An append-only JSONL file of finished records, keyed by their ``key`` field.

    ``run`` is the digest of the run identity (``moa.eval._identity``) stamped
    on every record appended.
    """

    def __init__(self, path: Path, run: str | None = None) -> None:
        self.path = path
        self.run = run
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1  # drop the torn tail of an interrupted write
            with self.path.open("r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())

    def records(self) -> list[dict[str, Any]]:
        """Every record, in file order; a line moa did not write raises ``CheckpointError``."""
        if not self.path.exists():
            return []
        records = []
        with self.path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise self._bad(number, f"not JSON ({exc.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get("key"), str):
                    raise self._bad(number, "not a moa record (a JSON object with a string `key`)")
                records.append(record)
        return records

    def load(self) -> dict[str, dict[str, Any]]:
        """Finished records by key (the last one wins if a key was ever written twice)."""
        return {record["key"]: record for record in self.records()}

    def run_digests(self) -> set[str | None]:
        """The run identities found on the records (None for records without one)."""
        return {record.get("run") for record in self.records()}

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably; raises ``OSError`` (disk full...) with the file left as it was."""
        if self.run is not None:
            record = {**record, "run": self.run}
        # Half a character (a lone surrogate) cannot be stored as UTF-8: it becomes U+FFFD.
        data = clean_text(json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        # Unbuffered, so that a failed write can be undone exactly: no half record, nothing left in a buffer.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)

    def _bad(self, number: int, why: str) -> CheckpointError:
        return CheckpointError(
            f"{self.path}, line {number}: {why}. moa did not write this line; remove it, or re-run with "
            "--force-new to start a clean run (old files are kept in a superseded-* folder)"
        )


class OutputError(RunError):
    """A result file cannot be written (full disk, no permission, a folder in its place)."""


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file so that readers see the old or the new version, never half (no temporary left behind).

    Raises ``OutputError`` naming the file when it cannot be written.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary.open("w", encoding="utf-8") as handle:
            handle.write(clean_text(text))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise OutputError(f"cannot write {path}: {exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def write_json(path: Path, data: Any) -> None:
    """Standard JSON: a NaN or infinite number (a mean of nothing) is written as null, meaning unknown."""
    write_atomic(path, json.dumps(_finite(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(value) for value in data]
    return data


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
