"""`moa serve` as a subprocess on a free port, driven by the official openai SDK (sync and async, streaming and
not) and by litellm as a client; its recipes call the loopback server."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from conftest import start_serve, stop_served, wait_until

from moa.testing import LoopbackServer

pytestmark = pytest.mark.slow
TOKEN = "serve-test-token-4471"


def reply(body: dict[str, Any], index: int) -> str:
    model = body["model"]
    if model == "agg":
        return "The sum is four."
    return f"{model} says four"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Any]:
    """``served(**latency_by_model)``: a loopback upstream, three recipes, and `moa serve` on a free port."""
    started: list[tuple[subprocess.Popen[str], LoopbackServer]] = []

    def start(latency: dict[str, float] | None = None, limit: int | None = None, args: tuple[str, ...] = ()) -> Any:
        upstream = LoopbackServer(responder=reply, latency_by_model=latency or {}).start()
        folder = tmp_path / f"recipes{len(started)}"
        folder.mkdir()
        defaults = {"api_base": upstream.base_url, "timeout": 900}
        limits = {"openai": {"max_concurrency": limit}} if limit else {}
        recipes = {
            "mix": [{"kind": "propose", "agents": [{"model": "openai/p1"}, {"model": "openai/p2"}]},
                    {"kind": "aggregate", "agents": [{"model": "openai/agg"}]}],
            "single": [{"kind": "propose", "agents": [{"model": "openai/solo"}]}],
            "priced": [{"kind": "propose", "agents": [{"model": "openai/gpt-4o-mini", "max_tokens": 50}]}],
        }  # fmt: skip
        for name, layers in recipes.items():
            data = {"name": name, "defaults": defaults, "layers": layers, **({"limits": limits} if limits else {})}
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))
        env = {**os.environ, "MOA_SERVE_TOKEN": TOKEN, "OPENAI_API_KEY": "upstream-key",
               "MOA_LOG_DB": str(tmp_path / "runs.sqlite")}  # fmt: skip
        process, base, lines = start_serve(["--recipes", str(folder), "--port", "0", "--api-key-env",
                "MOA_SERVE_TOKEN", "--shutdown-timeout", "60", *args], env)  # fmt: skip
        started.append((process, upstream))
        return base, upstream, process, lines

    yield start
    stop_served(started)


def test_the_openai_sdk_gets_answers_streams_usage_and_traces(served: Any, tmp_path: Path) -> None:
    base, upstream, _, lines = served()
    client = openai.OpenAI(base_url=base, api_key=TOKEN)
    assert sorted(m.id for m in client.models.list()) == ["mix", "priced", "single"]
    raw = client.chat.completions.with_raw_response.create(model="mix", messages=[{"role": "user", "content": "2+2?"}])
    answer = raw.parse()
    assert answer.choices[0].message.content == "The sum is four." and answer.choices[0].finish_reason == "stop"
    # Usage is the whole run's: three calls, as the upstream counted them.
    sent = [r for r in upstream.requests if r.path.endswith("/chat/completions")]
    assert [r.model for r in sent[:2]] in (["p1", "p2"], ["p2", "p1"]) and sent[2].model == "agg"
    assert answer.usage is not None and answer.usage.total_tokens > 0
    run_id = raw.headers["x-moa-run-id"]
    trace = httpx.get(f"{base}/moa/runs/{run_id}", headers={"authorization": f"Bearer {TOKEN}"}).json()
    assert [len(layer["outputs"]) for layer in trace["layers"]] == [2, 1]
    assert trace["usage"]["total_tokens"] == answer.usage.total_tokens
    # Settings of the request reach every call.
    client.chat.completions.create(model="single", messages=[{"role": "user", "content": "hi"}], temperature=0.3,
                                   max_tokens=7, seed=5, stop=["x"])  # fmt: skip
    last = upstream.requests[-1].body or {}
    assert (last["temperature"], last["max_tokens"], last["seed"], last["stop"]) == (0.3, 7, 5, ["x"])
    # Streaming: the final stage's text in order, then the run's usage.
    chunks = list(client.chat.completions.create(model="mix", messages=[{"role": "user", "content": "2+2?"}],
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The sum is four."
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    # Every request is a line on stderr and a run in the run log (`moa logs`).
    wait_until(lambda: sum('"ok": true' in line for line in lines) == 3, "three requests logged")
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        found = sorted(db.execute("SELECT recipe, status FROM runs").fetchall())
    assert found == [("mix", "done"), ("mix", "done"), ("single", "done")]  # (written by worker threads: any order)


async def test_the_async_sdk_and_litellm_as_clients(served: Any) -> None:
    import litellm

    base, _, _, _ = served()
    client = openai.AsyncOpenAI(base_url=base, api_key=TOKEN)
    answer = await client.chat.completions.create(model="single", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "solo says four"
    stream = await client.chat.completions.create(model="single", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True)  # fmt: skip
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "solo says four"
    through = await litellm.acompletion(model="openai/mix", api_base=base, api_key=TOKEN,
                                        messages=[{"role": "user", "content": "2+2?"}])  # fmt: skip
    assert through.choices[0].message.content == "The sum is four."


def test_errors_have_openai_s_shape_and_status(served: Any) -> None:
    base, upstream, _, lines = served()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="wrong").models.list()
    client = openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert "the model 'nope' does not exist; models (recipes): mix, priced, single" in str(caught.value)
    # A request may bound what it costs: under its worst case it is refused (402) before any call.
    with pytest.raises(openai.APIStatusError) as poor:
        client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"moa": {"max_cost_usd": 1e-9}})  # fmt: skip
    assert poor.value.status_code == 402 and "worst case" in str(poor.value)
    assert not any(r.model == "gpt-4o-mini" for r in upstream.requests)
    rich = client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "hi"}],
                                          extra_body={"moa": {"max_cost_usd": 1.0}})  # fmt: skip
    assert rich.choices[0].message.content == "gpt-4o-mini says four"
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    junk = httpx.post(f"{base}/chat/completions", content=b"{not json", headers=headers)
    assert junk.status_code == 400 and junk.json()["error"]["type"] == "invalid_request_error"
    empty = httpx.post(f"{base}/chat/completions", json={"model": "mix", "messages": []}, headers=headers)
    assert empty.status_code == 400 and "`messages`" in empty.json()["error"]["message"]
    endless = b'{"model": "priced", "messages": [{"role": "user", "content": "hi"}], "moa": {"max_cost_usd": Infinity}}'
    refused = httpx.post(f"{base}/chat/completions", content=endless, headers=headers)
    assert refused.status_code == 400 and "must be a finite number of USD" in refused.json()["error"]["message"]
    big = httpx.post(f"{base}/chat/completions", content=b"x" * 1_000_001, headers=headers)
    assert big.status_code == 413
    upstream.add_fault("400", times=10, model="solo")  # the recipe's only call fails: the quorum is lost
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="single", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 502 and "upstream-key" not in str(failed.value)
    assert httpx.get(f"{base.removesuffix('/v1')}/healthz").json()["status"] == "ok"  # no token needed
    stranger = httpx.post(f"{base}/chat/completions", json={"model": "mix", "messages": [{"role": "user",
                                                                                     "content": "hi"}]})  # fmt: skip
    assert stranger.status_code == 401
    # Every chat request refused before a run is a line in the log too, with its status (the others are runs).
    expected = [404, 400, 400, 400, 413, 401]
    refusals = lambda: [json.loads(line.split("moa serve: ", 1)[1]) for line in lines if '"status"' in line]  # noqa: E731
    wait_until(lambda: len(refusals()) == len(expected), "the refusals were logged")
    assert [entry["status"] for entry in refusals()] == expected
    assert all(entry["ok"] is False and entry["error"] for entry in refusals())


def _in_flight(base: str) -> int:
    return int(httpx.get(f"{base.removesuffix('/v1')}/healthz").json()["runs_in_flight"])


def test_a_client_that_goes_away_cancels_its_calls(served: Any) -> None:
    base, upstream, _, lines = served(latency={"p1": 600, "p2": 600})  # the proposers would take ten minutes
    host, port = base.removeprefix("http://").removesuffix("/v1").rsplit(":", 1)
    body = json.dumps({"model": "mix", "messages": [{"role": "user", "content": "2+2?"}]}).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((host, int(port))) as client:
        client.sendall(request)
        wait_until(lambda: len(upstream.requests) == 2, "the proposers were asked")
    # The client hung up. Without the cancel the run would go on for ten minutes; it ends now, and the aggregator is
    # never asked.
    wait_until(lambda: _in_flight(base) == 0, "the run was cancelled")
    wait_until(lambda: any("the client went away" in line for line in lines), "the cancel was logged")
    assert [r.model for r in upstream.requests].count("agg") == 0


def test_a_streaming_client_that_goes_away_cancels_its_calls_and_is_logged(served: Any) -> None:
    base, upstream, _, lines = served(latency={"p1": 600, "p2": 600})
    body = {"model": "mix", "messages": [{"role": "user", "content": "2+2?"}], "stream": True}
    with httpx.stream("POST", f"{base}/chat/completions", json=body, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=60) as response:  # fmt: skip
        chunks = response.iter_lines()  # (kept: a generator dropped here would close the stream at once)
        assert next(chunks).startswith("data: ")  # the first chunk; then the client hangs up
        wait_until(lambda: len(upstream.requests) == 2, "the proposers were asked")
    wait_until(lambda: _in_flight(base) == 0, "the run was cancelled")
    wait_until(lambda: any("the client went away" in line for line in lines), "the cancel was logged")
    assert [r.model for r in upstream.requests].count("agg") == 0


def test_fifty_clients_share_one_limit(served: Any) -> None:
    base, upstream, _, _ = served(latency={"solo": 0.2}, limit=5)
    client = openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0, timeout=600)
    results: list[str] = []
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: results.append(client.chat.completions.create(
        model="single", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content or ""))
        for _ in range(50)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert results == ["solo says four"] * 50 and len(upstream.requests) == 50
    assert elapsed >= 50 / 5 * 0.2 * 0.95  # at most five upstream calls at once, across all clients


def test_shutdown_lets_runs_in_flight_finish(served: Any) -> None:
    base, _, process, lines = served(latency={"solo": 1.5})
    answers: list[str] = []

    def ask() -> None:
        client = openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0, timeout=120)
        answers.append(client.chat.completions.create(model="single", messages=[{"role": "user", "content": "hi"}])
                       .choices[0].message.content or "")  # fmt: skip

    worker = threading.Thread(target=ask)
    worker.start()
    wait_until(lambda: _in_flight(base) == 1, "the run started")
    process.send_signal(signal.SIGTERM)
    worker.join()
    assert answers == ["solo says four"]  # the run in flight finished before the server stopped
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    # ... and was logged: the request log writes what it holds before the process ends.
    wait_until(lambda: any("moa serve: stopped" in line for line in lines), "the server's last line")
    logged = [json.loads(line.split("moa serve: ", 1)[1]) for line in lines if '"run_id"' in line]
    assert [(entry["recipe"], entry["ok"]) for entry in logged] == [("single", True)] and logged[0]["log_id"]


def test_a_deadline_is_504_and_the_server_s_budget_is_402(served: Any) -> None:
    base, _, _, _ = served(latency={"solo": 600}, args=("--deadline", "1"))
    client = openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0, timeout=600)
    with pytest.raises(openai.APIStatusError) as late:
        client.chat.completions.create(model="single", messages=[{"role": "user", "content": "hi"}])
    assert late.value.status_code == 504
    base, upstream, _, _ = served(args=("--max-cost", "0.0000001"))
    client = openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.APIStatusError) as poor:  # its worst case does not fit what the server may spend
        client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "hi"}])
    assert poor.value.status_code == 402 and not any(r.model == "gpt-4o-mini" for r in upstream.requests)
    with pytest.raises(openai.BadRequestError, match="no known price for openai/solo"):  # unpriced, under a budget
        client.chat.completions.create(model="single", messages=[{"role": "user", "content": "hi"}])
