"""Calls `moa search` saves: by the call cache, and by successive halving, against evaluating every candidate.

    python benchmarks/search.py [--questions 60]

A loopback setup where the best recipe is known by construction (no network, no key): `weak` is right on 30 % of
the questions, `strong` on the other 70 % (at four times the words); the `fuser` aggregator keeps a right proposal
when there is one, `echo` repeats the first. The space: both singles, and each of four proposer sets under each
aggregator. Three searches of it, each in a fresh folder: every candidate on every question with no cache; the same
with the call cache; successive halving with the cache. Printed: the model calls each paid, and whether it found
the best recipe (weak + strong under the fuser: right on every question).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moa._call import CallCache  # noqa: E402
from moa.search import SearchOptions, search  # noqa: E402
from moa.testing import LoopbackServer  # noqa: E402


def reply(body: dict[str, Any], index: int) -> str:
    messages = body["messages"]
    n = int(re.search(r"What is (\d+) plus", messages[-1]["content"]).group(1))  # type: ignore[union-attr]
    right, wrong = f"Answer: {2 * n}", f"Answer: {2 * n + 1}"
    if body["model"] == "weak":
        return right if n % 10 >= 7 else wrong
    if body["model"] == "strong":
        return "Let me think this through with care, step by step. " + (right if n % 10 < 7 else wrong)
    quoted = messages[0]["content"]
    if body["model"] == "fuser":
        return right if right in quoted else wrong
    return re.search(r"Answer: \d+", quoted).group(0)  # type: ignore[union-attr]


def setup(folder: Path, server: LoopbackServer, questions: int) -> tuple[Path, Path]:
    data = folder / "dev.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{n}", "prompt": f"What is {n} plus {n}?", "answers": [2 * n]}) + "\n"
                            for n in range(questions)))  # fmt: skip
    defaults = {"api_base": server.base_url, "timeout": 30}
    for name in ("weak", "strong"):
        single = {"name": f"{name}-alone", "defaults": defaults,
                  "layers": [{"kind": "propose", "agents": [{"model": f"openai/{name}"}]}]}  # fmt: skip
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(single))
    proposers = [[{"model": "openai/weak"}, {"model": "openai/strong"}], [{"model": "openai/strong", "n": 2}],
                 [{"model": "openai/weak", "n": 2}], [{"model": "openai/strong", "n": 3}]]  # fmt: skip
    space = {"name": "mix", "defaults": defaults, "candidates": ["weak.yaml", "strong.yaml"],
             "search": {"layers": [{"kind": "propose", "agents": {"choose": proposers}},
                                   {"kind": "aggregate",
                                    "agents": [{"model": {"choose": ["openai/fuser", "openai/echo"]}}]}]}}  # fmt: skip
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path, data


async def one(folder: Path, questions: int, strategy: str, cached: bool) -> tuple[int, str, float]:
    with LoopbackServer(responder=reply) as server:
        space, data = setup(folder, server, questions)
        cache = CallCache(folder / "out" / "calls.sqlite") if cached else None
        options = SearchOptions(space=space, data=data, out=folder / "out", strategy=strategy, cache=cache,
                                concurrency=8)  # fmt: skip
        result = await search(options)
        best = result.frontier[-1]
        return len(server.completions()), best.label, best.accuracy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=60)
    args = parser.parse_args()
    rows = ["| search | model calls paid | saved against exhaustive | best recipe found | its accuracy |",
            "|---|---|---|---|---|"]  # fmt: skip
    exhaustive = None
    for label, strategy, cached in (("every candidate, every question, no cache", "exhaustive", False),
                                    ("every candidate, every question, call cache", "exhaustive", True),
                                    ("successive halving, call cache", "halving", True)):  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            calls, best, accuracy = asyncio.run(one(Path(folder), args.questions, strategy, cached))
        exhaustive = exhaustive or calls
        saved = f"{100 * (1 - calls / exhaustive):.0f} %"
        rows.append(f"| {label} | {calls} | {saved} | {best} | {100 * accuracy:.1f} % |")
    print(f"{args.questions} questions, 10 candidates (2 single models, 4 proposer sets x 2 aggregators)")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
