"""The moa command never loses a paid answer: broken run logs, full disks, SIGTERM; user text is never markup."""

from __future__ import annotations

import json
import os
import pty
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import agents, loopback_recipe

from moa._runlog import RunLog
from moa.cli import main
from moa.testing import LoopbackServer


def write_recipe(server: LoopbackServer, path: Path, name: str = "loopback", description: str = "") -> Path:
    layers = [{"kind": "propose", "agents": agents("openai/p0", "openai/p1", "openai/p2")},
              {"kind": "aggregate", "agents": agents("openai/agg")}]  # fmt: skip
    data = loopback_recipe(server, layers, name=name, description=description)
    path.write_text(yaml.safe_dump(data))
    return path


def _corrupt(db: Path) -> None:
    db.write_bytes(b"this is not a database, just bytes " * 100)


def _missing_folder(db: Path) -> None:
    db.parent.joinpath("blocker").write_text("a file where the log's folder should be")


def _locked(db: Path) -> None:
    RunLog(db).recent()  # create it
    holder = sqlite3.connect(db, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    _locked.holder = holder  # type: ignore[attr-defined]


def _read_only(db: Path) -> None:
    """A readable log that SQLite itself refuses to write: no file modes (tests run as root, where they do not bind).

    Byte 18 of the header is the file format's write version; SQLite opens a file whose write
    version it does not know (above 2) read-only, and a write fails "attempt to write a readonly database".
    """
    RunLog(db).start("an earlier run", "{}", [])
    header = bytearray(db.read_bytes())
    header[18] = 3
    db.write_bytes(bytes(header))
    assert len(RunLog(db).recent()) == 1  # still readable: only writing fails


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupt": (_corrupt, "runs.sqlite"),
    "unmakeable folder": (_missing_folder, "blocker/runs.sqlite"),
    "locked": (_locked, "runs.sqlite"),
    "read-only": (_read_only, "runs.sqlite"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
@pytest.mark.parametrize("mode", ["--json", "--quiet"])
def test_a_broken_run_log_costs_a_warning_never_the_answer(
    breakage: str,
    mode: str,
    loopback: LoopbackServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    breaker, name = BREAKAGES[breakage]
    db = tmp_path / name
    breaker(tmp_path / "runs.sqlite")
    monkeypatch.setenv("MOA_LOG_TIMEOUT", "0.2")
    recipe = write_recipe(loopback, tmp_path / "r.yaml")
    assert main(["run", "Q", "--recipe", str(recipe), "--log-db", str(db), mode]) == 0
    captured = capsys.readouterr()
    answer = json.loads(captured.out)["output"] if mode == "--json" else captured.out.strip()
    assert answer.startswith("agg reply")
    assert f"warning: the run log {db} cannot be used" in captured.err and "not logged" in captured.err
    assert captured.err.count("warning") == 1 and "Traceback" not in captured.err
    if breakage == "read-only":
        assert "attempt to write a readonly database" in captured.err
        assert [run["recipe"] for run in RunLog(db).recent()] == ["an earlier run"]
    if breakage == "locked":
        _locked.holder.close()  # type: ignore[attr-defined]


def test_moa_logs_on_a_corrupt_log_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "runs.sqlite"
    _corrupt(db)
    assert main(["logs", "--log-db", str(db)]) == 1
    err = capsys.readouterr().err
    assert f"the run log {db} cannot be used: file is not a database" in err and "Traceback" not in err


def _moa(*argv: str, env: dict[str, str], **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "moa", *argv], env=env, text=True, **kwargs)  # type: ignore[call-overload]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 600.0) -> None:
    """Wait for ``condition``; ``timeout`` only stops a hang (a loaded machine may be slow, never this slow)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _calls_logged(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_sigterm_keeps_every_finished_call_and_exits_143(loopback: LoopbackServer, tmp_path: Path) -> None:
    loopback.add_fault("hang", times=10, model="p2")
    # p2 must still be in flight when SIGTERM comes, however slow a loaded machine is: it hangs until then.
    data = yaml.safe_load(write_recipe(loopback, tmp_path / "r.yaml").read_text())
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**data, "defaults": {**data["defaults"], "timeout": 3600}}))
    db = tmp_path / "term.sqlite"
    proc = _moa("run", "Q", "--recipe", str(recipe), "--json", env={**os.environ, "MOA_LOG_DB": str(db)},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    _wait_for(lambda: _calls_logged(db) == 2, "p0 and p1 to be logged as they finish")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err
    with sqlite3.connect(db) as conn:
        status, calls, error = conn.execute("SELECT status, calls, error FROM runs").fetchone()
    assert (status, calls, error) == ("interrupted", 2, "terminated (SIGTERM)")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["--json", "--quiet"])
def test_a_full_stdout_is_reported_and_the_answer_is_in_the_log(
    mode: str, loopback: LoopbackServer, tmp_path: Path
) -> None:
    recipe = write_recipe(loopback, tmp_path / "r.yaml")
    db = tmp_path / "full.sqlite"
    with open("/dev/full", "w") as full:
        proc = _moa("run", "Q", "--recipe", str(recipe), mode, env={**os.environ, "MOA_LOG_DB": str(db)},
                    stdout=full, stderr=subprocess.PIPE)  # fmt: skip
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    assert "could not write the answer to stdout ([Errno 28] No space left on device)" in err
    assert "it is in the run log: moa logs show 1" in err and "Traceback" not in err
    (run,) = RunLog(db).recent()
    assert run["status"] == "done" and RunLog(db).get(run["id"])["output"].startswith("agg reply")


def test_json_on_failure_prints_the_error_and_the_partial_trace(
    loopback: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_LOG_DB", str(tmp_path / "runs.sqlite"))
    loopback.add_fault("401", times=5, model="p1")
    recipe = write_recipe(loopback, tmp_path / "r.yaml")
    for argv in (["--json"], ["--json", "--quiet"]):
        assert main(["run", "Q", "--recipe", str(recipe), *argv]) == 1
        data = json.loads(capsys.readouterr().out)  # one JSON document, nothing streamed before it
        assert data["error"]["type"] == "QuorumError" and "layer 1 failed" in data["error"]["message"]
        assert [len(layer["outputs"]) for layer in data["partial"]["layers"]] == [3]
        assert isinstance(data["run_id"], int)
    loopback.clear()
    assert main(["run", "Q", "--recipe", str(recipe), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["output"].startswith("agg reply")


def test_logs_show_prints_counts_not_python_reprs(
    loopback: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_LOG_DB", str(tmp_path / "runs.sqlite"))
    recipe = write_recipe(loopback, tmp_path / "r.yaml")
    assert main(["run", "Q", "--recipe", str(recipe), "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert main(["logs", "show", str(run_id)]) == 0
    out = capsys.readouterr().out
    assert "4 calls (0 failed)" in out and "{'" not in out and "AgentOutput" not in out


MARKUP = "[red]red[/red] [bold]x [/x] [link=http://e.x]y[/link] [/]"


def test_user_text_is_shown_verbatim_never_as_markup(
    loopback: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_LOG_DB", str(tmp_path / "runs.sqlite"))
    monkeypatch.setenv("COLUMNS", "400")
    loopback.responder = lambda body, index: f"answer {index} {MARKUP}"
    recipe = write_recipe(loopback, tmp_path / "r.yaml", name=f"n{MARKUP}", description=f"d{MARKUP}")
    assert main(["recipes", "show", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert f"n{MARKUP}" in out and f"d{MARKUP}" in out
    assert main(["run", f"prompt {MARKUP}", "--recipe", str(recipe), "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert main(["logs", "show", str(run_id)]) == 0
    out = capsys.readouterr().out
    assert f"prompt {MARKUP}" in out and out.count(MARKUP) >= 5  # prompt, 4 answers (and the final one)
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"id": 1, "prompt": "Q", "answers": ["answer"]}\n')
    assert main(["eval", "qa", "--recipe", str(recipe), "--data", str(qa), "--out", str(tmp_path / "o")]) == 0
    assert main(["eval", "report", str(tmp_path / "o"), "--html", str(tmp_path / "r.html")]) == 0
    assert f"n{MARKUP}" in capsys.readouterr().out


def test_one_bad_file_in_recipes_does_not_break_the_listing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "bad.j2").write_text("{{ responses }}{% for i in range(100000000) %}x{% endfor %}")
    base = {"name": "t", "layers": [{"kind": "propose", "agents": agents("openai/a")},
                                    {"kind": "aggregate", "agents": agents("openai/b")}]}  # fmt: skip
    bad = {**base, "name": "bad-template", "layers": [base["layers"][0], {**base["layers"][1], "template": "bad.j2"}]}
    (folder / "a-bad.yaml").write_text(yaml.safe_dump(bad))
    (folder / "b-good.yaml").write_text(yaml.safe_dump({**base, "name": "good"}))
    (folder / "c-yaml.yaml").write_text("name: [unclosed")
    monkeypatch.chdir(tmp_path)
    assert main(["recipes", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "invalid" in rows["a-bad"] and "good" in rows and "invalid: malformed YAML" in rows["c-yaml"]
    assert "moa" in rows  # the built-in recipes are still listed


@pytest.mark.slow
def test_quiet_in_a_terminal_streams_and_says_when_a_cut_stream_is_retried(
    loopback: LoopbackServer, tmp_path: Path
) -> None:
    recipe = write_recipe(loopback, tmp_path / "r.yaml")
    loopback.responder = lambda body, index: "one two three four five six seven eight"
    loopback.add_fault("stream_cut", model="agg", times=1)
    main_fd, child_fd = pty.openpty()
    env = {**os.environ, "MOA_LOG_DB": str(tmp_path / "runs.sqlite")}
    proc = _moa("run", "Q", "--recipe", str(recipe), "--quiet", env=env, stdout=child_fd, stderr=subprocess.PIPE)
    os.close(child_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    _, err = proc.communicate(timeout=600)
    os.close(main_fd)
    shown = b"".join(chunks).decode().replace("\r\n", "\n")
    assert proc.returncode == 0, err
    assert "the answer's stream broke off; retrying it from the start" in err
    first, second = shown.strip().split("\n")  # the cut start on one line, the whole answer on the next
    assert "one two three four five six seven eight".startswith(first) and first != second
    assert second == "one two three four five six seven eight"
