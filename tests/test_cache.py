"""The call cache: answers stored by request and occurrence (samples stay distinct), shared by runs, evals and
processes; failed calls not stored; no secret stored; a corrupt file is a clear error."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import agents, loopback_recipe

import moa
from moa.cli import main
from moa.testing import LoopbackServer


def chats(server: LoopbackServer) -> list[str]:
    return [r.model for r in server.requests if r.path.endswith("/chat/completions")]


def self_moa(server: LoopbackServer, aggregator: str = "openai/agg") -> dict[str, Any]:
    return loopback_recipe(server, [
        {"kind": "propose", "agents": [{"model": "openai/p", "n": 3, "temperature": 0.7}, {"model": "openai/q"}]},
        {"kind": "aggregate", "agents": [{"model": aggregator}]},
    ])  # fmt: skip


async def test_samples_of_one_prompt_stay_distinct_and_a_second_run_pays_nothing(tmp_path: Path) -> None:
    cache = moa.CallCache(tmp_path / "calls.sqlite")
    with LoopbackServer() as server:
        first = await moa.run("Name a colour.", self_moa(server), api_key="k", cache=cache)
        assert chats(server) == ["p", "p", "p", "q", "agg"] or sorted(chats(server)) == ["agg", "p", "p", "p", "q"]
        texts = [o.text for o in first.layers[0].outputs]
        assert len(set(texts[:3])) == 3  # three samples of one request: three answers, three keys
        assert not any(o.cached for o in first.calls) and (cache.hits, cache.misses) == (0, 5)
        server.requests.clear()
        tokens: list[str] = []
        second = await moa.run("Name a colour.", self_moa(server), api_key="k", cache=cache, on_token=tokens.append)
        assert chats(server) == []  # nothing was asked again
        assert [o.text for o in second.calls] == [o.text for o in first.calls]
        assert all(o.cached and o.cost_usd == 0.0 and o.attempts == 0 for o in second.calls)
        assert [o.usage for o in second.calls] == [o.usage for o in first.calls]
        assert "".join(tokens) == second.output  # the final answer still streams (whole)
        assert (cache.hits, cache.misses, cache.stored()) == (5, 5, 5)
        # A recipe that differs only in its aggregator reuses every proposer answer.
        server.requests.clear()
        third = await moa.run("Name a colour.", self_moa(server, "openai/other"), api_key="k", cache=cache)
        assert chats(server) == ["other"]
        assert [o.cached for o in third.calls] == [True, True, True, True, False]
        # Another prompt, or other settings, is another call.
        server.requests.clear()
        await moa.run("Name a fruit.", self_moa(server), api_key="k", cache=cache, temperature=0.1)
        assert len(chats(server)) == 5


async def test_a_path_opens_the_cache_for_the_run_and_refresh_asks_again(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "calls.sqlite"
    with LoopbackServer() as server:
        recipe = loopback_recipe(server, [{"kind": "propose", "agents": agents("openai/a")}])
        await moa.run("Hi", recipe, api_key="k", cache=path)
        await moa.run("Hi", recipe, api_key="k", cache=str(path))
        assert chats(server) == ["a"]
        refresh = moa.CallCache(path, refresh=True)
        again = await moa.run("Hi", recipe, api_key="k", cache=refresh)
        assert chats(server) == ["a", "a"] and not again.calls[0].cached and refresh.misses == 1
        assert again.output == "a reply 1: Hi"  # the new answer replaced the old one
        assert (await moa.run("Hi", recipe, api_key="k", cache=path)).output == "a reply 1: Hi"


async def test_failed_calls_are_not_stored_and_no_secret_is(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    secret = "sk-cache-secret-7781"
    with LoopbackServer() as server:
        recipe = loopback_recipe(server, [
            {"kind": "propose", "agents": agents("openai/a", "openai/b"), "min_success": 1},
            {"kind": "aggregate", "agents": agents("openai/agg")}])  # fmt: skip
        server.add_fault("400", model="b")
        first = await moa.run("Hi", recipe, api_key=secret, cache=path)
        assert [o.ok for o in first.layers[0].outputs] == [True, False]
        second = await moa.run("Hi", recipe, api_key=secret, cache=path)
        assert sorted(chats(server)) == ["a", "agg", "agg", "b", "b"]  # b is asked again (then agg, on new input)
        assert [o.cached for o in second.layers[0].outputs] == [True, False] and second.layers[0].outputs[1].ok
    os.environ["MOA_TEST_CACHE_KEY"] = secret
    try:
        with LoopbackServer() as server:
            keyed = loopback_recipe(server, [{"kind": "propose", "agents": agents("openai/c")}],
                                    defaults={"api_key_env": "MOA_TEST_CACHE_KEY"})  # fmt: skip
            await moa.run("Hi", keyed, cache=path)
            assert server.requests[0].headers["authorization"] == f"Bearer {secret}"
    finally:
        del os.environ["MOA_TEST_CACHE_KEY"]
    assert_no_secret(tmp_path, secret)


def assert_no_secret(folder: Path, secret: str) -> None:
    raw = b"".join(p.read_bytes() for p in folder.iterdir())  # the database and its write-ahead log
    assert raw and secret.encode() not in raw


async def test_a_corrupt_cache_file_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    with LoopbackServer() as server:
        recipe = loopback_recipe(server, [{"kind": "propose", "agents": agents("openai/a")}])
        with pytest.raises(moa.CacheError) as caught:
            await moa.run("Hi", recipe, api_key="k", cache=path)
        assert chats(server) == []
    assert str(caught.value).startswith(f"the call cache {path} cannot be used (DatabaseError: file is not a database)")
    assert (
        "if it is a call cache, delete it (it only saves calls); if it is some other file, name a new one "
        "(--cache PATH); or run without one (--no-cache)"
    ) in str(caught.value)
    # Another program's SQLite database is refused and left exactly as it was.
    other = tmp_path / "shop.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE customers (name TEXT)")
    before = other.read_bytes()
    with LoopbackServer() as server:
        recipe = loopback_recipe(server, [{"kind": "propose", "agents": agents("openai/a")}])
        with pytest.raises(moa.CacheError, match="is an SQLite database but not a moa call cache"):
            await moa.run("Hi", recipe, api_key="k", cache=other)
        assert chats(server) == []
    assert other.read_bytes() == before and not other.with_name("shop.sqlite-wal").exists()


def test_many_processes_write_one_cache_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    script = (
        "import asyncio, sys, moa\n"
        "from moa.testing import FakeProvider\n"
        "recipe = {'name': 'w', 'layers': [{'kind': 'propose', 'agents': [{'model': 'fake/a', 'n': 4}]},\n"
        "                                  {'kind': 'aggregate', 'agents': [{'model': 'fake/b'}]}]}\n"
        "async def main():\n"
        "    cache = moa.CallCache(sys.argv[1])\n"
        "    await asyncio.gather(*(moa.run(f'{sys.argv[2]} {i}', recipe, provider=FakeProvider(), cache=cache)\n"
        "                           for i in range(25)))\n"
        "    print(cache.misses)\n"
        "asyncio.run(main())\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, str(path), f"w{n}"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for n in range(3)]  # fmt: skip
    outs = [w.communicate(timeout=300) for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0], [err for _, err in outs]
    assert [int(out) for out, _ in outs] == [125, 125, 125]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 375
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_eval_caches_by_default_and_a_killed_eval_repays_only_calls_in_flight(tmp_path: Path) -> None:
    """kill -9 mid-run: no finished call is paid again (counted at the loopback server)."""
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{n}", "prompt": f"What is {n} + {n}?", "answers": [2 * n]}) + "\n"
                            for n in range(12)))  # fmt: skip
    with LoopbackServer(latency_s=0.01, latency_by_model={"agg": 600}) as server:  # the aggregators never answer
        recipe = tmp_path / "r.yaml"
        recipe.write_text(json.dumps(loopback_recipe(server, [
            {"kind": "propose", "agents": [{"model": "openai/p", "n": 2}]},
            {"kind": "aggregate", "agents": [{"model": "openai/agg"}]}], defaults={"timeout": 900})))  # fmt: skip
        out = tmp_path / "out"
        command = [sys.executable, "-m", "moa", "eval", "qa", "-r", str(recipe), "--data", str(data), "--out",
                   str(out), "--concurrency", "12"]  # fmt: skip
        env = {**os.environ, "OPENAI_API_KEY": "k"}
        child = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        cache = out / "calls.sqlite"
        try:
            deadline = time.monotonic() + 900  # a bound against a hang only
            while time.monotonic() < deadline:  # every proposer answer is stored; all twelve aggregators asked
                if cache.exists() and len(chats(server)) >= 36:
                    with sqlite3.connect(cache) as db:
                        if db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] >= 24:
                            break
                time.sleep(0.1)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert chats(server).count("p") == 24 and chats(server).count("agg") == 12
        assert not (out / "items.jsonl").exists() or not (out / "items.jsonl").read_text().strip()
        # The rerun (a quick aggregator now) pays the twelve aggregations and none of the 24 proposer calls.
        server.latency_by_model.clear()
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert chats(server).count("p") == 24 and chats(server).count("agg") == 24
        summary = json.loads((out / "summary.json").read_text())
        assert summary["cache"]["hits"] == 24 and summary["cache"]["misses"] == 12 and summary["finished"] == 12


def test_the_cache_options_of_run_and_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": "q1", "prompt": "What is 1 + 1?", "answers": [2]}) + "\n")
    with LoopbackServer(responder=lambda body, index: "Answer: 2") as server:
        recipe = tmp_path / "r.yaml"
        layer = {"kind": "propose", "agents": agents("openai/gpt-4o-mini")}
        recipe.write_text(json.dumps(loopback_recipe(server, [layer])))
        base = ["eval", "qa", "-r", str(recipe), "--data", str(data)]
        assert main([*base, "--out", str(tmp_path / "one")]) == 0
        assert (tmp_path / "one" / "calls.sqlite").exists()
        assert main([*base, "--out", str(tmp_path / "two"), "--cache", str(tmp_path / "one" / "calls.sqlite")]) == 0
        assert chats(server) == ["gpt-4o-mini"]
        # A cached eval costs what the recipe costs in use; what it paid is apart (nothing, here).
        one, two = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
        assert one["cost_usd"] > 0 and two["cost_usd"] == one["cost_usd"] and one["paid_usd"] == one["cost_usd"]
        assert two["paid_usd"] == 0.0 and two["cache"]["hits"] == 1 and two["cache"]["saved_usd"] > 0
        assert main([*base, "--out", str(tmp_path / "three"), "--no-cache"]) == 0
        assert chats(server) == ["gpt-4o-mini", "gpt-4o-mini"] and not (tmp_path / "three" / "calls.sqlite").exists()
        assert json.loads((tmp_path / "three" / "summary.json").read_text())["cache"] is None
        assert main([*base, "--out", str(tmp_path / "four"), "--no-cache", "--refresh"]) == 2
        assert "--no-cache cannot go with --cache or --refresh" in capsys.readouterr().err
        assert main(["run", "Hi", "-r", str(recipe), "--refresh", "--quiet", "--no-log"]) == 2
        assert "--refresh refreshes a call cache: give --cache PATH" in capsys.readouterr().err
        run_cache = tmp_path / "run.sqlite"
        for _ in range(2):
            assert main(["run", "Hi", "-r", str(recipe), "--cache", str(run_cache), "--quiet", "--no-log"]) == 0
        assert chats(server) == ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini"]
        assert main(["run", "Hi", "-r", str(recipe), "--cache", str(tmp_path), "--quiet", "--no-log"]) == 2
        assert "that is a folder" in capsys.readouterr().err


async def test_concurrent_runs_in_one_process_share_a_cache(tmp_path: Path) -> None:
    cache = moa.CallCache(tmp_path / "calls.sqlite")
    with LoopbackServer(latency_s=0.01) as server:
        recipe = moa.load_recipe(loopback_recipe(server, [{"kind": "propose", "agents": agents("openai/a")}]))
        await asyncio.gather(*(moa.run(f"Q{i}", recipe, api_key="k", cache=cache) for i in range(30)))
        await asyncio.gather(*(moa.run(f"Q{i}", recipe, api_key="k", cache=cache) for i in range(30)))
        assert len(chats(server)) == 30 and (cache.hits, cache.misses) == (30, 30)
