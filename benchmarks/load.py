"""Load: 10,000 calls pending at once, memory per pending call, throughput against bare litellm.

    python benchmarks/load.py [--runs 1000] [--latency 0.05] [--in-flight 256] [--calls 2000] [--rounds 4]

The loopback server runs in its own process. (1) ``--runs`` concurrent runs of a recipe with
10 proposers + 1 aggregator: 10 x runs calls are pending at once in the first layer; peak RSS
growth divided by that number is the memory per pending call. (2) Throughput with
``--in-flight`` calls in flight at ``--latency`` seconds each: the engine (one-call runs, a
shared limiter) versus bare ``litellm.acompletion`` with the same concurrency, same server,
same process. Target: engine >= 0.9 x bare; 10,000 pending calls in under 1 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from engine_overhead import server

import moa
from moa._litellm import litellm_module


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def pending_phase(url: str, runs: int) -> tuple[float, float, int, int]:
    recipe = moa.load_recipe({
        "name": "load-10x1",
        "defaults": {"api_base": url, "max_tokens": 16, "timeout": 600},
        "layers": [
            {"kind": "propose", "agents": [{"model": f"openai/p{i}"} for i in range(10)]},
            {"kind": "aggregate", "agents": [{"model": "openai/agg"}]},
        ],
        "limits": {"openai": {"max_concurrency": 256}},
    })  # fmt: skip
    limiter = moa.Limiter(recipe.limits)
    await moa.run("warm-up", recipe, api_key="load", limiter=limiter)
    base = rss_mb()
    peak = base
    pending_max = 0
    calls = {"started": 0, "finished": 0}

    def count(event: moa.Event) -> None:
        if event.kind == "call_finished" or event.kind == "call_failed":
            calls["finished"] += 1

    async def sample() -> None:
        nonlocal peak, pending_max
        while True:
            peak = max(peak, rss_mb())
            # Calls of layer 1 not finished yet (all 10 x runs are created at once).
            pending_max = max(pending_max, runs * 10 - calls["finished"])
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    results = await asyncio.gather(*(
        moa.run(f"Question {i}", recipe, api_key="load", limiter=limiter, on_event=count) for i in range(runs)
    ))  # fmt: skip
    wall = time.perf_counter() - started
    sampler.cancel()
    failed = sum(1 for r in results for c in r.calls if not c.ok)
    return wall, (peak - base), failed, sum(len(r.calls) for r in results)


async def throughput(url: str, calls: int, in_flight: int, rounds: int) -> tuple[float, float]:
    litellm = litellm_module()
    messages = [{"role": "user", "content": "How fast?"}]
    recipe = moa.load_recipe({
        "name": "one-call", "defaults": {"api_base": url, "max_tokens": 16},
        "layers": [{"kind": "propose", "agents": [{"model": "openai/p"}]}],
        "limits": {"openai": {"max_concurrency": in_flight}},
    })  # fmt: skip
    limiter = moa.Limiter(recipe.limits)

    async def bare_worker(quota: list[int]) -> None:
        while quota[0] > 0:
            quota[0] -= 1
            await litellm.acompletion(model="openai/p", messages=messages, api_base=url, api_key="load",
                                      max_tokens=16, max_retries=0, timeout=120)  # fmt: skip

    async def engine_worker(quota: list[int]) -> None:
        while quota[0] > 0:
            quota[0] -= 1
            await moa.run("How fast?", recipe, api_key="load", limiter=limiter)

    rates: dict[str, list[float]] = {"bare": [], "engine": []}
    for _ in range(rounds):  # interleaved, so drift on a shared machine hits both sides alike
        for label, worker in (("bare", bare_worker), ("engine", engine_worker)):
            quota = [calls]
            started = time.perf_counter()
            await asyncio.gather(*(worker(quota) for _ in range(in_flight)))
            rates[label].append(calls / (time.perf_counter() - started))
    return statistics.median(rates["bare"]), statistics.median(rates["engine"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--calls", type=int, default=2000, help="calls per throughput measurement")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved bare/engine rounds (medians)")
    args = parser.parse_args()
    with server(args.latency) as url:
        # Throughput first, in a fresh process: the 10,000-call phase leaves a large heap behind.
        bare, engine = asyncio.run(throughput(url, args.calls, args.in_flight, args.rounds))
        wall, grown, failed, total = asyncio.run(pending_phase(url, args.runs))
    pending = args.runs * 10
    print(f"(1) {args.runs} concurrent runs x 11 calls: {total} calls in {wall:.1f} s, {failed} failed; "
          f"{pending} calls pending at once")  # fmt: skip
    print(f"    peak RSS growth {grown:.0f} MB = {grown * 1024 / pending:.1f} KB per pending call "
          f"(10,000 pending calls: {grown * 10000 / pending:.0f} MB; target < 1024 MB)")  # fmt: skip
    print(f"(2) {args.in_flight} in flight, {args.latency * 1000:.0f} ms latency, median of {args.rounds} rounds: "
          f"bare litellm {bare:.0f} calls/s, engine {engine:.0f} calls/s = {engine / bare:.2f} of the ceiling "
          "(target >= 0.90)")  # fmt: skip


if __name__ == "__main__":
    main()
