"""Shared fixtures: the network guard, the loopback server, recipe helpers."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

from moa.testing import LoopbackServer


class NetworkBlockedError(RuntimeError):
    """A test tried to reach an address outside the loopback range."""


def _is_local(address: Any) -> bool:
    if isinstance(address, str | bytes):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: resolving it would already leave the machine


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if not _is_local(address):
        raise NetworkBlockedError(f"test tried to connect to {address!r}; tests stay on 127.0.0.1")
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    if not _is_local(address):
        raise NetworkBlockedError(f"test tried to connect to {address!r}; tests stay on 127.0.0.1")
    return _real_connect_ex(self, address)


def pytest_configure(config: pytest.Config) -> None:
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    """A fresh OpenAI-compatible server on 127.0.0.1 (no latency)."""
    with LoopbackServer() as server:
        yield server


def loopback_recipe(server: LoopbackServer, layers: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """A recipe dict whose calls all go to the loopback server."""
    defaults = {"api_base": server.base_url, "timeout": 5.0, **fields.pop("defaults", {})}
    retry = {"initial_backoff_s": 0.01, "max_backoff_s": 0.05, **fields.pop("retry", {})}
    return {"name": "loopback", "defaults": defaults, "retry": retry, "layers": layers, **fields}


def agents(*models: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"model": model, **extra} for model in models]


def scripted(replies: dict[str, Any]) -> Any:
    """A loopback responder answering by model name (without its provider prefix): a string, a dict of
    function calls (``moa.testing._toolcalls``), or a function of the request's messages giving one.  A model
    not listed answers ``<model> says hi``."""

    def respond(body: dict[str, Any], index: int) -> str | dict[str, Any]:
        model = str(body.get("model", "")).split("/")[-1]
        reply = replies.get(model, f"{model} says hi")
        reply = reply(body["messages"]) if callable(reply) else reply
        return reply if isinstance(reply, dict) else str(reply)

    return respond


@pytest.fixture
def script() -> Iterator[Any]:
    """``script(replies, **server_options)``: a loopback server answering by model (see ``scripted``)."""
    servers: list[LoopbackServer] = []

    def start(replies: dict[str, Any], **options: Any) -> LoopbackServer:
        server = LoopbackServer(responder=scripted(replies), **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class CountingServer(LoopbackServer):
    """The loopback server, counting the requests it is answering at once."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.now = 0
        self.peak = 0
        self._counter = threading.Lock()

    async def _complete(self, *args: Any, **kwargs: Any) -> bool:
        with self._counter:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            return await super()._complete(*args, **kwargs)
        finally:
            with self._counter:
                self.now -= 1


def start_serve(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str, list[str]]:
    """``python -m moa serve ARGS`` as a subprocess: the process, its base URL (``.../v1``) and its stderr lines, kept
    growing by a thread (the lines before ``listening on`` too)."""
    process = subprocess.Popen([sys.executable, "-m", "moa", "serve", *args], env=env, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []
    while "listening on" not in (line := process.stderr.readline()):
        assert line, "".join(lines)  # it ended before it listened
        lines.append(line)
    lines.append(line)
    threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True).start()
    return process, line.split("listening on ", 1)[1].split()[0], lines


def wait_until(condition: Any, what: str) -> None:
    """Poll ``condition`` until it holds (bounded only against a hang: an assertion naming ``what``)."""
    deadline = time.monotonic() + 300
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def stop_served(started: list[tuple[subprocess.Popen[str], LoopbackServer]]) -> None:
    """Kill each ``moa serve`` still running and stop its upstream."""
    for process, upstream in started:
        if process.poll() is None:
            process.kill()
            process.wait()
        upstream.stop()
