"""The ``--out`` folder of an eval: one writer at a time, one run's records in it, nothing thrown away.

- **Lock**: ``.moa.lock`` is held (``flock``) for the whole command; a second
  ``moa eval`` on the same folder is refused at once instead of paying for
  every item a second time.
- **Identity**: before any call, each part (generation, judge) checks that the
  folder's records were made by the same recipe, settings, judge and prompt
  (``moa.eval._identity``).  A difference is refused in one line naming it;
  with ``--force-new`` the old files of that part are moved to
  ``superseded-<time>/`` (never deleted) and the part starts clean.
- **Summary**: a ``summary.json`` that cannot be read is reported before any
  call, not after the paid work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from moa._errors import ConfigError
from moa.eval._common import SUMMARY_FILE, DataError
from moa.eval._identity import Identity
from moa.eval._store import Checkpoint, CheckpointError, write_json

LOCK_FILE = ".moa.lock"
ARCHIVE_PREFIX = "superseded-"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock, the rest still holds
    fcntl = None  # type: ignore[assignment]


class RunIdentityError(ConfigError):
    """The ``--out`` folder holds records of a different run (recipe, settings, judge...)."""


class FolderBusyError(ConfigError):
    """Another ``moa eval`` is writing to the same ``--out`` folder."""


class OutDir:
    """An eval's output folder, locked while this process uses it."""

    def __init__(self, path: Path, *, force_new: bool = False) -> None:
        self.path = path
        self.force_new = force_new
        self._lock: IO[str] | None = None
        self._archive: Path | None = None

    def __enter__(self) -> OutDir:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = (self.path / LOCK_FILE).open("a+", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot use --out {self.path}: {exc}") from None
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise FolderBusyError(
                    f"{self.path} is being written by another moa eval ({holder}); wait for it to finish "
                    "or choose another --out"
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._lock = handle
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    # ------------------------------------------------------------- summary

    def read_summary(self) -> dict[str, Any]:
        """``summary.json`` (empty when there is none); a broken one is a ``DataError`` before any call."""
        path = self.path / SUMMARY_FILE
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            if self.force_new:
                self._move_aside([path])
                return {}
            raise DataError(
                f"{path} cannot be read ({exc}); move it away, or re-run with --force-new to start a clean run "
                "(old files are kept in a superseded-* folder)"
            ) from None
        if not isinstance(data, dict):
            raise DataError(f"{path} is not a moa summary (a JSON object expected); move it away or use --force-new")
        return data

    # ------------------------------------------------------------ identity

    def claim(self, identity: Identity, checkpoint: str, files: Iterable[str], summary_keys: Iterable[str]) -> None:
        """Make sure this folder's ``identity.part`` belongs to ``identity``, then record it in the summary.

        ``checkpoint`` is the part's JSONL file; ``files`` (glob patterns) and
        ``summary_keys`` are what the part owns, moved aside or dropped by ``--force-new``.
        """
        summary = self.read_summary()
        problem = self._conflict(identity, _stored_identity(summary, identity.part), checkpoint)
        if problem is not None:
            if not self.force_new:
                raise RunIdentityError(
                    f"{self.path} already holds a {identity.part} made with a different {problem}; re-run with "
                    f"--force-new to start it clean (the old files are moved to {self.path}/{ARCHIVE_PREFIX}*/), "
                    "or choose another --out"
                )
            self._move_aside([p for pattern in files for p in self.path.glob(pattern)])
            summary = self.read_summary()
            for key in summary_keys:
                summary.pop(key, None)
        identities = summary.get("identity")
        summary["identity"] = {
            **(identities if isinstance(identities, dict) else {}),
            identity.part: identity.to_json(),
        }
        write_json(self.path / SUMMARY_FILE, summary)

    def _conflict(self, identity: Identity, stored: dict[str, Any] | None, checkpoint: str) -> str | None:
        """What differs between this run and the folder's records (None when nothing does).

        A stored identity that is not moa's (edited by hand) counts as different.
        """
        path = self.path / checkpoint
        try:
            digests = Checkpoint(path).run_digests() if path.exists() else set()
        except CheckpointError:
            if self.force_new:
                return "checkpoint (it holds lines moa cannot read)"
            raise
        if stored is not None and stored.get("digest") != identity.digest:
            return identity.changes_from(stored)
        foreign = digests - {identity.digest}
        if foreign:
            if None in foreign:
                return f"moa version or tool ({checkpoint} has records without a run identity)"
            return f"run ({checkpoint} has records of {len(foreign)} other run(s); summary.json does not say which)"
        return None

    def _move_aside(self, paths: list[Path]) -> None:
        """Move files into this run's ``superseded-<time>/`` folder (made once): old results are never deleted."""
        present = [p for p in paths if p.exists() and p.name != LOCK_FILE and not p.name.startswith(ARCHIVE_PREFIX)]
        if not present:
            return
        if self._archive is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            archive = self.path / f"{ARCHIVE_PREFIX}{stamp}"
            suffix = 1
            while archive.exists():
                suffix += 1
                archive = self.path / f"{ARCHIVE_PREFIX}{stamp}-{suffix}"
            archive.mkdir()
            self._archive = archive
        for path in present:
            with contextlib.suppress(FileNotFoundError):
                shutil.move(str(path), str(self._archive / path.name))


def _stored_identity(summary: dict[str, Any], part: str) -> dict[str, Any] | None:
    """The identity the summary records for ``part``; None when none yet; ``{}`` when it is not moa's (edited)."""
    identities = summary.get("identity")
    if identities is None:
        return None
    stored = identities.get(part) if isinstance(identities, dict) else {}
    return stored if isinstance(stored, dict) or stored is None else {}
