"""The call-cache options of `moa run` and `moa eval`, and the cache they open."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: The cache file of an eval run, in its --out folder.
EVAL_CACHE = "calls.sqlite"


def add_cache_arguments(parser: argparse.ArgumentParser, *, default_on: bool) -> None:
    """``--cache PATH`` (and, for evals, where it is on by default: ``--no-cache``), and ``--refresh``."""
    where = f"default: OUT/{EVAL_CACHE}" if default_on else "off by default"
    parser.add_argument(
        "--cache", type=Path, metavar="PATH",
        help=f"answer calls asked before from this SQLite call cache, for free, and store new answers ({where}; "
        "one file may be shared by many runs and processes)",
    )  # fmt: skip
    if default_on:
        parser.add_argument("--no-cache", action="store_true", help="use no call cache: every call is made")
    parser.add_argument(
        "--refresh", action="store_true", help="make every call again and store the new answers in the cache"
    )


def open_cache(args: argparse.Namespace, out: Path | None = None) -> Any:
    """The ``moa.CallCache`` the options ask for (None: none); an eval's is ``out/calls.sqlite`` by default."""
    from moa._call import CallCache
    from moa._errors import ConfigError

    off = getattr(args, "no_cache", False)
    if off and (args.cache is not None or args.refresh):
        raise ConfigError("--no-cache cannot go with --cache or --refresh")
    path = args.cache if args.cache is not None else (out / EVAL_CACHE if out is not None and not off else None)
    if path is None:
        if args.refresh:
            raise ConfigError("--refresh refreshes a call cache: give --cache PATH")
        return None
    if path.is_dir():
        raise ConfigError(f"--cache {path}: that is a folder; give the path of the cache file (e.g. "
                          f"{path / EVAL_CACHE})")  # fmt: skip
    from moa.eval._runner import RUNNER

    cache = CallCache(path, refresh=args.refresh)
    runner = RUNNER.get()  # --ray: the workers share it, through an actor that owns the file
    return runner.use_cache(cache) if runner is not None else cache
