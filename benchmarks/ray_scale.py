"""Throughput of runs made on Ray workers (calls per second) for 1, 2 and 4 workers, the cost of the limiter
every worker's calls go through, and what the figures predict for a cluster.

    python benchmarks/ray_scale.py [--runs 600] [--workers 1 2 4] [--in-flight 64]

The provider is the loopback server in a process of its own, answering at once: each call costs only CPU (litellm
and the engine in a worker, the server's HTTP), so the figures are the CPU-bound ceiling, not a provider's
latency.  A one-call recipe; `--runs` runs with `--in-flight` at once through `moa.distributed.RayRunner` (what
`moa eval ... --ray` uses), after a warm-up; the same in one process (`moa.run`, no Ray) for comparison.  Each
worker count twice: with the limits divided among the workers (the default when every limit allows it), and with
every call through the limiter actor (`RayRunner(central=True)`, what a limit below the number of workers needs):
its cost is the actor's CPU time per call and `--probes` acquire/release round trips one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import moa  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def through(run: Any, runs: int, in_flight: int) -> float:
    """Seconds for ``runs`` runs, ``in_flight`` at once."""
    gate = asyncio.Semaphore(in_flight)

    async def one(n: int) -> None:
        async with gate:
            await run(f"What is {n} + {n}?")

    began = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(runs)))
    return time.perf_counter() - began


async def on_ray(recipe: Any, workers: int, runs: int, in_flight: int, probes: int, central: bool
                 ) -> dict[str, float]:  # fmt: skip
    from moa.distributed import RayRunner

    runner = RayRunner(workers=workers, central=central)
    try:
        run = lambda prompt: runner.run(prompt, recipe)  # noqa: E731
        await through(run, 4 * workers, in_flight)  # warm up: every worker imports litellm and connects
        limiter_pid = await runner.limits.pid.remote()
        limiter_cpu = cpu_seconds(limiter_pid)
        driver_cpu = time.process_time()
        wall = await through(run, runs, in_flight)
        found = {"calls_per_s": runs / wall, "limiter_cpu_ms": (cpu_seconds(limiter_pid) - limiter_cpu) / runs * 1e3,
                 "driver_cpu_ms": (time.process_time() - driver_cpu) / runs * 1e3}  # fmt: skip
        if probes:
            key = await runner._limits_key(recipe)
            times = []
            for _ in range(probes):
                began = time.perf_counter()
                ticket = await runner.limits.acquire.remote("probe", key, "openai/m", 10)
                await runner.limits.release.remote(ticket)
                times.append(time.perf_counter() - began)
            found["round_trip_ms"] = statistics.median(times) * 1e3
        stats = await runner.limiter_stats()
        found["peak"] = stats["peak"]
        return found
    finally:
        runner.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=600)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--probes", type=int, default=500)
    args = parser.parse_args()
    import ray

    os.environ.setdefault("OPENAI_API_KEY", "k")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    upstream = subprocess.Popen([sys.executable, "-m", "moa.testing"], stdout=subprocess.PIPE, text=True)
    assert upstream.stdout is not None
    port = upstream.stdout.readline().split()[1]
    recipe = moa.load_recipe({
        "name": "one", "defaults": {"api_base": f"http://127.0.0.1:{port}/v1", "max_tokens": 16},
        "limits": {"openai": {"max_concurrency": 1000}},
        "layers": [{"kind": "propose", "agents": [{"model": "openai/m"}]}],
    })  # fmt: skip
    cores = len(os.sched_getaffinity(0))
    try:
        limiter = moa.Limiter(recipe.limits)
        local_run = lambda prompt: moa.run(prompt, recipe, limiter=limiter)  # noqa: E731
        asyncio.run(through(local_run, 16, args.in_flight))
        local = args.runs / asyncio.run(through(local_run, args.runs, args.in_flight))
        ray.init(num_cpus=max(max(args.workers), cores), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # fmt: skip
        rows = {(n, central): asyncio.run(on_ray(recipe, n, args.runs, args.in_flight,
                                                 args.probes if n == 1 and central else 0, central))
                for central in (False, True) for n in args.workers}  # fmt: skip
    finally:
        upstream.kill()
        if ray.is_initialized():
            ray.shutdown()
    print(f"{args.runs} one-call runs, {args.in_flight} in flight, loopback provider answering at once; "
          f"this machine: {cores} cores")  # fmt: skip
    print("| workers | limits held by | calls/s | limiter actor CPU per call | driver CPU per run | peak in flight |")
    print("|---|---|---|---|---|---|")
    print(f"| none (one process, moa.run) | the process | {local:.0f} | - | - | - |")
    for (n, central), row in rows.items():
        how = "the limiter actor" if central else "each worker's share"
        print(f"| {n} | {how} | {row['calls_per_s']:.0f} | {row['limiter_cpu_ms']:.2f} ms | "
              f"{row['driver_cpu_ms']:.2f} ms | {row['peak'] if central else '-'} |")  # fmt: skip
    first = min(args.workers)
    shared, central_row = rows[(first, False)], rows[(first, True)]
    print(f"limiter actor round trip (acquire + release, one after another): median "
          f"{central_row['round_trip_ms']:.2f} ms")  # fmt: skip
    per_worker = shared["calls_per_s"] / first
    limiter_ceiling = 1e3 / max(central_row["limiter_cpu_ms"], 1e-6)
    driver_ceiling = 1e3 / max(shared["driver_cpu_ms"], 1e-6)
    print(f"paper calculation: a worker makes {per_worker:.0f} calls/s on one core; N cores of workers make about N x "
          f"{per_worker:.0f}, up to the driver's ceiling (~{driver_ceiling:.0f} runs/s here: x the calls a run makes); "
          f"when the limits cannot be divided (a limit below the number of workers) every call goes through the "
          f"limiter actor, whose ceiling is ~{limiter_ceiling:.0f} calls/s ({central_row['limiter_cpu_ms']:.2f} ms "
          "of its CPU a call):")  # fmt: skip
    for machines, per in ((1, 8), (4, 8), (16, 8)):
        n = machines * per
        divided, one_call = n * per_worker, min(n * per_worker, driver_ceiling)
        print(f"  {machines} machine(s) x {per} cores: ~{divided:.0f} calls/s with divided limits (one-call runs: "
              f"~{one_call:.0f}), ~{min(divided, limiter_ceiling):.0f} through the limiter actor")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
