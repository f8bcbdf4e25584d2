"""What `moa serve` adds over calling the engine in-process: requests per second and latency at 50 concurrent
clients, and the time to the first streamed token against the critical path.

    python benchmarks/serve.py [--clients 50] [--rounds 6] [--repeat 3] [--latency 0.2] [--workers 1 2] [--no-pin]
                               [--no-log]

The provider is the loopback server in a process of its own (each answer after `--latency` seconds). A one-call
recipe: `--clients` concurrent clients, each sending `--rounds` requests one after another, (a) in-process with
`moa.run` (in a process of its own), (b) through `moa serve --workers N` (a subprocess) driven by an aiohttp client;
the difference of the mean latencies is what serving adds per request, and the difference of the CPU time each used
per request (for `moa serve`, all its processes) is what it costs (a figure that does not depend on how the requests
happen to queue). Then a two-layer recipe (two proposers, one aggregator: a critical path of two answers) streamed
through `moa serve`: the time to the first content chunk against 2 x `--latency`. Each N of `--workers` is measured
in turn (default: 1, then 2).

With one worker, on a machine with two or more cores, the system under test (the in-process engine, or `moa serve`)
runs alone on one core and the load (the provider and the clients) on another (`--no-pin` lets them share), so that
what is measured is the server's own work and not the load generator's fight for the same core. Several workers are
there to use several cores: then every process (the in-process engine too) may run on every core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import moa  # noqa: E402

LOAD_CPU, SERVER_CPU = 0, 1
CPU_S: list[float] = []  # the CPU time the system under test used in each measured pass


def pinned(cpu: int | None) -> Callable[[], None] | None:
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def start(argv: list[str], marker: str, env: dict[str, str] | None = None,
          cpu: int | None = None) -> tuple[subprocess.Popen[str], str]:  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=pinned(cpu))  # fmt: skip
    stream = process.stdout if marker == "PORT" else process.stderr
    assert stream is not None
    line = stream.readline()
    if marker not in line:
        process.kill()
        raise SystemExit(f"{argv[2]} did not start: {line}{stream.read()}")
    # Keep reading what it writes (a JSON line per request): a full pipe would stop the server mid-benchmark.
    threading.Thread(target=stream.read, daemon=True).start()
    return process, line


async def in_process(recipe: Any, clients: int, rounds: int) -> tuple[list[float], float]:
    limiter = moa.Limiter(recipe.limits)
    latencies: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        await moa.run("What is 2 + 2?", recipe, limiter=limiter, api_key="k")
        latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(clients)))  # warm up (imports, connections), as for the server
    latencies.clear()
    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(one, rounds) for _ in range(clients)))
    CPU_S.append(time.process_time() - cpu)
    return latencies, time.perf_counter() - began


async def client(one: Callable[[], Any], requests: int) -> None:
    """One client: ``requests`` requests, each sent as soon as the last one is answered."""
    for _ in range(requests):
        await one()


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) a process and its children (``--workers``) have used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]  # fmt: skip
    return own + sum(cpu_seconds(child) for child in children)


async def served(base: str, clients: int, rounds: int, pid: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    body = {"model": "one", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            started = time.perf_counter()
            async with session.post(f"{base}/chat/completions", json=body) as response:
                response.raise_for_status()
                await response.read()
            latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one() for _ in range(clients)))  # warm up (imports, connections)
        latencies.clear()
        began, cpu = time.perf_counter(), cpu_seconds(pid)
        await asyncio.gather(*(client(one, rounds) for _ in range(clients)))
        wall = time.perf_counter() - began
        CPU_S.append(cpu_seconds(pid) - cpu)
        return latencies, wall


async def first_token(base: str, tries: int = 5) -> list[float]:
    found = []
    body = {"model": "two", "stream": True, "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(tries):
            started = time.perf_counter()
            async with session.post(f"{base}/chat/completions", json=body) as response:
                async for raw in response.content:
                    line = raw.decode()
                    if '"content": "' in line and '"content": ""' not in line:
                        found.append(time.perf_counter() - started)
                        break
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--repeat", type=int, default=3, help="passes of each path, in turn (the median is told)")
    parser.add_argument("--no-log", action="store_true", help="serve with --no-log (no run-log writes)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="measure moa serve --workers N for each N given (default: 1 2)")  # fmt: skip
    parser.add_argument("--no-pin", action="store_true", help="let the server and the load share every core")
    parser.add_argument("--in-process", metavar="RECIPE", help=argparse.SUPPRESS)  # the in-process run's own process
    args = parser.parse_args()
    if args.in_process:
        found, wall = asyncio.run(in_process(moa.load_recipe(args.in_process), args.clients, args.rounds))
        print(json.dumps({"latencies": found, "wall": wall, "cpu": CPU_S[-1]}))
        return 0
    cores = len(os.sched_getaffinity(0))
    for workers in args.workers:
        # One worker: the server alone on one core, as the in-process engine. Several workers are there to use
        # several cores: every process (the in-process engine too) may use every core.
        pin = not args.no_pin and workers == 1 and cores >= 2
        passes, ttft = measure(args, workers, pin)
        report(args, workers, pin, passes, ttft)
    return 0


def measure(args: argparse.Namespace, workers: int, pin: bool) -> tuple[list[Any], list[float]]:
    load, system = (LOAD_CPU, SERVER_CPU) if pin else (None, None)
    os.sched_setaffinity(0, {load} if load is not None else os.sched_getaffinity(1))  # this process: the clients
    extra = (["--no-log"] if args.no_log else []) + ["--workers", str(workers)]
    upstream, line = start([sys.executable, "-m", "moa.testing", "--latency", str(args.latency)], "PORT", cpu=load)
    api_base = f"http://127.0.0.1:{line.split()[1]}/v1"
    folder = Path(tempfile.mkdtemp())
    defaults = {"api_base": api_base, "timeout": 120}
    limits = {"openai": {"max_concurrency": 500}}
    one = {"name": "one", "defaults": defaults, "limits": limits,
           "layers": [{"kind": "propose", "agents": [{"model": "openai/m"}]}]}  # fmt: skip
    two = {"name": "two", "defaults": defaults, "limits": limits,
           "layers": [{"kind": "propose", "agents": [{"model": "openai/a"}, {"model": "openai/b"}]},
                      {"kind": "aggregate", "agents": [{"model": "openai/c"}]}]}  # fmt: skip
    for recipe in (one, two):
        (folder / f"{recipe['name']}.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OPENAI_API_KEY": "k"}
    passes: list[tuple[list[float], float, float, list[float], float, float]] = []
    try:
        server, line = start([sys.executable, "-m", "moa", "serve", "--recipes", str(folder), "--port", "0", *extra],
                             "listening on", env, cpu=system)  # fmt: skip
        base = line.split("listening on ", 1)[1].split()[0]
        try:
            for _ in range(args.repeat):  # in turn, so that a busy spell of the machine hits both alike
                measured = subprocess.run(
                    [sys.executable, __file__, "--in-process", str(folder / "one.yaml"), "--clients",
                     str(args.clients), "--rounds", str(args.rounds)],
                    env=env, capture_output=True, text=True, check=True, preexec_fn=pinned(system),
                )  # fmt: skip
                found = json.loads(measured.stdout.splitlines()[-1])
                remote, remote_wall = asyncio.run(served(base, args.clients, args.rounds, server.pid))
                passes.append((found["latencies"], found["wall"], found["cpu"], remote, remote_wall, CPU_S[-1]))
            ttft = asyncio.run(first_token(base))
        finally:
            server.terminate()
            server.wait()
    finally:
        upstream.kill()
    return passes, ttft


def report(args: argparse.Namespace, workers: int, pin: bool, passes: list[Any], ttft: list[float]) -> None:
    n = args.clients * args.rounds
    where = "server alone on one core, provider and clients on another" if pin else "every process on every core"
    print(f"\n{args.clients} concurrent clients x {args.rounds} rounds, provider latency {args.latency * 1000:.0f} "
          f"ms, moa serve --workers {workers} ({where}); {args.repeat} passes of each, in turn")  # fmt: skip
    print("| pass | path | requests/s | mean latency | p95 latency | CPU per request |")
    print("|---|---|---|---|---|---|")
    added, cpu_added = [], []
    for number, (local, local_wall, local_cpu, remote, remote_wall, remote_cpu) in enumerate(passes, start=1):
        for label, latencies, wall, cpu in (("moa.run in-process", local, local_wall, local_cpu),
                                            ("through moa serve", remote, remote_wall, remote_cpu)):  # fmt: skip
            p95 = sorted(latencies)[int(0.95 * (len(latencies) - 1))]
            print(f"| {number} | {label} | {n / wall:.1f} | {statistics.mean(latencies) * 1000:.1f} ms | "
                  f"{p95 * 1000:.1f} ms | {cpu / n * 1000:.2f} ms |")  # fmt: skip
        added.append(statistics.mean(remote) - statistics.mean(local))
        cpu_added.append((remote_cpu - local_cpu) / n)
    print(f"added by moa serve --workers {workers}: {statistics.median(added) * 1000:.1f} ms per request (median of "
          f"the passes' mean latencies: {', '.join(f'{a * 1000:.1f}' for a in added)}); CPU added per request "
          f"{statistics.median(cpu_added) * 1000:.2f} ms (all its processes)")  # fmt: skip
    print(f"time to first streamed token (two layers, critical path {2 * args.latency * 1000:.0f} ms): "
          f"median {statistics.median(ttft) * 1000:.0f} ms over {len(ttft)} requests")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
