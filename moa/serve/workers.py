"""``moa serve --workers N``: N processes answer on one port, as one server.

One process runs every request on one event loop, so on one core: litellm
alone costs a few milliseconds of CPU a call, which caps a process at roughly
two hundred calls a second, and a burst of requests queues behind that core.
With ``--workers N`` the process ``moa serve`` started as (the supervisor)
loads the recipes and opens N listening sockets on the port (``SO_REUSEPORT``:
the kernel spreads new connections over them), then forks N workers, each
accepting on its own.  They stay one server:

- **Limits** hold for all of them together: each worker holds its share of
  every provider's limits (``moa._limits.shares``: the shares of
  ``max_concurrency`` add up to it, ``rpm`` and ``tpm`` are divided), so no
  call waits on another process.  A limit smaller than the number of workers
  cannot be divided and is refused when the server starts.
- **The server's budget** (``--max-cost``) is one: ``SharedBudget`` keeps its
  books in shared memory, and every worker reserves from it under one lock.
- **Traces**: a run id names its worker (``run-w2-...``); a
  ``GET /v1/moa/runs/{id}`` that reaches another worker is fetched from that
  one, over the address it alone listens on (127.0.0.1, the same token).
- A worker that dies is replaced (the requests it was answering are lost: their
  clients see the connection close; what their runs held of the budget counts
  as spent).  SIGTERM or Ctrl-C stops every worker as
  one process stops (runs in flight finish within ``--shutdown-timeout``), then
  the supervisor; a worker whose supervisor is killed stops too.
- Each worker starts its own server for a local model it uses.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import wait
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from moa._call import Budget, BudgetRefused

#: A worker that ends this soon after it started, this many times in a row, is not started again.
QUICK_S = 5.0
QUICK_LIMIT = 3
#: How long a worker waits for the shared budget's lock before refusing the request (the lock is held for
#: microseconds: only a worker stopped while holding it makes anyone wait).
LOCK_S = 10.0
#: How long a worker waits for another to send a trace it keeps.
PEER_S = 10.0


class SharedBudget(Budget):
    """The server's budget for every worker process: its books live in shared memory made before the workers are
    forked, and every read or change happens under one lock.

    The books are what was spent, what runs in flight hold (in all, and by each worker) and which process holds
    the lock.  A worker that dies takes its runs with it: what they held counts as spent (their calls may have been
    paid), and a lock it died holding is released (``worker_died``).  A request refused for want of money closes
    the budget to nobody else (``stop_on_refusal=False``)."""

    def __init__(self, max_cost_usd: float, allow_unpriced: bool = False, workers: int = 1) -> None:
        super().__init__(max_cost_usd, allow_unpriced, stop_on_refusal=False)
        context = multiprocessing.get_context("fork")
        self._books = context.RawArray("d", 3 + workers)  # spent, held, the lock's holder (a pid), held by each
        self._lock = context.Lock()  # (not an RLock: the supervisor may release it for a worker that died)
        self._depth = 0  # this process's nesting inside the lock
        self.index = 0  # the worker this process is (set in each worker)

    @contextlib.contextmanager
    def _shared(self) -> Iterator[None]:
        if self._depth:  # already inside (``reserve`` asks ``fits``)
            yield
            return
        if not self._lock.acquire(timeout=LOCK_S):
            raise BudgetRefused(f"the server's budget is held by a worker that stopped answering for {LOCK_S:g} s")
        self._books[2] = os.getpid()
        self._depth = 1
        spent, held = self._books[0], self._books[1]
        self.spent_usd, self.reserved_usd = spent, held
        try:
            yield
        finally:
            self._books[3 + self.index] += self.reserved_usd - held
            self._books[0], self._books[1], self._books[2] = self.spent_usd, self.reserved_usd, 0
            self._depth = 0
            self._lock.release()

    def worker_died(self, index: int, pid: int) -> None:
        """(The supervisor.) Worker ``index`` (process ``pid``) died: release the lock if it held it, and count
        what its runs held as spent."""
        if self._books[2] == pid:
            self._books[2] = 0
            self._lock.release()
        if not self._lock.acquire(timeout=LOCK_S):
            return
        try:
            lost = self._books[3 + index]
            self._books[0] += lost
            self._books[1] = max(0.0, self._books[1] - lost)
            self._books[3 + index] = 0.0
        finally:
            self._lock.release()

    @property
    def remaining_usd(self) -> float:
        with self._shared():
            return super().remaining_usd

    @property
    def exhausted(self) -> bool:
        with self._shared():
            return super().exhausted

    def fits(self, worst_case_usd: float | None) -> bool:
        with self._shared():
            return super().fits(worst_case_usd)

    def reserve(self, worst_case_usd: float | None) -> float:
        with self._shared():
            return super().reserve(worst_case_usd)

    def settle(self, reserved_usd: float, actual_usd: float | None) -> None:
        with self._shared():
            super().settle(reserved_usd, actual_usd)


def own_listeners(count: int, host: str) -> list[socket.socket]:
    """Each worker's own listening socket on the loopback address (made before the workers, so that every
    worker knows every other's address)."""
    loopback = "::1" if ":" in host else "127.0.0.1"
    found = []
    for _ in range(count):
        listener = socket.socket(socket.AF_INET6 if ":" in loopback else socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((loopback, 0))
        listener.listen(128)
        found.append(listener)
    return found


def address(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def trace_from_peer(config: Any, request: Request) -> Response | str | None:
    """The trace of a run another worker answered, fetched from it (None: the id names no other worker; a text:
    that worker did not answer)."""
    import httpx

    run_id = request.path_params["run_id"]
    index = _worker_of(run_id)
    if index is None or index == config.worker[0] or index >= len(config.peers):
        return None
    headers = {"authorization": request.headers["authorization"]} if "authorization" in request.headers else {}
    try:
        async with httpx.AsyncClient(timeout=PEER_S, trust_env=False) as client:
            found = await client.get(f"{config.peers[index]}/v1/moa/runs/{run_id}", headers=headers)
    except httpx.HTTPError as exc:
        return f"the run {run_id!r} is kept by worker {index}, which did not answer ({type(exc).__name__})"
    return Response(found.content, status_code=found.status_code, media_type="application/json")


def _worker_of(run_id: str) -> int | None:
    parts = run_id.split("-")
    if len(parts) == 3 and parts[0] == "run" and parts[1][:1] == "w" and parts[1][1:].isdigit():
        return int(parts[1][1:])
    return None


def stop_signals() -> list[int]:
    """From now on SIGTERM and Ctrl-C are noted in the list returned (for ``supervise``), not acted on at once."""
    stop: list[int] = []
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda signum, frame: stop.append(signum))
    return stop


def supervise(count: int, serve: Callable[[int], int], shutdown_s: float, stop: list[int],
              died: Callable[[int, int], None] | None = None,
              sockets: Sequence[socket.socket] = ()) -> int:  # fmt: skip
    """Run ``serve(index)`` in ``count`` forked workers until a signal is noted in ``stop`` (``stop_signals``);
    replace a worker that dies (after ``died(index, pid)``).  ``sockets`` (the workers' listening sockets) are
    closed here when the server stops, so that new connections are refused while the workers finish.

    Returns the exit status: 128 + the signal that stopped the server, or 1 when workers keep dying at start."""
    context = multiprocessing.get_context("fork")
    if stop:
        return 128 + stop[0]  # (stopped before any worker started)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)

    supervisor = os.getpid()

    def start(index: int) -> tuple[Any, float]:
        process = context.Process(target=_worker, args=(serve, index, supervisor, (wake_read, wake_write)),
                                  name=f"moa-serve-worker-{index}")  # fmt: skip
        process.start()
        return process, time.monotonic()

    workers = {index: start(index) for index in range(count)}
    quick = 0
    try:
        while not stop:
            wait([process.sentinel for process, _ in workers.values()] + [wake_read])
            with contextlib.suppress(BlockingIOError):
                os.set_blocking(wake_read, False)
                os.read(wake_read, 512)
            if stop:
                break
            for index, (process, began) in list(workers.items()):
                if process.exitcode is None:
                    continue
                if died is not None:
                    died(index, process.pid)
                quick = quick + 1 if time.monotonic() - began < QUICK_S else 0
                if quick >= QUICK_LIMIT:
                    print(f"moa serve: error: workers keep ending as they start (worker {index}: exit status "
                          f"{process.exitcode}); stopping", file=sys.stderr, flush=True)  # fmt: skip
                    return 1
                print(f"moa serve: worker {index} ended (exit status {process.exitcode}); starting another",
                      file=sys.stderr, flush=True)  # fmt: skip
                workers[index] = start(index)
        return 128 + stop[0]
    finally:
        for listener in sockets:
            listener.close()
        _stop_all([process for process, _ in workers.values()], shutdown_s)
        signal.set_wakeup_fd(-1)
        os.close(wake_read)
        os.close(wake_write)


def _stop_all(processes: list[Any], shutdown_s: float) -> None:
    """SIGTERM each worker (each finishes its runs within ``shutdown_s`` and writes its log), then wait; a worker
    still there well after that is killed."""
    for process in processes:
        if process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    ends = time.monotonic() + shutdown_s + 15
    for process in processes:
        process.join(max(0.0, ends - time.monotonic()))
        if process.exitcode is None:
            process.kill()
            process.join()


def _worker(serve: Callable[[int], int], index: int, supervisor: int, supervisors: tuple[int, int]) -> None:
    os.setpgrp()  # Ctrl-C reaches the supervisor only, which stops the workers in order
    with contextlib.suppress(Exception):  # Linux: stop when the supervisor dies, even by SIGKILL
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != supervisor:
        os._exit(143)  # the supervisor died before the line above
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    for descriptor in supervisors:  # the supervisor's wake-up pipe
        os.close(descriptor)
    sys.exit(serve(index))
