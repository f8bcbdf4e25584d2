"""A real OpenAI-compatible HTTP server on 127.0.0.1, for tests and benchmarks.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length, server-sent
events) for litellm's OpenAI client, answers ``POST /v1/chat/completions``,
``POST /v1/embeddings`` (``embedder``: a hashed bag of words by default) and
``GET /v1/models``, records every request, and can inject faults:

=============== ===========================================================
``429``         rate limited, with ``Retry-After: <retry_after>``
``500``/``503`` server errors; ``400``/``401``/``404`` client errors (their bodies
                echo the request's Authorization header, as careless providers do)
``hang``        accepts the request and never answers
``malformed``   200 with a body that is not JSON
``empty``       200 with ``"choices": []``
``reset``       headers and half a body, then the connection is dropped
``stream_cut``  a streamed answer that stops mid-way (connection dropped)
=============== ===========================================================

Run it alone with ``python -m moa.testing --latency 0.2``: it prints
``PORT <n>`` and serves until killed (the benchmarks use it this way, so its
CPU time is not counted as the client's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moa.testing._embeddings import Embedder, embedding_payload, word_vector
from moa.testing._logprobs import LogprobsFn, TokenLogprobFn, default_logprobs, logprobs_content
from moa.testing._toolcalls import stream_delta, tool_message

FAULT_KINDS = (
    "429",
    "500",
    "503",
    "400",
    "401",
    "404",
    "hang",
    "malformed",
    "empty",
    "reset",
    "stream_cut",
)
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

#: Writes the answer to a request: text, or a dict of function calls (``moa.testing._toolcalls``).
Responder = Callable[[dict[str, Any], int], "str | dict[str, Any]"]


@dataclass
class Fault:
    """Inject ``kind`` into the next ``times`` requests (for ``model`` only, when set)."""

    kind: str
    times: int = 1
    model: str | None = None
    retry_after: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; known: {', '.join(FAULT_KINDS)}")


@dataclass
class RecordedHTTP:
    """One request as the server read it off the socket."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    fault: str | None = None

    @property
    def model(self) -> str:
        return str((self.body or {}).get("model", ""))

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list((self.body or {}).get("messages", []))


def default_reply(body: dict[str, Any], index: int) -> str:
    messages = body.get("messages") or [{"content": ""}]
    last = str(messages[-1].get("content", ""))
    return f"{body.get('model')} reply {index}: {last[:60]}"


@dataclass
class LoopbackServer:
    """Serve on 127.0.0.1 from a background thread.  Use as a context manager or start()/stop().

    ``latency_s`` delays every answer; ``latency_by_model`` overrides it per
    model; ``responder(body, index)`` writes the answer text (or a dict of function calls), cut to ``max_tokens``
    words (``finish_reason: length``) when the request sets it.  With ``logprobs: true`` a reply carries the
    first token's top alternatives (``logprobs``) and, when ``token_logprob`` is set, an entry for every word
    with that logprob (so the mean logprob of the answer is exactly it).
    """

    latency_s: float = 0.0
    latency_by_model: dict[str, float] = field(default_factory=dict)
    responder: Responder = default_reply
    logprobs: LogprobsFn = default_logprobs
    token_logprob: TokenLogprobFn | None = None
    embedder: Embedder = word_vector
    port: int = 0
    requests: list[RecordedHTTP] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._lock = threading.Lock()
        self._count = 0
        self._writers: set[asyncio.StreamWriter] = set()

    # ------------------------------------------------------------- control

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def add_fault(self, kind: str, times: int = 1, model: str | None = None, retry_after: float = 0.1) -> None:
        with self._lock:
            self.faults.append(Fault(kind, times, model, retry_after))

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    def completions(self, model: str | None = None) -> list[RecordedHTTP]:
        """Recorded chat-completion requests (for one model, when given)."""
        return [
            r for r in self.requests if r.path.endswith("/chat/completions") and (model is None or r.model == model)
        ]

    def embedding_requests(self, model: str | None = None) -> list[RecordedHTTP]:
        """The ``/embeddings`` requests (to one model, when given), in order."""
        return [r for r in self.requests if r.path.endswith("/embeddings") and (model is None or r.model == model)]

    def start(self) -> LoopbackServer:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="moa-loopback-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("loopback server did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # client went away, or the server is shutting down
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        line = await reader.readline()
        if not line:
            return False
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", 0) or 0))
        body = json.loads(raw) if raw else None
        if method == "GET" and path.rstrip("/").endswith("/models"):
            payload = {"object": "list", "data": [{"id": "loopback", "object": "model"}]}
            await self._send(writer, 200, json.dumps(payload).encode())
            return True
        if method == "POST" and path.rstrip("/").endswith("/embeddings") and body is not None:
            return await self._complete(body, method, path, headers, writer)
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions") or body is None:
            await self._send(writer, 404, b'{"error": {"message": "not found"}}')
            return True
        return await self._complete(body, method, path, headers, writer)

    def _take_fault(self, model: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and (fault.model is None or fault.model == model):
                    fault.times -= 1
                    return fault
        return None

    async def _complete(
        self,
        body: dict[str, Any],
        method: str,
        path: str,
        headers: dict[str, str],
        writer: asyncio.StreamWriter,
    ) -> bool:
        model = str(body.get("model", ""))
        fault = self._take_fault(model)
        with self._lock:
            index = self._count
            self._count += 1
            self.requests.append(RecordedHTTP(method, path, headers, body, fault.kind if fault else None))
        await asyncio.sleep(self.latency_by_model.get(model, self.latency_s))
        if fault is not None and fault.kind != "stream_cut":
            return await self._fault(fault, writer, headers)
        if path.rstrip("/").endswith("/embeddings"):
            await self._send(writer, 200, json.dumps(embedding_payload(body, self.embedder)).encode())
            return True
        reply = self.responder(body, index)
        message: dict[str, Any] | None = None
        if isinstance(reply, dict):
            message, words = tool_message(reply, index)
            text, finish = str(message["content"] or ""), "tool_calls" if message.get("tool_calls") else "stop"
        else:
            text, finish = reply, "stop"
        limit = body.get("max_tokens")
        if message is None and isinstance(limit, int) and len(text.split()) > limit:  # a word is a token here
            text, finish = " ".join(text.split()[:limit]), "length"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        written = words if message is not None else len(text.split())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": written, "total_tokens": prompt_tokens + written}
        if body.get("stream"):
            await self._stream(writer, model, text, usage, body, cut=fault is not None, finish=finish, message=message)
            return False
        payload = {
            "id": f"chatcmpl-{index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": message or {"role": "assistant", "content": text}, "finish_reason": finish}
            ],
            "usage": usage,
        }
        if body.get("logprobs"):
            each = self.token_logprob(body, text) if self.token_logprob is not None else None
            payload["choices"][0]["logprobs"] = logprobs_content(self.logprobs(body, text), text, each)  # type: ignore[index]
        await self._send(writer, 200, json.dumps(payload).encode())
        return True

    async def _fault(self, fault: Fault, writer: asyncio.StreamWriter, headers: dict[str, str]) -> bool:
        kind = fault.kind
        if kind == "hang":
            await asyncio.sleep(3600)
            return False
        if kind == "malformed":
            await self._send(writer, 200, b"<html>this is not JSON")
            return True
        if kind == "empty":
            payload = {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0},
            }
            await self._send(writer, 200, json.dumps(payload).encode())
            return True
        if kind == "reset":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n")
            writer.write(b'{"id": "x", "choices": [{"index": 0, "mess')
            await writer.drain()
            writer.transport.abort()
            return False
        status = int(kind)
        extra = {"Retry-After": f"{fault.retry_after:g}"} if status == 429 else {}
        text = f"injected {status}"
        if 400 <= status < 500 and status != 429:
            text += f" (received Authorization: {headers.get('authorization', '-')})"
        message = {"error": {"message": text, "type": "loopback_fault", "code": status}}
        await self._send(writer, status, json.dumps(message).encode(), extra)
        return True

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, extra: dict[str, str] | None = None
    ) -> None:
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        head += [f"{name}: {value}" for name, value in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        model: str,
        text: str,
        usage: dict[str, int],
        body: dict[str, Any],
        cut: bool,
        finish: str = "stop",
        message: dict[str, Any] | None = None,
    ) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        words = text.split(" ") if message is None else []
        if message is not None:  # function calls stream in one piece
            chunk = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0, "model": model,
                     "choices": [{"index": 0, "delta": stream_delta(message), "finish_reason": None}]}  # fmt: skip
            writer.write(f"data: {json.dumps(chunk)}\n\n".encode())
        for position, word in enumerate(words):
            piece = word if position == len(words) - 1 else word + " "
            chunk = {
                "id": "chatcmpl-s",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
            writer.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await writer.drain()
            if cut and position >= len(words) // 2:
                writer.transport.abort()
                return
        final = {
            "id": "chatcmpl-s",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
        }
        writer.write(f"data: {json.dumps(final)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            tail = {
                "id": "chatcmpl-s",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            writer.write(f"data: {json.dumps(tail)}\n\n".encode())
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()
        writer.close()
