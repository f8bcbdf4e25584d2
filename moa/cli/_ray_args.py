"""``--ray [ADDRESS]`` and ``--ray-workers N`` for ``moa eval`` and ``moa search``: their runs on Ray workers."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

from moa.cli.args import positive_int

#: Items (eval) or questions (search) in flight per Ray worker when --concurrency is not given.
PER_WORKER = 8


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ray", nargs="?", const="local", metavar="ADDRESS",
        help="make the runs on Ray workers: alone, a Ray started on this machine for this command; with an "
        "address (host:port, ray://host:port, or auto), that cluster. Provider limits, the budget and the call "
        "cache hold for all workers together; needs pip install 'moa-pipeline[ray]'",
    )  # fmt: skip
    parser.add_argument("--ray-workers", type=positive_int, metavar="N",
                        help="--ray: how many workers (default: one per CPU of the cluster)")  # fmt: skip


def with_ray(command: Callable[..., int]) -> Callable[..., int]:
    """Run ``command(args, ...)`` with a Ray pool set for every ``EvalContext`` it makes, when ``--ray`` asks."""

    @functools.wraps(command)
    def wrapper(args: argparse.Namespace, *rest: Any) -> int:
        if getattr(args, "ray", None) is None:
            if getattr(args, "ray_workers", None) is not None:
                from moa._errors import ConfigError

                raise ConfigError("--ray-workers goes with --ray")
            return command(args, *rest)
        from moa.distributed import RayRunner
        from moa.eval._runner import RUNNER

        if getattr(args, "dry_run", False):
            return command(args, *rest)  # a dry run makes no call: no Ray to start

        def say(line: str) -> None:
            in_flight = args.concurrency or PER_WORKER * (runner.size or 1)
            print(f"moa: {line}, {in_flight} in flight", file=sys.stderr, flush=True)

        runner = RayRunner(None if args.ray == "local" else args.ray, workers=args.ray_workers, say=say)
        if args.concurrency is None:
            if runner.size is None:
                runner.start()  # a cluster's size is its CPUs: join it now to know
            args.concurrency = PER_WORKER * (runner.size or 1)
        token = RUNNER.set(runner)
        try:
            return command(args, *rest)
        finally:
            RUNNER.reset(token)
            if runner.replaced:
                print(f"moa: {runner.replaced} Ray worker(s) died and were replaced; {runner.retried} run(s) were "
                      "made again on the others", file=sys.stderr, flush=True)  # fmt: skip
            runner.close()

    return wrapper
