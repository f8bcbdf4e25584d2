"""Engine benchmarks against the loopback server (run in its own process).

(a) Critical-path ratio: wall time of a 3-layer x 6-proposer MoA (13 calls) at
    200 ms server latency, divided by the sum over layers of that layer's
    slowest call.  1.00 means the engine adds nothing to the critical path.
(b) CPU time per call: the engine running that recipe versus bare
    ``litellm.acompletion`` making the same calls (same messages, same
    fan-out) against the same server at 0 ms latency.
(c) The engine's own CPU per call, with an instant in-process provider.

    python benchmarks/engine_overhead.py [--runs 5] [--cpu-runs 10] [--blocks 16]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import moa
from moa._litellm import litellm_module

PROPOSERS = [f"openai/proposer-{i}" for i in range(6)]


@contextmanager
def server(latency: float) -> Iterator[str]:
    """Start ``python -m moa.testing`` and yield its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "moa.testing", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"server did not start: {line!r}")
        yield f"http://127.0.0.1:{line.split()[1]}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


def recipe(base_url: str) -> dict[str, Any]:
    return {
        "name": "bench-3x6",
        "defaults": {"api_base": base_url, "max_tokens": 64},
        "layers": [
            {"kind": "propose", "agents": [{"model": m} for m in PROPOSERS]},
            {"kind": "aggregate", "agents": [{"model": m} for m in PROPOSERS]},
            {"kind": "aggregate", "agents": [{"model": "openai/final"}]},
        ],
    }


async def critical_path(runs: int) -> list[float]:
    ratios = []
    with server(0.2) as base_url:
        loaded = moa.load_recipe(recipe(base_url))
        await moa.run("warm-up", loaded, api_key="bench")
        for i in range(runs):
            result = await moa.run(f"Question {i}: what limits a pipeline's latency?", loaded, api_key="bench")
            slowest = sum(max(o.latency_s for o in layer.outputs) for layer in result.layers)
            ratios.append(result.latency_s / slowest)
    return ratios


async def cpu_per_call(runs: int, blocks: int) -> dict[str, tuple[float, float]]:
    litellm = litellm_module()
    with server(0.0) as base_url:
        loaded = moa.load_recipe(recipe(base_url))
        await moa.run("warm-up", loaded, api_key="bench")

        template = loaded.layers[1].compiled_template

        async def bare_run(prompt: str) -> None:
            # The same 6 + 6 + 1 calls with the same messages (references injected into the
            # system message as the engine does), fanned out the same way, with no engine around them.
            user = {"role": "user", "content": prompt}
            kwargs = {"api_base": base_url, "api_key": "bench", "max_tokens": 64, "max_retries": 0}
            references: list[str] = []
            for layer, models in enumerate((PROPOSERS, PROPOSERS, ["openai/final"]), start=1):
                messages: list[dict[str, str]] = [user]
                if references:
                    block = template.render(responses=references, layer=layer)
                    messages = [{"role": "system", "content": block}, user]
                responses = await asyncio.gather(
                    *(litellm.acompletion(model=m, messages=messages, timeout=120.0, **kwargs) for m in models)
                )
                references = [r.choices[0].message.content for r in responses]

        await bare_run("warm-up")
        calls = runs * loaded.calls_per_query
        results: dict[str, list[tuple[float, float]]] = {"bare": [], "engine": []}
        # Alternating blocks; the median per side resists the noise of a shared 2-core machine.
        # Two clocks: the event-loop thread (where the engine runs) and the whole process
        # (which adds litellm's background logging threads, identical work on both sides).
        for _ in range(blocks):
            for label in ("bare", "engine"):
                gc.collect()
                thread0, process0 = time.thread_time(), time.process_time()
                for i in range(runs):
                    if label == "bare":
                        await bare_run(f"Question {i}")
                    else:
                        await moa.run(f"Question {i}", loaded, api_key="bench")
                thread1, process1 = time.thread_time(), time.process_time()
                results[label].append(((thread1 - thread0) / calls, (process1 - process0) / calls))
    return {
        label: (statistics.median(t for t, _ in rows), statistics.median(p for _, p in rows))
        for label, rows in results.items()
    }


class NullProvider:
    """Answers instantly in-process: what is left is the engine's own CPU."""

    async def complete(self, request: moa.Request, on_token: object = None) -> moa.Completion:
        return moa.Completion("an answer of a few words", prompt_tokens=10, completion_tokens=5)


async def engine_only(runs: int) -> float:
    loaded = moa.load_recipe(recipe("http://127.0.0.1:9/v1"))
    provider = NullProvider()
    for _ in range(20):
        await moa.run("warm-up", loaded, provider=provider)
    start = time.thread_time()
    for i in range(runs):
        await moa.run(f"Question {i}", loaded, provider=provider)
    return (time.thread_time() - start) / (runs * loaded.calls_per_query)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs for the critical-path ratio")
    parser.add_argument("--cpu-runs", type=int, default=10, help="runs (13 calls each) per CPU block")
    parser.add_argument("--blocks", type=int, default=16, help="alternating bare/engine CPU blocks")
    args = parser.parse_args()

    ratios = asyncio.run(critical_path(args.runs))
    print("(a) critical path, 3 layers x 6 proposers (13 calls), 200 ms latency")
    print(
        f"    wall / sum(slowest call per layer): median {statistics.median(ratios):.3f}, "
        f"max {max(ratios):.3f} over {len(ratios)} runs  (target <= 1.05)"
    )
    cpu = asyncio.run(cpu_per_call(args.cpu_runs, args.blocks))
    print(f"(b) CPU time per call, median of {args.blocks} alternating blocks of {args.cpu_runs * 13} calls")
    for column, clock in enumerate(("event-loop thread", "whole process")):
        bare, engine = cpu["bare"][column], cpu["engine"][column]
        print(
            f"    {clock:18} bare litellm.acompletion {bare * 1e3:.2f} ms, engine {engine * 1e3:.2f} ms, "
            f"ratio {engine / bare:.3f}  (target <= 1.10)"
        )
    alone = asyncio.run(engine_only(300))
    print(f"(c) engine alone (in-process provider, no HTTP): {alone * 1e6:.0f} us CPU per call")


if __name__ == "__main__":
    main()
