"""Where the bundled ``prompts/`` and ``recipes/`` live.

In a built wheel they are packaged as ``moa/_data/{prompts,recipes}``; in a
source checkout (editable install) they are the top-level folders.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def data_dir(kind: str) -> Path:
    """The folder holding bundled ``prompts`` or ``recipes``."""
    for candidate in (_PACKAGE / "_data" / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"moa's bundled {kind}/ folder is missing from the installation")


def builtin_names(kind: str, suffix: str) -> list[str]:
    """Names (file stems) of the bundled files of one kind."""
    return sorted(path.stem for path in data_dir(kind).glob(f"*{suffix}"))
