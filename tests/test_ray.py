"""`moa eval ... --ray` and `moa search ... --ray`: runs made by Ray workers, against the loopback server.

Every test drives the real command in a subprocess (the driver) with a real Ray: one started by the command
(`ray.init` with several worker processes) or a cluster of two nodes started by `ray start`.  What is checked is
what a user relies on: every item answered exactly once, the provider's concurrency limit held across all
workers (peak in flight measured at the server), the budget held across all workers, a worker killed mid-run
(its runs made again elsewhere), and the driver killed and resumed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CountingServer

from moa.testing.server import LoopbackServer

pytest.importorskip("ray", reason="the [ray] extra is not installed")

ENV = {**os.environ, "OPENAI_API_KEY": "sk-test-ray-0000", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture
def server() -> Iterator[CountingServer]:
    with CountingServer(latency_s=0.2) as running:
        yield running


def _files(tmp_path: Path, server: LoopbackServer, items: int, **recipe: Any) -> tuple[Path, Path]:
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"What is {i} + {i}?", "answers": [str(2 * i)]})
                                 + "\n" for i in range(items)))  # fmt: skip
    models = recipe.pop("models", ["openai/a", "openai/b", "openai/c"])
    spec = {
        "name": "pair",
        "defaults": {"api_base": server.base_url, "max_tokens": 32},
        "limits": {"openai": {"max_concurrency": 4}},
        "layers": [{"kind": "propose", "agents": [{"model": models[0]}, {"model": models[1]}]},
                   {"kind": "aggregate", "agents": [{"model": models[2]}]}],
        **recipe,
    }  # fmt: skip
    path = tmp_path / "pair.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, questions


def _eval(recipe: Path, questions: Path, out: Path, *extra: str, env: dict[str, str] | None = None
          ) -> subprocess.Popen[str]:  # fmt: skip
    argv = [sys.executable, "-m", "moa", "eval", "qa", "--recipe", str(recipe), "--data", str(questions), "--out",
            str(out), *extra]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or ENV)


def _finish(process: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


def _keys(out: Path) -> list[str]:
    """The ids of the finished items, in the order they were saved (a key is the id and the prompt's digest)."""
    lines = (out / "items.jsonl").read_text().splitlines()
    return [json.loads(line)["key"].split(":")[0] for line in lines if line.strip()]


def _wait(condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _ray_workers() -> list[int]:
    """The pids of this machine's moa Ray worker processes (Ray names them after the actor)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if command.startswith("ray::Worker"):
                found.append(int(entry.name))
    return found


def test_every_item_once_under_one_concurrency_limit_for_all_workers(tmp_path: Path, server: CountingServer) -> None:
    recipe, questions = _files(tmp_path, server, items=30)
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump({"name": "single", "defaults": {"api_base": server.base_url},
                                      "limits": {"openai": {"max_concurrency": 4}},
                                      "layers": [{"kind": "propose", "agents": [{"model": "openai/b"}]}]}))  # fmt: skip
    # --ray alone is a Ray of this machine's own, whatever RAY_ADDRESS says.
    driver = _eval(recipe, questions, tmp_path / "out", "--ray", "--ray-workers", "3", "--baseline", str(single),
                   env={**ENV, "RAY_ADDRESS": "127.0.0.1:1"})  # fmt: skip
    code, output = _finish(driver)
    assert code == 0, output
    assert "moa: 3 Ray worker(s) on a Ray of this machine, 24 in flight" in output
    assert sorted(_keys(tmp_path / "out")) == sorted(f"q{i}" for i in range(30))
    assert len(server.completions()) == 90 + 30  # 3 calls an item, none twice; then the baseline's
    assert 2 <= server.peak <= 4, server.peak  # the recipe's max_concurrency 4, across the three workers
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["finished"], summary["failed"], summary["cache"]["misses"]) == (30, 0, 90)
    baseline = json.loads((tmp_path / "out" / "baseline" / "summary.json").read_text())
    assert (baseline["finished"], baseline["cache"]["hits"], baseline["cache"]["misses"]) == (30, 0, 30)
    assert summary["cache"]["path"] == baseline["cache"]["path"] == str(tmp_path / "out" / "calls.sqlite")
    assert not (tmp_path / "out" / "calls.sqlite-wal").exists()  # the cache was closed
    assert "sk-test-ray" not in output + (tmp_path / "out" / "items.jsonl").read_text()

    # The same command again: every item is in the checkpoint, nothing is asked, no Ray is started.
    code, output = _finish(_eval(recipe, questions, tmp_path / "out", "--ray", "--ray-workers", "2"))
    assert code == 0, output
    assert "(0 now, 30 from checkpoint)" in output and len(server.completions()) == 120
    assert "Ray worker" not in output


def test_a_limit_below_the_number_of_workers_is_held_by_the_limiter_actor(
    tmp_path: Path, server: CountingServer
) -> None:
    recipe, questions = _files(tmp_path, server, items=12, limits={"openai": {"max_concurrency": 2}})
    code, output = _finish(_eval(recipe, questions, tmp_path / "out", "--ray", "--ray-workers", "3"))
    assert code == 0, output
    assert sorted(_keys(tmp_path / "out")) == sorted(f"q{i}" for i in range(12))
    assert len(server.completions()) == 36 and server.peak == 2


@pytest.mark.parametrize("most", [3, 4, 7, 32, 100])
@pytest.mark.parametrize("workers", [1, 3, 4])
def test_divided_limits_add_up_to_the_whole_and_never_pass_it(most: int, workers: int) -> None:
    from moa._limits import divisible, shares
    from moa.recipe import ProviderLimit

    limits = {"openai": {"max_concurrency": most, "rpm": 600.0, "tpm": 90_000.0}, "local": {"max_concurrency": 1}}
    assert divisible({"openai": ProviderLimit(max_concurrency=most)}, workers) == (most >= workers)
    if most < workers:
        return  # some worker would have none: the limiter actor holds such limits
    parts = [shares(limits, index, workers) for index in range(workers)]
    assert sum(part["openai"].max_concurrency or 0 for part in parts) == most
    assert all((part["openai"].max_concurrency or 0) >= 1 for part in parts)
    assert sum(part["openai"].rpm or 0 for part in parts) == pytest.approx(600)
    assert sum(part["openai"].tpm or 0 for part in parts) == pytest.approx(90_000)
    assert sum(part["default"].max_concurrency or 0 for part in parts) == 32  # a provider the recipe does not name
    assert all(part["local"].max_concurrency == 1 for part in parts)  # each worker serves its own local models


def test_the_budget_holds_across_all_workers(tmp_path: Path, server: CountingServer) -> None:
    # A model litellm has a price for: each call costs what its usage says; the budget lets some items through.
    recipe, questions = _files(tmp_path, server, items=20, models=["openai/gpt-4o-mini"] * 3)
    code, output = _finish(_eval(recipe, questions, tmp_path / "out", "--ray", "--ray-workers", "3",
                                 "--max-cost", "0.0005", "--concurrency", "20"))  # fmt: skip
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert code != 0 and summary["not_started"] > 0, output
    assert 0 < summary["finished"] < 20
    assert summary["cost_usd"] <= 0.0005
    assert "--max-cost $0.0005 reached" in output


def test_a_worker_killed_mid_run_loses_only_its_runs_in_flight(tmp_path: Path, server: CountingServer) -> None:
    recipe, questions = _files(tmp_path, server, items=40)
    before = set(_ray_workers())
    driver = _eval(recipe, questions, tmp_path / "out", "--ray", "--ray-workers", "3", "--concurrency", "9")
    try:
        _wait(lambda: len(server.completions()) >= 15 and len(set(_ray_workers()) - before) >= 3, "runs under way")
        victim = sorted(set(_ray_workers()) - before)[0]
        os.kill(victim, signal.SIGKILL)
        code, output = _finish(driver)
    finally:
        driver.kill()
    assert code == 0, output
    assert "1 Ray worker(s) died and were replaced" in output
    assert sorted(_keys(tmp_path / "out")) == sorted(f"q{i}" for i in range(40))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["finished"], summary["failed"]) == (40, 0)
    # Only the dead worker's runs were made again: at most its 3 items' calls (finished calls come from the cache).
    assert 120 <= len(server.completions()) <= 120 + 3 * 3, len(server.completions())


def test_a_driver_killed_mid_run_resumes_from_its_checkpoint(tmp_path: Path, server: CountingServer) -> None:
    recipe, questions = _files(tmp_path, server, items=40)
    out = tmp_path / "out"
    driver = _eval(recipe, questions, out, "--ray", "--ray-workers", "2", "--concurrency", "6")
    _wait(lambda: (out / "items.jsonl").exists() and len(_keys(out)) >= 10, "ten items finished")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done = set(_keys(out))
    asked = len(server.completions())
    code, output = _finish(_eval(recipe, questions, out, "--ray", "--ray-workers", "2"))
    assert code == 0, output
    keys = _keys(out)
    assert sorted(keys) == sorted(f"q{i}" for i in range(40)) and len(keys) == len(set(keys))
    # The finished items were not asked again; the calls in flight at the kill are answered from the cache.
    repeated = [r for r in server.completions()[asked:] if any(f"What is {k[1:]} + {k[1:]}?" in json.dumps(r.body)
                                                              for k in done)]  # fmt: skip
    assert repeated == []
    assert len(server.completions()) <= 120 + 6 * 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """`ray start --head` and a second node on this machine: two raylets, one CPU each."""
    port = "6397"
    start = [sys.executable, "-m", "ray.scripts.scripts", "start", "--disable-usage-stats", "--num-cpus", "1"]
    stop = [sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"]
    try:
        subprocess.run([*start, "--head", "--port", port, "--include-dashboard", "false"], env=ENV, check=True,
                       capture_output=True, timeout=120)  # fmt: skip
        subprocess.run([*start, "--address", f"127.0.0.1:{port}"], env=ENV, check=True, capture_output=True,
                       timeout=120)  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(stop, env=ENV, capture_output=True, timeout=120)


def test_a_cluster_of_two_nodes_started_by_ray_start(tmp_path: Path, server: CountingServer, cluster: str) -> None:
    recipe, questions = _files(tmp_path, server, items=20)
    code, output = _finish(_eval(recipe, questions, tmp_path / "out", "--ray", cluster))
    assert code == 0, output
    assert "moa: 2 Ray worker(s) on the Ray cluster (2 node(s)), 16 in flight" in output
    assert sorted(_keys(tmp_path / "out")) == sorted(f"q{i}" for i in range(20))
    assert len(server.completions()) == 60 and server.peak <= 4


def _sums(body: dict[str, Any], index: int) -> str:
    """Model b adds right, model a is off by one."""
    numbers = [int(word) for word in body["messages"][-1]["content"].replace("?", "").split() if word.isdigit()]
    return f"The answer is {sum(numbers) + (0 if body['model'] == 'b' else 1)}"


def test_search_on_ray_finds_what_a_local_search_finds(tmp_path: Path) -> None:
    with CountingServer(latency_s=0.05, responder=_sums) as server:
        _, questions = _files(tmp_path, server, items=12)
        space = tmp_path / "space.yaml"
        space.write_text(yaml.safe_dump({
            "name": "space", "defaults": {"api_base": server.base_url, "max_tokens": 32},
            "search": {"layers": [{"kind": "propose", "agents": [{"model": {"choose": ["openai/a", "openai/b"]}}]}]},
        }))  # fmt: skip
        tables = []
        for folder, extra in (("local", []), ("ray", ["--ray", "--ray-workers", "2"])):
            argv = [sys.executable, "-m", "moa", "search", "--space", str(space), "--data", str(questions), "--out",
                    str(tmp_path / folder), "--strategy", "exhaustive", *extra]  # fmt: skip
            done = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            found = json.loads((tmp_path / folder / "frontier.json").read_text())["frontier"]
            tables.append([(point["label"], point["accuracy"], point["cost"], point["questions"]) for point in found])
        assert len(server.completions()) == 2 * 2 * 12  # two searches, two candidates, twelve questions
    assert tables[0] == tables[1] == [("layers[0].agents[0].model=openai/b", 1.0, 9.0, 12)]


def test_a_run_that_fails_on_a_worker_fails_as_it_does_here(tmp_path: Path, server: CountingServer) -> None:
    """The error that comes back is the worker's own: its type and its text."""
    recipe, questions = _files(tmp_path, server, items=3)
    spec = yaml.safe_load(recipe.read_text())
    spec["layers"][0]["agents"][1] = {"model": "openai/b", "api_base": "http://127.0.0.1:1/v1"}
    spec["retry"] = {"max_attempts": 1}
    recipe.write_text(yaml.safe_dump(spec))
    failures = []
    for folder, extra in (("here", []), ("ray", ["--ray", "--ray-workers", "2"])):
        code, output = _finish(_eval(recipe, questions, tmp_path / folder, *extra))
        assert code == 1, output
        summary = json.loads((tmp_path / folder / "summary.json").read_text())
        failures.append(sorted(failure["error"] for failure in summary["failures"]))
    assert len(failures[1]) == 3 and all(error.startswith("QuorumError: ") for error in failures[1])
    assert failures[0] == failures[1]


def test_a_worker_error_keeps_its_type_text_and_partial_run() -> None:
    import asyncio
    import pickle

    import moa
    from moa._errors import ProviderError, QuorumError
    from moa.distributed.actors import Rebuilt, portable
    from moa.testing import FakeProvider

    recipe = {"name": "r", "retry": {"max_attempts": 1},
              "layers": [{"kind": "propose", "agents": [{"model": "p/a"}, {"model": "p/b"}]},
                         {"kind": "aggregate", "agents": [{"model": "p/c"}]}]}  # fmt: skip
    failing = FakeProvider(lambda request, index: ProviderError("refused", status_code=400))
    with pytest.raises(QuorumError) as caught:
        asyncio.run(moa.run("Hi", recipe, provider=failing))
    sent = portable(caught.value)
    assert isinstance(sent, Rebuilt)  # (a QuorumError cannot be made again from its arguments alone)
    back = pickle.loads(pickle.dumps(sent)).exception()
    assert type(back) is QuorumError and str(back) == str(caught.value)
    assert [c.model for c in back.partial.calls] == [c.model for c in caught.value.partial.calls] == ["p/a", "p/b"]


def test_an_address_where_no_cluster_answers_is_a_quick_clear_error(tmp_path: Path, server: CountingServer) -> None:
    recipe, questions = _files(tmp_path, server, items=2)
    began = time.monotonic()
    code, output = _finish(_eval(recipe, questions, tmp_path / "out", "--ray", "127.0.0.1:1"))
    assert code == 2 and time.monotonic() - began < 60, output
    assert "--ray 127.0.0.1:1: no Ray cluster answers there" in output and "Traceback" not in output
    assert server.completions() == []


def test_a_dry_run_starts_no_ray_and_writes_nothing(tmp_path: Path, server: CountingServer) -> None:
    recipe, questions = _files(tmp_path, server, items=2)
    code, output = _finish(_eval(recipe, questions, tmp_path / "out", "--ray", "--dry-run"))
    assert code == 0, output
    assert "Ray worker" not in output and not (tmp_path / "out").exists()


def test_a_broken_ray_install_is_a_clear_error(tmp_path: Path, server: CountingServer) -> None:
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('libray.so: cannot open shared object file')\n")
    recipe, questions = _files(tmp_path, server, items=2)
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])}
    code, output = _finish(_eval(recipe, questions, tmp_path / "out", "--ray", env=env))
    assert code == 2 and "Traceback" not in output, output
    assert "--ray: Ray is installed but cannot be imported (libray.so: cannot open shared object file)" in output


def test_local_models_are_each_workers_own_even_under_the_limiter_actor() -> None:
    """A worker serves its own local models (a llama.cpp server per process): their gates are not shared."""
    from moa import Limiter
    from moa.distributed.actors import RemoteLimiter

    here = Limiter()
    limiter = RemoteLimiter(actor=None, owner="w", key="{}", here=here)
    assert limiter.gate("local/smollm2-135m") is here.gate("local/smollm2-135m")
    assert limiter.gate("local/smollm2-135m").limit.max_concurrency == 1
    assert type(limiter.gate("openai/a")).__name__ == "_RemoteGate"
