"""What `moa serve` adds over calling the engine in-process: requests per second and latency at 50 concurrent
clients, and the time to the first streamed token against the critical path.

    python benchmarks/serve.py [--clients 50] [--rounds 4] [--latency 0.2]

The provider is the loopback server in a process of its own (each answer after `--latency` seconds), so its CPU is
not counted. A one-call recipe: `--clients` concurrent runs, `--rounds` times, (a) in-process with `moa.run`, (b)
through `moa serve` (a subprocess) with httpx; the difference of the mean latencies is what serving adds per
request. Then a two-layer recipe (two proposers, one aggregator: a critical path of two answers) streamed through
`moa serve`: the time to the first content chunk against 2 x `--latency`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import moa  # noqa: E402


def start(argv: list[str], marker: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stream = process.stdout if marker == "PORT" else process.stderr
    assert stream is not None
    line = stream.readline()
    if marker not in line:
        process.kill()
        raise SystemExit(f"{argv[2]} did not start: {line}{stream.read()}")
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
    began = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(one() for _ in range(clients)))
    return latencies, time.perf_counter() - began


async def served(base: str, clients: int, rounds: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def one() -> None:
            started = time.perf_counter()
            response = await client.post("/chat/completions", json={
                "model": "one", "messages": [{"role": "user", "content": "What is 2 + 2?"}]})  # fmt: skip
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one() for _ in range(clients)))  # warm up (imports, connections)
        latencies.clear()
        began = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(clients)))
        return latencies, time.perf_counter() - began


async def first_token(base: str, tries: int = 5) -> list[float]:
    found = []
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        for _ in range(tries):
            started = time.perf_counter()
            body = {"model": "two", "stream": True, "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
            async with client.stream("POST", "/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if '"content": "' in line and '"content": ""' not in line:
                        found.append(time.perf_counter() - started)
                        break
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--no-log", action="store_true", help="serve with --no-log (no run-log writes)")
    args = parser.parse_args()
    extra = ["--no-log"] if args.no_log else []
    upstream, line = start([sys.executable, "-m", "moa.testing", "--latency", str(args.latency)], "PORT")
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
    server, line = start([sys.executable, "-m", "moa", "serve", "--recipes", str(folder), "--port", "0", *extra],
                         "listening on", env)  # fmt: skip
    base = line.split("listening on ", 1)[1].split()[0]
    try:
        os.environ.setdefault("OPENAI_API_KEY", "k")
        local, local_wall = asyncio.run(in_process(moa.load_recipe(one), args.clients, args.rounds))
        remote, remote_wall = asyncio.run(served(base, args.clients, args.rounds))
        ttft = asyncio.run(first_token(base))
    finally:
        server.terminate()
        upstream.kill()
    n = args.clients * args.rounds
    added = statistics.mean(remote) - statistics.mean(local)
    print(f"{args.clients} concurrent clients x {args.rounds} rounds, provider latency {args.latency * 1000:.0f} ms")
    print("| path | requests/s | mean latency | p95 latency |")
    print("|---|---|---|---|")
    for label, found, wall in (("moa.run in-process", local, local_wall), ("through moa serve", remote, remote_wall)):
        p95 = sorted(found)[int(0.95 * (len(found) - 1))]
        print(f"| {label} | {n / wall:.1f} | {statistics.mean(found) * 1000:.1f} ms | {p95 * 1000:.1f} ms |")
    print(f"added by moa serve: {added * 1000:.1f} ms per request (mean)")
    print(f"time to first streamed token (two layers, critical path {2 * args.latency * 1000:.0f} ms): "
          f"median {statistics.median(ttft) * 1000:.0f} ms over {len(ttft)} requests")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
