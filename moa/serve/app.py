"""``moa serve``'s ASGI app: every recipe as an OpenAI-compatible chat model (Starlette; SSE by sse-starlette).

``POST /v1/chat/completions`` runs the recipe named by ``model`` on the
request's messages (``temperature``, ``max_tokens``, ``top_p``, ``stop`` and
``seed`` become call settings for every call); ``stream: true`` streams the
final stage's text as OpenAI chunks (``stream_options.include_usage``: a last
chunk with the run's whole usage).  ``GET /v1/models`` lists the recipes,
``GET /healthz`` answers ok, ``GET /v1/moa/runs/{id}`` returns a run's trace
(the id is in every answer's ``x-moa-run-id`` header).  Errors have OpenAI's
JSON shape: unknown model 404, bad request 400, missing token 401, budget 402,
body too large 413, quorum lost 502, deadline 504.

One limiter is shared by every request (a provider's limits hold across
clients), and one budget when the server has one.  A client that goes away
cancels its run's calls.  With ``--workers N`` each of N processes runs this
app with its share of the limits (``moa.serve.workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moa._call import Budget
from moa._errors import (
    BudgetExceeded,
    ConfigError,
    DeadlineExceeded,
    MoAError,
    QuorumError,
)
from moa._limits import Limiter, shares, strictest
from moa._overrides import call_overrides
from moa._secrets import redact
from moa.recipe import Recipe
from moa.result import MoAResult
from moa.serve._log import log_refused, log_run

#: OpenAI request fields that become call settings, and how.
SETTINGS = {"temperature": "temperature", "max_tokens": "max_tokens", "max_completion_tokens": "max_tokens",
            "top_p": "top_p"}  # fmt: skip
EXTRA = ("stop", "seed", "presence_penalty", "frequency_penalty")


@dataclass
class ServeConfig:
    """What the server serves and under which limits."""

    recipes: dict[str, Recipe]
    token: str | None = None  # the bearer token clients must send (None: no auth)
    budget_usd: float | None = None  # for all requests together
    per_request_usd: float | None = None  # the most one request may cost (a request may ask for less)
    allow_unpriced: bool = False  # under a budget, count unpriced models as free instead of refusing them
    max_body_bytes: int = 1_000_000
    deadline_s: float | None = None  # per request
    keep_runs: int = 1000  # traces kept for GET /v1/moa/runs/{id}
    limiter: Limiter | None = None
    budget: Budget | None = None  # made from ``budget_usd`` unless given (``--workers``: one shared by them all)
    worker: tuple[int, int] = (0, 1)  # this process's index among the server's, and how many (``--workers``)
    peers: list[str] = field(default_factory=list)  # each worker's own address, to fetch a trace another one has
    provider: Any = None  # a moa Provider (tests); litellm by default
    #: Called once per request, on the event loop (so it must not block: ``moa.serve._log.RequestLog`` queues):
    #: (entry dict, recipe, messages, result or None, error or None).
    log: Any = None
    runs: OrderedDict[str, MoAResult] = field(default_factory=OrderedDict)
    in_flight: int = 0  # runs going on now (GET /healthz says how many)
    stopping: bool = False  # the server was told to stop (runs still going on end at --shutdown-timeout)

    def __post_init__(self) -> None:
        if self.limiter is None:
            # One limiter for all: a provider's limits hold across recipes (the strictest any of them sets).
            limits = strictest(recipe.limits for recipe in self.recipes.values())[0]
            self.limiter = Limiter(shares(limits, *self.worker) if self.worker[1] > 1 else limits)
        if self.budget is None and self.budget_usd is not None:
            self.budget = Budget(self.budget_usd, self.allow_unpriced, stop_on_refusal=False)


def error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    """An error in OpenAI's shape; never a key (``redact``)."""
    body = {"error": {"message": redact(message), "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def failure(exc: BaseException) -> JSONResponse:
    """A run's error as the status a client expects."""
    if isinstance(exc, BudgetExceeded):
        return error(402, str(exc), "insufficient_quota", "budget_exceeded")
    if isinstance(exc, DeadlineExceeded):
        return error(504, str(exc), "timeout", "deadline_exceeded")
    if isinstance(exc, QuorumError):
        return error(502, str(exc), "upstream_error", "quorum_lost")
    if isinstance(exc, ConfigError):
        return error(400, str(exc), "invalid_request_error")
    if isinstance(exc, MoAError):
        return error(502, str(exc), "upstream_error")
    return error(500, f"{type(exc).__name__}: {exc}", "server_error")


def create_app(config: ServeConfig) -> Starlette:
    async def healthz(request: Request) -> Response:
        found = {"status": "ok", "recipes": len(config.recipes), "runs_in_flight": config.in_flight}
        if config.peers:  # --workers: which one answered (its process), and each one's own address
            found["worker"] = {"index": config.worker[0], "of": config.worker[1], "pid": os.getpid(),
                               "addresses": config.peers}  # fmt: skip
        return JSONResponse(found)

    async def models(request: Request) -> Response:
        if (denied := _auth(request, config)) is not None:
            return denied
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "moa",
                 "description": recipe.description or ""} for name, recipe in config.recipes.items()]  # fmt: skip
        return JSONResponse({"object": "list", "data": data})

    async def run_trace(request: Request) -> Response:
        if (denied := _auth(request, config)) is not None:
            return denied
        found = config.runs.get(request.path_params["run_id"])
        if found is None and config.peers:  # --workers: the worker that ran it has it
            from moa.serve.workers import trace_from_peer

            if isinstance(fetched := await trace_from_peer(config, request), str):
                return error(502, fetched, "upstream_error", "worker_unavailable")
            if fetched is not None:
                return fetched
        if found is None:
            return error(404, f"no run {request.path_params['run_id']!r} (the server keeps the last "
                         f"{config.keep_runs})", "invalid_request_error", "run_not_found")  # fmt: skip
        return JSONResponse(found.model_dump(mode="json"))

    async def chat(request: Request) -> Response:
        if (denied := _auth(request, config)) is not None:
            return log_refused(config.log, denied)
        parsed = await _body(request, config)
        if isinstance(parsed, Response):
            return log_refused(config.log, parsed)
        checked = _request(parsed, config)
        if isinstance(checked, Response):
            return log_refused(config.log, checked)
        recipe, messages, settings, stream, usage_chunk = checked
        budget = _budget(parsed, config)
        if isinstance(budget, Response):
            return log_refused(config.log, budget)
        worker = f"w{config.worker[0]}-" if config.worker[1] > 1 else ""  # (--workers: the id names its worker)
        run_id = f"run-{worker}{secrets.token_hex(8)}"
        if stream:
            return await _stream(request, config, run_id, recipe, messages, settings, usage_chunk, budget)
        task = asyncio.ensure_future(_run(config, recipe, messages, settings, budget=budget))
        try:
            finished = await _finished_or_gone(request, task)
        except asyncio.CancelledError:  # (uvicorn, past --shutdown-timeout): the run's calls go too, logged
            task.cancel()
            log_run(config.log, run_id, recipe, messages, None, asyncio.CancelledError(_ended(config)))
            raise
        if not finished:
            gone = asyncio.CancelledError("the client went away: its calls were cancelled")
            log_run(config.log, run_id, recipe, messages, None, gone)
            return Response(status_code=499)
        try:
            result = task.result()
        except BaseException as exc:
            log_run(config.log, run_id, recipe, messages, None, exc)
            return failure(exc)
        _keep(config, run_id, result)
        log_run(config.log, run_id, recipe, messages, result, None)
        return JSONResponse(_completion(run_id, recipe, result), headers={"x-moa-run-id": run_id})

    routes = [
        Route("/healthz", healthz),
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/moa/runs/{run_id}", run_trace),
    ]
    return Starlette(routes=routes)


def _auth(request: Request, config: ServeConfig) -> Response | None:
    if config.token is None:
        return None
    given = request.headers.get("authorization", "")
    if not secrets.compare_digest(given.encode(), f"Bearer {config.token}".encode()):
        return error(401, "a valid bearer token is needed (Authorization: Bearer <token>)", "invalid_request_error",
                     "invalid_api_key")  # fmt: skip
    return None


async def _body(request: Request, config: ServeConfig) -> Mapping[str, Any] | Response:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
        return error(413, f"the request body is over {config.max_body_bytes} bytes", "invalid_request_error")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > config.max_body_bytes:
            return error(413, f"the request body is over {config.max_body_bytes} bytes", "invalid_request_error")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error(400, f"the request body is not JSON: {exc}", "invalid_request_error")
    if not isinstance(body, dict):
        return error(400, "the request body must be a JSON object", "invalid_request_error")
    return body


def _request(body: Mapping[str, Any], config: ServeConfig) -> Any:
    from moa._errors import PromptError
    from moa._prompt import normalize_prompt

    name = body.get("model")
    if not isinstance(name, str) or name not in config.recipes:
        known = ", ".join(config.recipes)
        return error(404, f"the model {name!r} does not exist; models (recipes): {known}", "invalid_request_error",
                     "model_not_found")  # fmt: skip
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return error(400, "`messages` must be a non-empty list of {role, content}", "invalid_request_error")
    try:
        conversation = normalize_prompt(messages)
    except (PromptError, TypeError, ValueError) as exc:
        return error(400, f"`messages`: {exc}", "invalid_request_error")
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for field_name, setting in SETTINGS.items():
        if body.get(field_name) is not None:
            values[setting] = body[field_name]
    for field_name in EXTRA:
        if body.get(field_name) is not None:
            extra[field_name] = body[field_name]
    if extra:
        values["extra"] = extra
    try:
        settings = call_overrides(values, "request") if values else None
    except ConfigError as exc:
        return error(400, str(exc), "invalid_request_error")
    stream = body.get("stream") is True
    options = body.get("stream_options") or {}
    usage_chunk = stream and isinstance(options, dict) and options.get("include_usage") is True
    return config.recipes[name], conversation, settings, stream, usage_chunk


def _budget(body: Mapping[str, Any], config: ServeConfig) -> Budget | Response | None:
    """The request's budget: the lower of the server's per-request cap and what it asks (``moa.max_cost_usd``,
    e.g. the openai SDK's ``extra_body``), held from the server's budget when there is one."""
    from moa._call import BudgetRefused

    asked = (body.get("moa") or {}).get("max_cost_usd") if isinstance(body.get("moa"), dict) else None
    if asked is not None and (
        isinstance(asked, bool) or not isinstance(asked, int | float) or not asked >= 0 or not math.isfinite(asked)
    ):
        return error(400, f"`moa.max_cost_usd` must be a finite number of USD, at least 0, got {asked!r}",
                     "invalid_request_error")  # fmt: skip
    limits = [v for v in (config.per_request_usd, asked) if v is not None]
    if not limits:
        return config.budget
    if config.budget is None:
        return Budget(min(limits), config.allow_unpriced)
    try:
        return config.budget.child(min(limits))
    except BudgetRefused as exc:
        return error(402, f"the server's budget cannot hold this request: {exc}", "insufficient_quota",
                     "budget_exceeded")  # fmt: skip


async def _run(config: ServeConfig, recipe: Recipe, messages: Any, settings: Any, on_token: Any = None,
               budget: Budget | None = None) -> MoAResult:  # fmt: skip
    from moa._engine import run

    config.in_flight += 1
    try:
        return await run(messages, recipe, limiter=config.limiter, settings=settings, budget=budget,
                         deadline_s=config.deadline_s, on_token=on_token, provider=config.provider)  # fmt: skip
    finally:
        config.in_flight -= 1
        if budget is not None and budget is not config.budget:
            budget.close()  # a request's share of the server's budget: what it did not spend goes back


async def _finished_or_gone(request: Request, task: asyncio.Future[Any]) -> bool:
    """Wait for the run; if the client disconnects first, cancel it (its calls) and say so."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)  # (its outcome is read by the caller)
    finally:
        gone.cancel()
    if task.done():
        return True
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return False


async def _disconnected(request: Request) -> None:
    """Return when the client hangs up (the body has been read: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _completion(run_id: str, recipe: Recipe, result: MoAResult) -> dict[str, Any]:
    final = result.layers[-1].passed_on()[:1] if result.layers else []
    finish = final[0].finish_reason if final and final[0].finish_reason else "stop"
    return {
        "id": f"chatcmpl-{run_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": recipe.name if recipe.name else "moa",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.output}, "finish_reason": finish}],
        "usage": _usage(result),
    }


def _usage(result: MoAResult) -> dict[str, int]:
    """The whole run's tokens: every call of every layer."""
    return {"prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens,
            "total_tokens": result.usage.total_tokens}  # fmt: skip


async def _stream(request: Request, config: ServeConfig, run_id: str, recipe: Recipe, messages: Any, settings: Any,
                  usage_chunk: bool, budget: Budget | None) -> Response:  # fmt: skip
    from sse_starlette.sse import EventSourceResponse

    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    task = asyncio.ensure_future(_run(config, recipe, messages, settings, on_token=pieces.put_nowait, budget=budget))
    task.add_done_callback(lambda _: pieces.put_nowait(None))
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return json.dumps({"id": f"chatcmpl-{run_id}", "object": "chat.completion.chunk", "created": created,
                           "model": recipe.name, "choices": [choice]})  # fmt: skip

    async def events() -> AsyncIterator[str]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            while (piece := await pieces.get()) is not None:
                yield chunk({"content": piece})
            try:
                result = task.result()
            except BaseException as exc:
                log_run(config.log, run_id, recipe, messages, None, exc)
                yield json.dumps(json.loads(bytes(failure(exc).body)))
                return
            _keep(config, run_id, result)
            log_run(config.log, run_id, recipe, messages, result, None)
            yield chunk({}, "stop")
            if usage_chunk:
                yield json.dumps({"id": f"chatcmpl-{run_id}", "object": "chat.completion.chunk", "created": created,
                                  "model": recipe.name, "choices": [], "usage": _usage(result)})  # fmt: skip
            yield "[DONE]"
        finally:
            if not task.done():  # the client went away (or the server stopped): cancel the run's calls, and log it
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                log_run(config.log, run_id, recipe, messages, None, asyncio.CancelledError(_ended(config)))

    return EventSourceResponse(events(), headers={"x-moa-run-id": run_id}, ping=15)


def _ended(config: ServeConfig) -> str:
    """Why a run that did not finish ended."""
    if config.stopping:
        return "the server stopped before the run finished (--shutdown-timeout): its calls were cancelled"
    return "the client went away: its calls were cancelled"


def _keep(config: ServeConfig, run_id: str, result: MoAResult) -> None:
    config.runs[run_id] = result
    while len(config.runs) > config.keep_runs:
        config.runs.popitem(last=False)


__all__ = ["ServeConfig", "create_app"]
