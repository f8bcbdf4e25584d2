"""What the straggler cut-off saves: one slow proposer out of six, with and without `straggler_s`.

    python benchmarks/stragglers.py [--slow 3.0] [--latency 0.3] [--cutoff 0.3] [--runs 3]

Loopback server, real litellm. Without a cut-off the layer waits for its slowest call; with
`min_success: 5, straggler_s: CUTOFF` it closes CUTOFF seconds after the fifth success.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

import moa
from moa.testing import LoopbackServer


def recipe(url: str, cutoff: float | None) -> dict[str, Any]:
    first: dict[str, Any] = {"kind": "propose", "agents": [{"model": f"openai/p{i}"} for i in range(6)]}
    if cutoff is not None:
        first.update(min_success=5, straggler_s=cutoff)
    return {"name": "stragglers", "defaults": {"api_base": url, "timeout": 60},
            "layers": [first, {"kind": "aggregate", "agents": [{"model": "openai/agg"}]}]}  # fmt: skip


async def measure(url: str, cutoff: float | None, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        result = await moa.run(f"Question {i}", recipe(url, cutoff), api_key="bench")
        times.append(result.latency_s)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", type=float, default=3.0, help="latency of the one slow proposer (s)")
    parser.add_argument("--latency", type=float, default=0.3, help="latency of every other call (s)")
    parser.add_argument("--cutoff", type=float, default=0.3, help="straggler_s")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with LoopbackServer(latency_s=args.latency, latency_by_model={"p5": args.slow}) as server:
        asyncio.run(measure(server.base_url, None, 1))  # warm-up: litellm import
        without = asyncio.run(measure(server.base_url, None, args.runs))
        with_cut = asyncio.run(measure(server.base_url, args.cutoff, args.runs))
    a, b = statistics.median(without), statistics.median(with_cut)
    print(f"6 proposers ({args.latency:g} s each, one at {args.slow:g} s) + 1 aggregator, median of {args.runs} runs:")
    print(f"  no cut-off:                         {a:.2f} s")
    print(f"  min_success 5, straggler_s {args.cutoff:g}:    {b:.2f} s  ({(1 - b / a) * 100:.0f}% less wall time)")


if __name__ == "__main__":
    main()
