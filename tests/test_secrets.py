"""A recognisable fake key, driven through every path, never shows up in anything moa writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import agents, loopback_recipe

import moa
from moa._cli import main
from moa.testing import LoopbackServer

SECRET = "sk-moa-LEAKCHECK-0123456789abcdef"


def test_key_never_leaks(
    loopback: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MOA_LEAK_KEY", SECRET)
    db = tmp_path / "runs.sqlite"
    monkeypatch.setenv("MOA_LOG_DB", str(db))
    layers = [{"kind": "propose", "agents": agents("openai/gpt-4o-mini", "openai/p1")},
              {"kind": "aggregate", "agents": agents("openai/gpt-4o-mini")}]  # fmt: skip
    data = loopback_recipe(loopback, layers, defaults={"api_key_env": "MOA_LEAK_KEY", "timeout": 0.3},
                           retry={"max_attempts": 2})  # fmt: skip
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run = ["run", "Q", "--recipe", str(recipe)]
    codes = [main([*run, "--json"])]  # success
    loopback.add_fault("401", times=4, model="p1")
    codes.append(main(run))  # authentication failure
    loopback.add_fault("hang", times=4, model="p1")
    codes.append(main(run))  # timeouts
    codes.append(main([*run, "--max-cost", "0.0000001", "--allow-unpriced"]))  # budget
    codes.append(main([*run, "--set", "layers[0].agents[1].model=openai/gpt-4o-mini", "--deadline", "0.001"]))
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"id": 1, "prompt": "Q", "answers": ["x"]}\n')
    codes.append(main(["eval", "qa", "--recipe", str(recipe), "--data", str(qa), "--out", str(tmp_path / "qa")]))
    codes.append(main(["eval", "report", str(tmp_path / "qa"), "--html", str(tmp_path / "report.html")]))
    codes.append(main(["logs", "--json"]))
    for run_id in range(1, 6):
        codes.append(main(["logs", "show", str(run_id), "--json"]))
    assert codes[0] == 0 and 1 in codes[1:5]
    # The key did reach the server...
    assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in loopback.completions())
    # ...and nothing else: terminal output, the run database, eval files, the report.
    captured = capsys.readouterr()
    assert SECRET not in captured.out and SECRET not in captured.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    # Exceptions and traces from the library directly.
    loopback.add_fault("401", times=4, model="p1")
    with pytest.raises(moa.QuorumError) as info:
        await_run(data)
    assert SECRET not in str(info.value) and SECRET not in info.value.partial.model_dump_json()
    assert SECRET not in repr(info.value.failures[0].__dict__)


def await_run(recipe: dict[str, object]) -> moa.MoAResult:
    return moa.run_sync("Q", recipe)
