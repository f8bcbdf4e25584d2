"""What the local sandbox costs a run: wall time of ``print(1)`` with and without namespaces.

(a) One run after another: the median and the 90th percentile of ``Execution.wall_s`` (the
    launcher's and the program's interpreter starting, the namespaces, the mounts) and of the
    whole ``run`` call (plus the working directory made and removed).
(b) ``--concurrent`` runs at once: runs per second.

    python benchmarks/sandbox_overhead.py [--runs 30] [--concurrent 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from moa._sandbox import Limits, LocalSandbox

LIMITS = Limits(wall_s=30.0)


async def measure(box: LocalSandbox, runs: int, concurrent: int) -> None:
    await box.run("print(1)", limits=LIMITS)  # the probe and the first start out of the way
    inside, whole = [], []
    for _ in range(runs):
        started = time.perf_counter()
        done = await box.run("print(1)", limits=LIMITS)
        whole.append(time.perf_counter() - started)
        inside.append(done.wall_s)
        assert done.ok, done.reason
    gate = asyncio.Semaphore(concurrent)
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(runs):
            group.create_task(_limited(box, gate))
    rate = runs / (time.perf_counter() - started)
    mode = "namespaces" if box.namespaces else "no namespaces"
    isolation = "; ".join(line for line in done.isolation if line.startswith(("no network", "network not", "unpriv")))
    print(f"{mode:14} ({isolation})")
    print(f"  run: median {_ms(whole, 50)}, p90 {_ms(whole, 90)}", end="; ")
    print(f"inside: median {_ms(inside, 50)}, p90 {_ms(inside, 90)}")
    print(f"  {concurrent} at once: {rate:.1f} runs/s")


async def _limited(box: LocalSandbox, gate: asyncio.Semaphore) -> None:
    async with gate:
        await box.run("print(1)", limits=LIMITS)


def _ms(values: list[float], percentile: int) -> str:
    return f"{statistics.quantiles(values, n=100)[percentile - 1] * 1000:.0f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=8)
    args = parser.parse_args()
    for namespaces in (True, False):
        await measure(LocalSandbox(namespaces=namespaces), args.runs, args.concurrent)


if __name__ == "__main__":
    asyncio.run(main())
