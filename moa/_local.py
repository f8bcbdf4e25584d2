"""Local GGUF models, each served by its own llama-cpp-python server on 127.0.0.1.

A recipe names the bundled SmolLM2-135M-Instruct as ``local/smollm2-135m``, a
file of its own as ``local:/path/to/model.gguf``, or as ``local/<name>`` through
its ``local_models:`` map (``moa.recipe.local_models`` turns that into the
``local:`` form when the recipe loads).  Servers are keyed by the bundled name
or the file's resolved path, never by a short name: two recipes that give one
name to different files get different servers.  The first call to a local
model starts one server for it, for the whole process (a free port on
127.0.0.1, polled until ready, then one warm-up request); every later call,
from any run, shares it.  The server is stopped when the process exits
(``atexit``), and on Linux it is also told to die with its parent, so not even
``kill -9`` leaves it behind.
Calls reach it through litellm like any OpenAI-compatible endpoint.

Install it with ``pip install 'moa-pipeline[local]'`` (llama-cpp-python
compiles once, ~6 minutes on 2 cores, then pip caches it).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import functools
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from moa._errors import ConfigError, ProviderUnavailableError
from moa._gguf import FILE_PREFIX as FILE_PREFIX
from moa._gguf import MODELS as MODELS
from moa._gguf import PREFIX as PREFIX
from moa._gguf import check_file, held

INSTALL_HINT = "pip install 'moa-pipeline[local]'  (or, from a checkout: pip install -e '.[local]')"
READY_TIMEOUT_S = 120.0
CONTEXT_TOKENS = 8192


class LocalModelMissingError(ConfigError):
    """The ``[local]`` extra (llama-cpp-python and the model package) is not installed."""


def is_local(model: str) -> bool:
    return model.startswith((PREFIX, FILE_PREFIX))


def local_name(model: str) -> str:
    """What names a local model's server: a bundled model's name (also when it is named by its file), or the
    absolute path of a GGUF file."""
    if model.startswith(FILE_PREFIX):
        path = str(Path(model.removeprefix(FILE_PREFIX)).expanduser().resolve())
        return _bundled_files().get(path, path)
    return model.removeprefix(PREFIX)


@functools.cache
def _bundled_files() -> dict[str, str]:
    """Each installed bundled model's resolved file, and its name (found once)."""
    found = {}
    for name in MODELS:
        with contextlib.suppress(ConfigError):
            found[str(model_file(name).resolve())] = name
    return found


def alias_of(name: str) -> str:
    """The model name the server answers to: a bundled model's name, or ``gguf-<stem>-<digest>`` for a file."""
    if name in MODELS:
        return name
    import hashlib
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).stem)[:40]
    return f"gguf-{stem}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def gguf_file(name: str) -> Path:
    """A user's GGUF file, checked: it exists, it is GGUF, and it fits in the memory that is free."""
    return check_file(Path(name), f"{FILE_PREFIX}{name}")


def model_file(name: str) -> Path:
    """The GGUF file of a bundled model (found without importing its package), or a user's file (checked)."""
    if name not in MODELS and (name.startswith(("/", "~", ".")) or name.endswith(".gguf")):
        return gguf_file(name)
    package = MODELS.get(name)
    if package is None:
        known = ", ".join(PREFIX + m for m in MODELS)
        raise ConfigError(f"unknown local model {PREFIX}{name!r}; available: {known}, a file of yours as "
                          "local:/path/to/model.gguf, or a name for one in the recipe's `local_models`")  # fmt: skip
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelMissingError(f"the local model {PREFIX}{name} is not installed; run: {INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise LocalModelMissingError(f"no .gguf weights found in {folder}; reinstall with: {INSTALL_HINT}")
    return files[0]


def check_installed(name: str) -> None:
    """Raise a ``ConfigError`` that says what to install, before any call is made."""
    model_file(name)
    if importlib.util.find_spec("llama_cpp") is None:
        raise LocalModelMissingError(f"llama-cpp-python is not installed; run: {INSTALL_HINT}")


@dataclass
class LocalServer:
    """One ``llama_cpp.server`` process, and whether it is ready for calls."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    weights: Path  # the GGUF file it loaded
    embedding: bool = False  # serves embeddings (mean-pooled), not chat
    ready: bool = False
    failure: BaseException | None = None
    _startup: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self) -> None:
        """Block until the server answers and is warmed up (the first caller does the work)."""
        with self._startup:
            if self.failure is not None:
                raise self.failure
            if self.ready:
                return
            try:
                _wait_ready(self)
                _warm_up(self)
            except BaseException as exc:
                self.failure = exc
                self.stop()
                raise
            self.ready = True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # it finishes the request in progress, then exits
            try:
                self.process.wait(3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if not any(
            other.alive and other.weights == self.weights for other in tuple(_servers.values()) if other is not self
        ):
            held.discard(str(self.weights.resolve()))  # its memory is free again: the next start checks it


_servers: dict[str, LocalServer] = {}
_lock = threading.Lock()


async def ensure_server(name: str, *, embedding: bool = False) -> LocalServer:
    """The ready server of a local model, started on first use and shared by every later call.

    ``embedding``: the model's embedding server (a second process: llama.cpp serves a model either for
    chat or for mean-pooled embeddings).

    The process is spawned from the event loop's thread (a dying parent thread
    would take a Linux child with it); waiting for it runs in a worker thread.
    """
    key = f"{name} (embedding)" if embedding else name
    with _lock:
        server = _servers.get(key)
        if server is None or not server.alive or server.failure is not None:
            server = _servers[key] = _spawn(name, embedding=embedding)
    await asyncio.to_thread(server.wait_ready)
    return server


def stop_all() -> None:
    """Stop every local server this process started."""
    with _lock:
        for server in _servers.values():
            server.stop()
        _servers.clear()
        held.clear()


atexit.register(stop_all)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when its parent thread dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: nothing to load in the child
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def hook() -> None:  # runs in the child between fork and exec
        prctl(pr_set_pdeathsig, sigterm)

    return hook


def _spawn(name: str, *, embedding: bool = False) -> LocalServer:
    check_installed(name)
    weights = model_file(name)
    port = _free_port()
    suffix = "-embedding" if embedding else ""
    log_path = Path(tempfile.gettempdir()) / f"moa-local-{alias_of(name)}{suffix}-{os.getpid()}.log"
    command = [
        sys.executable,
        "-m",
        "moa._llama_server",  # llama_cpp.server, with a crash on AMX CPUs avoided (see that module)
        "--model",
        str(weights),
        "--model_alias",
        alias_of(name),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(CONTEXT_TOKENS),
        "--interrupt_requests",
        "False",
        *(["--embedding", "True"] if embedding else []),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent_hook(),
        )
    held.add(str(weights.resolve()))
    return LocalServer(name=name, process=process, port=port, log_path=log_path, weights=weights, embedding=embedding)


def _wait_ready(server: LocalServer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ProviderUnavailableError(
                f"the local model server stopped before it was ready: {_exit_state(server)}; "
                f"its log ends:\n{_log_tail(server)}",
                model=PREFIX + server.name,
            )
        try:
            with urllib.request.urlopen(f"{server.base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise ProviderUnavailableError(
        f"the local model server was not ready within {READY_TIMEOUT_S:g} s (log: {server.log_path})",
        model=PREFIX + server.name,
    )


def _warm_up(server: LocalServer) -> None:
    """The first request loads and primes the model; pay for it before the run's calls."""
    body: dict[str, object] = {"model": alias_of(server.name), "input": ["Hi"]}
    if not server.embedding:
        body = {"model": alias_of(server.name), "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    request = urllib.request.Request(
        f"{server.base_url}/{'embeddings' if server.embedding else 'chat/completions'}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=READY_TIMEOUT_S) as response:
            response.read()
    except (OSError, http.client.HTTPException) as exc:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(2)  # a crashed server has exited by now: report how
        raise ProviderUnavailableError(
            f"the local model server failed its first request ({type(exc).__name__}: {exc}); "
            f"{_exit_state(server)}; its log ends:\n{_log_tail(server)}",
            model=PREFIX + server.name,
        ) from None


def _exit_state(server: LocalServer) -> str:
    code = server.process.poll()
    if code is None:
        return "it is still running"
    if code < 0:
        return f"it was killed by signal {signal.Signals(-code).name}"
    return f"it exited with code {code}"


def _log_tail(server: LocalServer, chars: int = 800) -> str:
    try:
        return server.log_path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(log {server.log_path} unreadable: {exc})"
