"""Crash safety: an eval killed with SIGKILL at random points, 20 times, then resumed to the end."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import agents, loopback_recipe

from moa.testing import LoopbackServer

ITEMS = 100


@pytest.mark.slow
def test_twenty_kills_lose_nothing_and_pay_for_nothing_twice(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    with LoopbackServer(latency_s=0.1) as server:
        layers = [{"kind": "propose", "agents": agents("openai/p0", "openai/p1")},
                  {"kind": "aggregate", "agents": agents("openai/agg")}]  # fmt: skip
        recipe = tmp_path / "r.yaml"
        recipe.write_text(yaml.safe_dump(loopback_recipe(server, layers)))
        data = tmp_path / "qa.jsonl"
        data.write_text("".join(json.dumps({"id": i, "prompt": f"Question {i}?", "answers": ["x"]}) + "\n"
                                for i in range(ITEMS)))  # fmt: skip
        out = tmp_path / "out"
        checkpoint = out / "items.jsonl"
        command = [sys.executable, "-m", "moa", "eval", "qa", "--recipe", str(recipe), "--data", str(data),
                   "--out", str(out), "--concurrency", "2"]  # fmt: skip
        env = {**os.environ, "MOA_LOG_DB": str(tmp_path / "runs.sqlite")}

        def finished() -> set[str]:
            if not checkpoint.exists():
                return set()
            keys = set()
            for line in checkpoint.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError, KeyError):  # a torn last line, repaired on restart
                    keys.add(json.loads(line)["key"].split(":")[0])
            return keys

        def requests_per_item() -> Counter[str]:
            return Counter(r.messages[-1]["content"] for r in server.completions() if r.model in ("p0", "p1"))

        kills = 0
        frozen: dict[str, int] = {}  # requests each finished item had when it was first seen finished
        for _ in range(20):
            before = len(finished())
            if before == ITEMS:
                break
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while len(finished()) == before and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.2))  # somewhere in the middle of the next items
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            done_now = finished()
            seen = requests_per_item()
            # Items finished so far must never be requested again in later runs.
            for key in done_now:
                assert frozen.setdefault(key, seen[f"Question {key}?"]) == seen[f"Question {key}?"], key
        final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, final.stderr
        assert kills == 20
        lines = checkpoint.read_text().splitlines()
        keys = [json.loads(line)["key"] for line in lines]
        assert len(keys) == ITEMS and len(set(keys)) == ITEMS  # every item exactly once
        results = [json.loads(line) for line in (out / "qa_results.jsonl").read_text().splitlines()]
        assert [r["id"] for r in results] == list(range(ITEMS))
        seen = requests_per_item()
        for key, count in frozen.items():
            assert count >= 2 and seen[f"Question {key}?"] == count, f"item {key} was paid for again after it finished"
