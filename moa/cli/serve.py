"""``moa serve``: every recipe as an OpenAI-compatible chat model, on one shared limiter."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from moa.cli._common import EXIT_OK, log_arguments
from moa.cli.args import non_negative_float, positive_float, positive_int

EPILOG = """\
Examples:
  moa serve --recipes local moa-lite --port 8000
  moa serve --recipes my-recipes/ --api-key-env MOA_SERVE_TOKEN
  moa serve --recipes my-recipes/ --workers 4          (four processes on one port: about one per core)
Then, from any OpenAI client: base_url http://127.0.0.1:8000/v1, model = a recipe's name.
"""


def add_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve recipes as OpenAI-compatible models",
        description="Serve recipes over HTTP as OpenAI-compatible chat models: GET /v1/models, POST "
        "/v1/chat/completions (the recipe named by `model`; stream: true streams the final stage), GET /healthz, "
        "GET /v1/moa/runs/{id} (a run's trace; its id is in the x-moa-run-id header).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--recipes", nargs="+", metavar="NAME|PATH|DIR",
                       help="the recipes to serve: built-in names, YAML files, or folders of them (default: every "
                       "built-in recipe)")  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0: any free port)")
    serve.add_argument("--api-key-env", metavar="NAME",
                       help="require `Authorization: Bearer <value of $NAME>` (all but /healthz)")  # fmt: skip
    serve.add_argument("--max-cost", type=non_negative_float, metavar="USD",
                       help="a budget for every request together (each run's worst case is held first)")  # fmt: skip
    serve.add_argument("--max-cost-per-request", type=non_negative_float, metavar="USD",
                       help="the most one request may cost (a request may ask for less: moa.max_cost_usd)")  # fmt: skip
    serve.add_argument("--allow-unpriced", action="store_true",
                       help="under a budget, count models with no known price as free, not refuse them")  # fmt: skip
    serve.add_argument("--deadline", type=positive_float, metavar="SECONDS", help="each request's time limit")
    serve.add_argument("--max-body", type=positive_int, default=1_000_000, metavar="BYTES",
                       help="the largest request body accepted (default 1,000,000; larger: 413)")  # fmt: skip
    serve.add_argument("--shutdown-timeout", type=positive_float, default=30.0, metavar="SECONDS",
                       help="on SIGTERM or Ctrl-C, how long runs in flight may finish (default 30)")  # fmt: skip
    serve.add_argument("--workers", type=positive_int, default=1, metavar="N",
                       help="answer in N processes on one port, as one server (default 1): each holds its share of "
                       "every provider limit, the --max-cost budget is one; about one per core, since one process "
                       "runs every request on one core")  # fmt: skip
    log_arguments(serve)
    serve.add_argument("--no-log", action="store_true", help="do not record the requests' runs in the run log")
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from moa._errors import ConfigError

    try:
        import uvicorn  # noqa: F401  (imported here to say what to install; the workers fork with it)
    except ModuleNotFoundError:
        raise ConfigError("moa serve needs its extra: pip install 'moa-pipeline[serve]' (from a checkout: pip install "
                          "-e '.[serve]')") from None  # fmt: skip
    from moa._limits import strictest
    from moa._loader import builtin_recipes, load_recipe

    token = None
    if args.api_key_env:
        token = os.environ.get(args.api_key_env)
        if not token:
            raise ConfigError(f"--api-key-env {args.api_key_env}: that variable is not set (or empty)")
    recipes: dict[str, Any] = {}
    for reference in args.recipes or builtin_recipes():
        path = Path(reference)
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [reference]
        if path.is_dir() and not files:
            raise ConfigError(f"--recipes {reference}: the folder holds no .yaml recipe")
        for source in files:
            recipe = load_recipe(source)
            if recipe.name in recipes:
                raise ConfigError(f"--recipes: two recipes are named {recipe.name!r}; each model needs its own name")
            recipes[recipe.name] = recipe
    workers = args.workers
    limits, differ = strictest(recipe.limits for recipe in recipes.values())
    if differ:
        print(f"moa serve: note: the recipes set different limits for {', '.join(differ)}; one limiter serves them "
              f"all, with the strictest setting of each", file=sys.stderr, flush=True)  # fmt: skip
    if workers > 1:
        import multiprocessing

        if "fork" not in multiprocessing.get_all_start_methods():
            raise ConfigError(f"--workers {workers}: the workers are forked, which this platform cannot do; use "
                              f"--workers 1")  # fmt: skip
        _check_divisible(limits, workers)
    listeners = _listen(args.host, args.port, workers)
    own: list[socket.socket] = []
    if workers > 1:
        from moa.serve.workers import own_listeners

        try:
            own = own_listeners(workers, args.host)
        except OSError as exc:
            raise ConfigError(f"--workers {workers}: cannot open a listening socket for each: {exc}") from None
    port = listeners[0].getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"moa serve: listening on http://{host}:{port}/v1 ({len(recipes)} recipes: {', '.join(recipes)}"
          f"{f'; {workers} workers' if workers > 1 else ''})", file=sys.stderr, flush=True)  # fmt: skip
    if workers == 1:
        try:
            return _serve(args, recipes, token, listeners)
        finally:
            print("moa serve: stopped", file=sys.stderr, flush=True)
    _worker_notes(limits, workers)
    from moa.serve.workers import SharedBudget, address, stop_signals, supervise

    stop = stop_signals()  # SIGTERM or Ctrl-C from now on stops the server in order, even before the workers start
    from moa._litellm import litellm_module

    litellm_module()  # imported once, before the workers fork: each starts with it (it starts no thread)
    peers = [address(each) for each in own]
    budget = SharedBudget(args.max_cost, args.allow_unpriced, workers) if args.max_cost is not None else None

    def serve(index: int) -> int:  # (in worker ``index``, just forked)
        if budget is not None:
            budget.index = index
        mine = [listeners[index], own[index]]
        for other in [*listeners, *own]:  # the others' sockets stay open only where they are served
            if other not in mine:
                other.close()
        return _serve(args, recipes, token, mine, (index, workers), peers, budget)

    try:
        return supervise(workers, serve, args.shutdown_timeout, stop,
                         budget.worker_died if budget is not None else None, [*listeners, *own])  # fmt: skip
    finally:
        print("moa serve: stopped", file=sys.stderr, flush=True)


def _listen(host: str, port: int, count: int) -> list[socket.socket]:
    """Listening sockets on ``host:port``: one, or one per worker on that one port (``SO_REUSEPORT``: the kernel
    spreads new connections evenly over them, where one shared socket lets whichever worker wakes first take a
    whole burst).  Connections queue from now on, before any app is up."""
    from moa._errors import ConfigError

    found: list[socket.socket] = []
    try:
        if count > 1:  # first, that the port is free: SO_REUSEPORT would let these join another server's sockets
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
                port = probe.getsockname()[1]
        for _ in range(count):
            listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            found.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted connections inherit it (Linux)
            listener.bind((host, port))
            listener.listen(2048)
            port = listener.getsockname()[1]  # (port 0: the others take the port the first was given)
    except OSError as exc:
        for listener in found:
            listener.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return found


def _worker_notes(limits: dict[str, Any], workers: int) -> None:
    """Say when ``--workers`` is likely to serve worse than fewer would."""
    from moa._limits import concurrencies

    cores = os.cpu_count() or 1
    if workers > cores:
        print(f"moa serve: note: {workers} workers on {cores} cores: about one per core serves best",
              file=sys.stderr, flush=True)  # fmt: skip
    for name, most in concurrencies(limits).items():
        if most // workers < 4:
            print(f"moa serve: note: each of the {workers} workers holds about {most // workers} of the "
                  f"{most} calls at a time of limits.{name}.max_concurrency; requests do not spread over the "
                  f"workers evenly, so where a provider's limit, not the CPU, bounds the server, fewer workers "
                  f"serve better", file=sys.stderr, flush=True)  # fmt: skip


def _serve(args: argparse.Namespace, recipes: dict[str, Any], token: str | None, sockets: list[socket.socket],
           worker: tuple[int, int] = (0, 1), peers: list[str] | None = None, budget: Any = None) -> int:  # fmt: skip
    """Serve on ``sockets`` in this process until SIGTERM or Ctrl-C (one of ``--workers``, or the only one)."""
    import uvicorn
    from sse_starlette.sse import AppStatus

    from moa.serve import ServeConfig, create_app
    from moa.serve._log import RequestLog

    # A stream in flight when the server stops finishes like any run (within --shutdown-timeout), rather than
    # being cut by sse-starlette as soon as the signal comes.
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
    request_log = RequestLog(args.log_db, runlog=not args.no_log)
    config = ServeConfig(recipes, token=token, budget_usd=args.max_cost, per_request_usd=args.max_cost_per_request,
                         max_body_bytes=args.max_body, deadline_s=args.deadline, allow_unpriced=args.allow_unpriced,
                         log=request_log, budget=budget, worker=worker, peers=peers or [])  # fmt: skip
    # No proxy headers: nothing here reads the client's address, and parsing them costs every request.
    settings = uvicorn.Config(create_app(config), log_level="warning", access_log=False, proxy_headers=False,
                              timeout_graceful_shutdown=args.shutdown_timeout)  # fmt: skip
    server = _server(settings, config)
    # A run still going on at --shutdown-timeout is cancelled and logged as such: not an error with a traceback.
    logging.getLogger("uvicorn.error").addFilter(lambda record: not _stopped_run(config, record))
    # uvicorn stops on SIGTERM / Ctrl-C, then raises the signal again: a Python handler for SIGTERM (SIGINT has
    # one) turns it into an exit that lets the request log write what it holds before the process ends.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        server.run(sockets=sockets)
    finally:
        request_log.close()
    return EXIT_OK


def _stopped_run(config: Any, record: logging.LogRecord) -> bool:
    return bool(config.stopping and record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


def _check_divisible(limits: dict[str, Any], workers: int) -> None:
    """Each worker holds a share of every limit: a limit must leave each at least one call at a time."""
    from moa._errors import ConfigError
    from moa._limits import concurrencies

    found = concurrencies(limits)
    small = [f"limits.{name}.max_concurrency is {most}" for name, most in found.items() if most < workers]
    if small:
        raise ConfigError(f"--workers {workers}: each worker holds a share of every provider's limits, but "
                          f"{'; '.join(small)} (fewer calls at a time than workers): use --workers "
                          f"{min(found.values())} or fewer, or raise the limit")  # fmt: skip


def _server(settings: Any, config: Any) -> Any:
    """uvicorn's server, telling the app when it is told to stop (``config.stopping``)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            config.stopping = True
            super().handle_exit(sig, frame)

    return Server(settings)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
