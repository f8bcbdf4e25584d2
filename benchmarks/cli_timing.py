"""Wall time of the moa command: start-up (`--help`, `recipes list`) and a full local run.

    python benchmarks/cli_timing.py [--repeat 5] [--skip-local]

`moa run` uses the bundled `local` recipe (3 proposers + 1 aggregator on
SmolLM2-135M, needs the [local] extra); its time includes starting the model
server and the warm-up request, as a user sees it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def wall(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-local", action="store_true", help="do not time the local-model run")
    args = parser.parse_args()
    moa = shutil.which("moa") or f"{sys.executable} -m moa"
    base = moa.split()
    env = {**os.environ, "MOA_LOG_DB": os.path.join(tempfile.mkdtemp(), "runs.sqlite")}
    for label, extra in (("moa --help", ["--help"]), ("moa recipes list", ["recipes", "list"])):
        times = [wall([*base, *extra], env) for _ in range(args.repeat)]
        print(f"{label:<40} median {statistics.median(times):.3f} s  (min {min(times):.3f}, {args.repeat} runs)")
    if not args.skip_local:
        seconds = wall([*base, "run", "Why is the sky blue?", "--json"], env)
        print(f"{'moa run (local recipe, 4 calls)':<40} {seconds:.1f} s  (one run, server start included)")


if __name__ == "__main__":
    main()
