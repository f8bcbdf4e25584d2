"""`moa serve --workers N`: N processes on one port, as one server: limits held across them (peak in flight counted
at the loopback server), one budget, traces from any worker, a dead worker replaced, SIGTERM with runs in flight,
workers gone with their supervisor."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from conftest import CountingServer, start_serve, stop_served, wait_until

from moa.serve.workers import SharedBudget, _worker_of

pytestmark = pytest.mark.slow
TOKEN = "workers-test-token-5512"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Any]:
    """``served(workers, latency=..., limit=..., args=...)``: a counting loopback upstream, two recipes, and
    `moa serve --workers N` on a free port; returns (base, upstream, process, stderr lines)."""
    started: list[tuple[subprocess.Popen[str], CountingServer]] = []

    def start(workers: int, latency: float = 0.0, limit: int | None = None, args: tuple[str, ...] = ()) -> Any:
        upstream = CountingServer(latency_s=latency, responder=lambda body, index: f"{body['model']} says four")
        upstream.start()
        folder = tmp_path / f"recipes{len(started)}"
        folder.mkdir()
        defaults = {"api_base": upstream.base_url, "timeout": 900}
        for name, agent in (("single", {"model": "openai/solo"}),
                            ("priced", {"model": "openai/gpt-4o-mini", "max_tokens": 50})):  # fmt: skip
            data = {"name": name, "defaults": defaults, "layers": [{"kind": "propose", "agents": [agent]}],
                    **({"limits": {"openai": {"max_concurrency": limit}}} if limit else {})}  # fmt: skip
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))
        env = {**os.environ, "MOA_SERVE_TOKEN": TOKEN, "OPENAI_API_KEY": "upstream-key",
               "MOA_LOG_DB": str(tmp_path / "runs.sqlite")}  # fmt: skip
        process, base, lines = start_serve(["--recipes", str(folder), "--port", "0", "--api-key-env",
                "MOA_SERVE_TOKEN", "--workers", str(workers), "--shutdown-timeout", "60", *args], env)  # fmt: skip
        started.append((process, upstream))
        return base, upstream, process, lines

    yield start
    stop_served(started)


def _workers(base: str) -> dict[str, Any]:
    """The answering worker's part of /healthz (once the workers are up: connections queue until then)."""
    return dict(httpx.get(f"{base.removesuffix('/v1')}/healthz", timeout=120).json()["worker"])


def _ask_all(base: str, count: int, model: str = "single") -> list[Any]:
    """``count`` requests at once; each the response, or the error the openai SDK raised."""
    client = openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0, timeout=600)
    found: list[Any] = []

    def ask() -> None:
        try:
            found.append(client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "hi"}]))  # fmt: skip
        except openai.APIStatusError as exc:
            found.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found


def test_workers_hold_one_limit_and_any_of_them_returns_any_trace(served: Any) -> None:
    base, upstream, _, lines = served(3, latency=0.3, limit=4)
    worker = _workers(base)
    assert worker["of"] == 3 and len(worker["addresses"]) == 3
    answers = _ask_all(base, 24)
    assert [answer.parse().choices[0].message.content for answer in answers] == ["solo says four"] * 24
    assert len(upstream.completions()) == 24
    # The recipe's max_concurrency 4 holds across the three processes (shares 2 + 1 + 1).
    assert 1 <= upstream.peak <= 4, upstream.peak
    ids = [answer.headers["x-moa-run-id"] for answer in answers]
    assert all(_worker_of(run_id) in (0, 1, 2) for run_id in ids)
    # 24 connections at once: the kernel spreads them over the workers' sockets (one shared socket let one worker
    # take a whole burst).
    assert len({_worker_of(run_id) for run_id in ids}) >= 2
    # A trace, asked of each worker's own address: the one that ran it answers itself, the others fetch it from it.
    for run_id in ids[:4]:
        traces = [httpx.get(f"{address}/v1/moa/runs/{run_id}", headers=HEADERS, timeout=60)
                  for address in worker["addresses"]]  # fmt: skip
        assert [trace.status_code for trace in traces] == [200, 200, 200]
        assert all(trace.json() == traces[0].json() for trace in traces)
        assert traces[0].json()["output"] == "solo says four"
    stranger = httpx.get(f"{worker['addresses'][1]}/v1/moa/runs/{ids[0]}", timeout=60)  # the token holds there too
    assert stranger.status_code == 401
    for unknown in ("run-w0-00000000", "run-w2-00000000", "run-w7-00000000", "run-00000000"):
        missing = httpx.get(f"{base}/moa/runs/{unknown}", headers=HEADERS, timeout=60)
        assert missing.status_code == 404 and unknown in missing.json()["error"]["message"]
    # Every request is one log line, with its run in the run log.
    wait_until(lambda: sum('"run_id": "run-w' in line for line in lines) == 24, "every request was logged")
    assert all(json.loads(line.split("moa serve: ", 1)[1])["log_id"] for line in lines if '"run_id"' in line)


def test_streaming_through_a_worker(served: Any) -> None:
    base, _, _, _ = served(2)
    client = openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0, timeout=120)
    stream = client.chat.completions.create(model="single", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "solo says four"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_the_server_s_budget_is_one_for_every_worker(served: Any) -> None:
    budget = 0.00007  # two requests' worst cases (~$0.000032 each: 50 tokens out and the prompt of gpt-4o-mini)
    base, upstream, _, lines = served(3, latency=0.2, args=("--max-cost", str(budget)))
    answers = _ask_all(base, 12, model="priced")
    paid = [answer for answer in answers if not isinstance(answer, Exception)]
    refused = [answer for answer in answers if isinstance(answer, Exception)]
    assert paid and refused and all(exc.status_code == 402 for exc in refused)
    assert len(paid) <= 2  # one budget: three of their own would have let up to six through
    assert len(upstream.completions()) == len(paid)
    wait_until(lambda: sum('"recipe": "priced"' in line for line in lines) == 12, "every request was logged")
    logged = [json.loads(line.split("moa serve: ", 1)[1]) for line in lines if '"ok": true' in line]
    spent = sum(entry["cost_usd"] or 0.0 for entry in logged)
    assert 0 < spent <= budget


@pytest.mark.parametrize("workers", [1, 2])
def test_a_request_the_budget_cannot_hold_leaves_it_open_to_the_others(served: Any, workers: int) -> None:
    base, _, _, _ = served(workers, args=("--max-cost", "0.01"))
    client = openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0, timeout=120)
    ask = lambda **extra: client.chat.completions.create(  # noqa: E731
        model="priced", messages=[{"role": "user", "content": "hi"}], **extra)  # fmt: skip
    assert ask().choices[0].message.content == "gpt-4o-mini says four"
    with pytest.raises(openai.APIStatusError) as large:  # its worst case ($0.06) is over the whole budget
        ask(max_tokens=100_000)
    assert large.value.status_code == 402
    for _ in range(4):  # (on either worker)
        assert ask().choices[0].message.content == "gpt-4o-mini says four"


def _hold_and_die(budget: SharedBudget, index: int, hold_lock: bool) -> None:
    budget.index = index
    budget.reserve(0.25)  # a run in flight ...
    if hold_lock:
        budget._lock.acquire()
        budget._books[2] = os.getpid()
    os._exit(137)  # ... and the worker is gone


def test_a_dead_worker_s_holdings_count_as_spent_and_its_lock_is_released() -> None:
    budget = SharedBudget(1.0, workers=2)
    context = multiprocessing.get_context("fork")
    for hold_lock in (False, True):
        process = context.Process(target=_hold_and_die, args=(budget, 1, hold_lock))
        process.start()
        process.join()
        budget.worker_died(1, process.pid)  # (the supervisor, when it sees the worker gone)
        assert budget.remaining_usd == pytest.approx(0.5 if hold_lock else 0.75)  # (read under the lock: free again)
        assert budget.reserved_usd == pytest.approx(0.0)  # held by nobody: spent, since its calls may have been paid
    assert budget.spent_usd == pytest.approx(0.5)
    assert budget.reserve(0.5) == 0.5  # nobody waits on a lock a dead worker held


def _hold_and_settle(budget: SharedBudget, rounds: int) -> None:
    for _ in range(rounds):
        held = budget.reserve(0.001)
        budget.settle(held, 0.0005)


def test_a_shared_budget_keeps_one_set_of_books_across_processes() -> None:
    budget = SharedBudget(1.0)
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_hold_and_settle, args=(budget, 200)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    assert [process.exitcode for process in processes] == [0, 0, 0]
    assert budget.remaining_usd == pytest.approx(0.7)  # (reading it reads the shared books)
    assert budget.spent_usd == pytest.approx(0.3) and budget.reserved_usd == pytest.approx(0.0)
    child = budget.child(0.69)
    assert not budget.fits(0.02)  # what a child holds is held for every process
    child.close()
    assert budget.fits(0.02)


def test_a_limit_smaller_than_the_workers_is_refused_at_start(tmp_path: Path) -> None:
    for name, most in (("loose", 8), ("tight", 2)):  # one limiter serves both: the strictest, 2, holds
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({
            "name": name, "limits": {"openai": {"max_concurrency": most}, "local": {"max_concurrency": 1}},
            "layers": [{"kind": "propose", "agents": [{"model": "openai/x"}]}]}))  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "moa", "serve", "--recipes", str(tmp_path), "--port", "0",
                           "--workers", "3"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "the recipes set different limits for openai" in done.stderr
    assert "--workers 3" in done.stderr and "limits.openai.max_concurrency is 2" in done.stderr
    assert "use --workers 2 or fewer" in done.stderr and "Traceback" not in done.stderr


def test_a_dead_worker_is_replaced_and_sigterm_lets_runs_finish(served: Any) -> None:
    base, upstream, process, lines = served(2, latency=1.0)
    addresses = _workers(base)["addresses"]
    first = httpx.get(f"{addresses[1]}/healthz", timeout=60).json()["worker"]
    os.kill(first["pid"], signal.SIGKILL)
    wait_until(lambda: any("worker 1 ended (exit status -9); starting another" in line for line in lines), "replaced")
    again = httpx.get(f"{addresses[1]}/healthz", timeout=120).json()["worker"]  # its address, a new process
    assert again["index"] == 1 and again["pid"] != first["pid"]
    # Runs in flight on both workers when SIGTERM comes: every one finishes, then the server stops.
    answers: list[Any] = []
    streamed: list[str] = []

    def stream() -> None:
        client = openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0, timeout=120)
        chunks = client.chat.completions.create(model="single", messages=[{"role": "user", "content": "hi"}],
                                                stream=True)  # fmt: skip
        streamed.append("".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices))

    asking = [threading.Thread(target=lambda: answers.extend(_ask_all(base, 4))),
              *(threading.Thread(target=stream) for _ in range(2))]  # fmt: skip
    for thread in asking:
        thread.start()
    wait_until(lambda: upstream.now == 6, "six runs are in flight")
    process.send_signal(signal.SIGTERM)
    for thread in asking:
        thread.join()
    assert [answer.parse().choices[0].message.content for answer in answers] == ["solo says four"] * 4
    assert streamed == ["solo says four"] * 2  # a stream in flight finishes too
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    wait_until(lambda: any("moa serve: stopped" in line for line in lines), "the server's last line")
    logged = [json.loads(line.split("moa serve: ", 1)[1]) for line in lines if '"run_id"' in line]
    assert len(logged) == 6 and all(entry["ok"] and entry["log_id"] for entry in logged)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT])
def test_workers_stop_with_their_supervisor(served: Any, stop: signal.Signals) -> None:
    base, _, process, lines = served(2)
    addresses = _workers(base)["addresses"]
    pids = [httpx.get(f"{address}/healthz", timeout=60).json()["worker"]["pid"] for address in addresses]
    process.send_signal(stop)  # SIGKILL: the supervisor cannot stop them itself; Ctrl-C: it stops them in order
    status = process.wait(timeout=120)
    wait_until(lambda: all(_gone(pid) for pid in pids), "the workers stopped")
    if stop == signal.SIGINT:
        assert status == 128 + signal.SIGINT
        wait_until(lambda: any("moa serve: stopped" in line for line in lines), "the server's last line")


def test_a_trace_whose_worker_does_not_answer_is_502(served: Any) -> None:
    base, _, _, _ = served(2)
    addresses = _workers(base)["addresses"]
    owner = httpx.get(f"{addresses[1]}/healthz", timeout=60).json()["worker"]["pid"]
    os.kill(owner, signal.SIGSTOP)
    try:
        found = httpx.get(f"{addresses[0]}/v1/moa/runs/run-w1-00000000", headers=HEADERS, timeout=120)
    finally:
        os.kill(owner, signal.SIGCONT)
    assert found.status_code == 502 and "kept by worker 1, which did not answer" in found.json()["error"]["message"]


def test_a_second_server_cannot_take_the_port(served: Any, tmp_path: Path) -> None:
    base, _, _, _ = served(2)
    port = base.rsplit(":", 1)[1].split("/")[0]
    recipe = tmp_path / "other.yaml"
    layers = [{"kind": "propose", "agents": [{"model": "openai/x"}]}]
    recipe.write_text(yaml.safe_dump({"name": "other", "layers": layers}))
    done = subprocess.run([sys.executable, "-m", "moa", "serve", "--recipes", str(recipe), "--port", port,
                           "--workers", "2"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_runs_past_the_shutdown_timeout_are_cut_and_logged_without_a_traceback(served: Any, workers: int) -> None:
    base, upstream, process, lines = served(workers, latency=600, args=("--shutdown-timeout", "3"))
    plain: list[Any] = []

    def ask() -> None:  # a run that is not streamed
        question = {"model": "single", "messages": [{"role": "user", "content": "hi"}]}
        try:
            plain.append(httpx.post(f"{base}/chat/completions", headers=HEADERS, timeout=120, json=question))
        except httpx.HTTPError as exc:
            plain.append(exc)

    asking = threading.Thread(target=ask)
    asking.start()
    body = {"model": "single", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{base}/chat/completions", json=body, headers=HEADERS, timeout=120) as response:
        chunks = response.iter_lines()  # (kept: a generator dropped here would close the stream at once)
        assert next(chunks).startswith("data: ")
        wait_until(lambda: upstream.now == 2, "both runs are in flight")
        process.send_signal(signal.SIGTERM)
        while True:  # while the runs drain, a new connection is refused at once: it never hangs
            try:
                httpx.get(f"{base.removesuffix('/v1')}/healthz", timeout=2)
            except httpx.ConnectError:
                break
            except (httpx.ReadError, httpx.RemoteProtocolError):
                continue  # (connected just before the sockets closed: reset)
        assert process.poll() is None  # (refused during the drain, not after the server ended)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM
    asking.join()
    assert len(plain) == 1 and not (isinstance(plain[0], httpx.Response) and plain[0].status_code == 200)
    wait_until(lambda: any("moa serve: stopped" in line for line in lines), "the server's last line")
    logged = [json.loads(line.split("moa serve: ", 1)[1]) for line in lines if '"run_id"' in line]
    assert [entry["error"] for entry in logged] == ["CancelledError: the server stopped before the run finished "
                                                    "(--shutdown-timeout): its calls were cancelled"] * 2  # fmt: skip
    assert not any("Traceback" in line for line in lines), "".join(lines)
