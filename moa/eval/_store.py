"""Crash-safe checkpoints: one JSON record per line, appended and fsync'd as each item finishes.

A ``kill -9`` can at worst leave a torn last line; it is cut off when the file
is opened again, so finished items are never lost or counted twice and a
re-run skips exactly what is on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Checkpoint:
    """An append-only JSONL file of finished records, keyed by their ``key`` field."""

    def __init__(self, path: Path) -> None:
        self.path = path
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

    def load(self) -> dict[str, dict[str, Any]]:
        """Finished records by key (the last one wins if a key was ever written twice)."""
        records: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return records
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    record = json.loads(line)
                    records[str(record["key"])] = record
        return records

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file so that readers see the old or the new version, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
