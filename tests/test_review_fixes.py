"""Defects a hostile review found after the first round of fixes, one test per class instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import agents, loopback_recipe

import moa
from moa.cli import main
from moa.testing import FakeProvider, LoopbackServer

FIXTURES = Path(__file__).parent / "fixtures" / "evals"


def recipe(server: LoopbackServer, path: Path, **fields: Any) -> Path:
    layers = [{"kind": "propose", "agents": agents("openai/p1", "openai/p2")},
              {"kind": "aggregate", "agents": agents("openai/agg")}]  # fmt: skip
    data = loopback_recipe(server, layers, **fields)
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------- text that is not text


def test_half_a_character_in_an_answer_is_kept_printed_and_logged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "runs.sqlite"
    monkeypatch.setenv("MOA_LOG_DB", str(db))
    with LoopbackServer(responder=lambda body, i: "answer \udcff end") as server:  # an emoji cut by max_tokens
        assert main(["run", "Q", "--recipe", str(recipe(server, tmp_path / "r.yaml")), "--json"]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["output"] == "answer \ufffd end" and "warning" not in captured.err
        (run,) = _recent(db)
        assert run["status"] == "done"
        qa = tmp_path / "qa.jsonl"
        qa.write_text('{"id": 1, "prompt": "Q", "answers": ["end"]}\n')
        out = tmp_path / "o"
        args = ["eval", "qa", "--recipe", str(tmp_path / "r.yaml"), "--data", str(qa), "--out", str(out)]
        assert main(args) == 0
        asked = len(server.completions())
        assert main(args) == 0 and len(server.completions()) == asked  # saved once, never asked again


def _recent(db: Path) -> list[dict[str, Any]]:
    from moa._runlog import RunLog

    return RunLog(db).recent()


def test_a_prompt_that_is_not_valid_text_is_refused_before_any_call(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeProvider()
    with pytest.raises(moa.PromptError, match="position 3 holds an undecodable byte"):
        moa.run_sync("caf\udce9 ok", {"name": "r", "layers": [{"kind": "propose", "agents": agents("openai/a")}]},
                     provider=fake)  # fmt: skip
    assert fake.requests == []
    assert main(["run", "caf\udce9 ok", "--no-log"]) == 2  # a byte the terminal's encoding could not decode
    assert "undecodable byte" in capsys.readouterr().err


@pytest.mark.parametrize("invisible", ["\u200b\u200b", "\ufeff", "\u2060", "\x00", " \t\n"])
async def test_an_answer_that_shows_nothing_is_empty(invisible: str) -> None:
    two = {"name": "t", "layers": [{"kind": "propose", "agents": agents("openai/a", "openai/b"), "min_success": 1},
                                   {"kind": "aggregate", "agents": agents("openai/agg")}]}  # fmt: skip
    result = await moa.run("Q", two, provider=FakeProvider(replies={"openai/b": [invisible]}))
    assert [o.ok for o in result.layers[0].outputs] == [True, False]
    assert "the answer is empty" in result.layers[0].outputs[1].error.message


# ------------------------------------------------------------------------------------- eval inputs


def test_blank_prompts_in_data_files_are_refused_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer() as server:
        path = recipe(server, tmp_path / "r.yaml")
        qa = tmp_path / "qa.jsonl"
        qa.write_text('{"id": 1, "prompt": "Q", "answers": ["x"]}\n{"id": 2, "prompt": "  ", "answers": ["x"]}\n')
        assert main(["eval", "qa", "--recipe", str(path), "--data", str(qa), "--out", str(tmp_path / "a")]) == 2
        assert f"{qa}, line 2: field `prompt` is empty" in capsys.readouterr().err
        mt = tmp_path / "mt.jsonl"
        mt.write_text('{"question_id": 1, "category": "math", "turns": ["What is 2+2?", "\\u200b"]}\n')
        assert main(["eval", "mt-bench", "--recipe", str(path), "--questions", str(mt), "--out",
                     str(tmp_path / "b")]) == 2  # fmt: skip
        assert f"{mt}, line 1: turn 2 is empty" in capsys.readouterr().err
        assert server.completions() == []


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"answers": [""]}, "non-blank strings or finite numbers"),
        ({"answers": [float("nan")]}, "finite numbers"),
        ({"answers": [True]}, "finite numbers"),
        ({"regex": ""}, "`regex` is empty"),
    ],
)
def test_qa_answer_keys_that_would_match_anything_are_refused(
    row: dict[str, Any], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"id": 1, "prompt": "Q", **row}) + "\n")
    assert main(["eval", "qa", "--recipe", "local", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_an_edited_mt_bench_question_is_answered_and_judged_anew(tmp_path: Path) -> None:
    with LoopbackServer(responder=lambda body, i: "Rating: [[5]]" if body["model"] == "gpt-4o" else f"a{i}") as s:
        questions = tmp_path / "q.jsonl"
        questions.write_text('{"question_id": 82, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]}\n')
        out = tmp_path / "out"
        args = ["eval", "mt-bench", "--recipe", str(recipe(s, tmp_path / "r.yaml")), "--questions", str(questions),
                "--out", str(out), "--judge", "openai/gpt-4o", "--judge-prompts",
                str(FIXTURES / "mt_bench_judge_prompts.jsonl"), "--judge-set", f"api_base={s.base_url}"]  # fmt: skip
        assert main(args) == 0
        questions.write_text('{"question_id": 82, "category": "coding", "turns": ["Write quicksort.", "In C."]}\n')
        assert main(args) == 0
        answers = [json.loads(line) for line in (out / "loopback.jsonl").read_text().splitlines()]
        judged = [json.loads(line) for line in (out / "model_judgment.jsonl").read_text().splitlines()]
        asked = [r for r in s.completions() if r.model != "gpt-4o" and r.messages[-1]["content"] == "Write quicksort."]
        assert asked, "the edited question was not answered again"
        assert all("Write quicksort." in j["user_prompt"] for j in judged) and len(judged) == 2
        assert answers[0]["choices"][0]["turns"][0] != "a0"  # the answer file holds the new answer


def test_reaggregating_from_a_folder_with_no_usable_item_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer() as server:
        source = tmp_path / "src"
        source.mkdir()
        (source / "items.jsonl").write_text("")
        qa = tmp_path / "qa.jsonl"
        qa.write_text('{"id": 1, "prompt": "Q", "answers": ["x"]}\n')
        assert main(["eval", "qa", "--recipe", str(recipe(server, tmp_path / "r.yaml")), "--data", str(qa),
                     "--out", str(tmp_path / "o"), "--reaggregate-from", str(source)]) == 2  # fmt: skip
        assert "1 of the 1 runs still to make have no finished trace there" in capsys.readouterr().err
        assert server.completions() == []


def test_alpaca_placeholders_inside_user_text_stay_as_they_are(tmp_path: Path) -> None:
    data = tmp_path / "set.json"
    rows = [{"instruction": "What does '{output_1}' print?", "output": "REF {instruction} {output_2}",
             "dataset": "x", "generator": "ref"}]  # fmt: skip
    data.write_text(json.dumps(rows))
    with LoopbackServer(responder=lambda body, i: "m" if body["model"] == "gpt-4o" else "MODEL") as server:
        path = recipe(server, tmp_path / "r.yaml")
        assert main(["eval", "alpacaeval", "--recipe", str(path), "--data", str(data), "--out", str(tmp_path / "o"),
                     "--judge", "openai/gpt-4o", "--judge-prompt", str(FIXTURES / "alpaca_judge_prompt.txt"),
                     "--judge-set", f"api_base={server.base_url}"]) == 0  # fmt: skip
        (judge,) = [r for r in server.completions() if r.model == "gpt-4o"]
        text = "\n".join(m["content"] for m in judge.messages)
        assert "What does '{output_1}' print?" in text and "REF {instruction} {output_2}" in text
        assert text.count("MODEL") == 1


# ------------------------------------------------------------------------------------ eval outputs


def test_a_result_file_that_cannot_be_written_is_one_error_and_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer() as server:
        out = tmp_path / "out"
        (out / "qa_results.jsonl").mkdir(parents=True)  # a folder where the results file goes
        qa = tmp_path / "qa.jsonl"
        qa.write_text('{"id": 1, "prompt": "Q", "answers": ["x"]}\n')
        args = ["eval", "qa", "--recipe", str(recipe(server, tmp_path / "r.yaml")), "--data", str(qa), "--out",
                str(out)]  # fmt: skip
        assert main(args) == 1
        err = capsys.readouterr().err
        assert f"cannot write {out / 'qa_results.jsonl'}" in err and "every finished item is saved" in err
        assert "Traceback" not in err
        (out / "qa_results.jsonl").rmdir()
        asked = len(server.completions())
        assert main(args) == 0 and len(server.completions()) == asked and (out / "qa_results.jsonl").is_file()


@pytest.mark.parametrize("identity", ['"oops"', '{"generation": "x"}', "[1, 2]"])
def test_a_summary_edited_by_hand_is_refused_not_a_traceback(
    identity: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer() as server:
        out = tmp_path / "out"
        out.mkdir()
        (out / "summary.json").write_text(f'{{"identity": {identity}}}')
        qa = tmp_path / "qa.jsonl"
        qa.write_text('{"id": 1, "prompt": "Q", "answers": ["x"]}\n')
        args = ["eval", "qa", "--recipe", str(recipe(server, tmp_path / "r.yaml")), "--data", str(qa), "--out",
                str(out)]  # fmt: skip
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "already holds a generation made with a different" in err and "Traceback" not in err
        assert main([*args, "--force-new"]) == 0


# ----------------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("key", "echo"),
    [
        ("Ab3x9Kq", "Bearer {key}"),  # short
        (":".join(f"Zq8{n:05d}" for n in range(70)), "Bearer {key}"),  # long: the provider's line is cut
        ("Q7w" * 20, "key starting {prefix}..."),  # echoed in part
    ],
)
def test_keys_echoed_whole_in_part_or_cut_are_masked(key: str, echo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from moa._secrets import redact

    monkeypatch.setenv("OPENAI_API_KEY", key)
    text = echo.format(key=key, prefix=key[:20])
    assert key[:12] not in redact(text) and key[-8:] not in redact("x" * 600 + key)[:1000]


def test_literal_keys_given_as_names_urls_or_headers_are_refused_unseen(capsys: pytest.CaptureFixture[str]) -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtb2EifQ.c2lnbmF0dXJl"
    items = [
        f"api_key_env={jwt}",
        "api_key_env=DEADBEEF0123456789ABCDEF0123456789ABCDEF",
        "api_base=http://Zq8vLr2nWx5kTj9d@example.com/v1",
        "extra.extra_headers.X-Auth=Zq8vLr2nWx5kTj9d",
    ]
    for item in items:
        assert main(["run", "Q", "--set", item, "--no-log"]) == 2
    err = capsys.readouterr().err
    for secret in (jwt, "DEADBEEF0123456789ABCDEF", "Zq8vLr2nWx5kTj9d"):
        assert secret not in err


def test_a_budget_starts_empty_and_refuses_nonsense_amounts() -> None:
    with pytest.raises(TypeError):
        moa.Budget(0.5, spent_usd=-100)  # type: ignore[call-arg]
    budget = moa.Budget(0.5)
    for bad in (-5.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite amount of dollars"):
            budget.reserve(bad)
    with pytest.raises(moa.ConfigError):
        moa.Budget(0.5, allow_unpriced="no")  # type: ignore[arg-type]
    with pytest.raises(moa.RecipeError, match="must be a number, not true/false"):
        moa.load_recipe({"name": "r", "defaults": {"max_tokens": True},
                         "layers": [{"kind": "propose", "agents": agents("openai/a")}]})  # fmt: skip
    with pytest.raises(moa.ConfigError, match="deadline_s"):
        moa.run_sync("Q", {"name": "r", "layers": [{"kind": "propose", "agents": agents("openai/a")}]},
                     provider=FakeProvider(), deadline_s=True)  # fmt: skip


# ---------------------------------------------------------------------------------------- terminal


def test_terminal_escape_sequences_from_models_are_shown_not_obeyed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_LOG_DB", str(tmp_path / "runs.sqlite"))
    with LoopbackServer(responder=lambda body, i: "hi \x1b]0;PWNED\x07 \x1b[2J there") as server:
        assert main(["run", "Q \x1b[5mblink", "--recipe", str(recipe(server, tmp_path / "r.yaml")), "--json"]) == 0
        run_id = json.loads(capsys.readouterr().out)["run_id"]
        for argv in (["logs", "show", str(run_id)], ["logs"]):
            assert main(argv) == 0
            out = capsys.readouterr().out
            assert "\x1b" not in out and "\\x1b" in out


@pytest.mark.parametrize("argv", [["logs", "show", "99999999999999999999"], ["logs", "--limit", "9" * 30]])
def test_huge_numbers_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "must be between 1 and" in capsys.readouterr().err


@pytest.mark.slow
def test_moa_run_with_a_surrogate_in_argv_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "MOA_LOG_DB": str(tmp_path / "runs.sqlite"), "LC_ALL": "C.UTF-8"}
    done = subprocess.run([sys.executable, "-m", "moa", "run", b"caf\xe9 ok".decode("utf-8", "surrogateescape")],
                          capture_output=True, text=True, env=env, errors="replace")  # fmt: skip
    assert done.returncode == 2 and "undecodable byte" in done.stderr and "Traceback" not in done.stderr


def test_report_on_odd_folders_and_paths_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for content, message in [("{ torn", "cannot be read"), ("[1, 2]", "is not a moa summary")]:
        (run / "summary.json").write_text(content)
        assert main(["eval", "report", str(run), "--html", str(tmp_path / "r.html")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    (run / "summary.json").write_text('{"benchmark": "qa", "recipe": "r", "score": 50.0}')
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main(["eval", "report", str(run), "--html", str(folder)]) == 1
    assert f"cannot write {folder}" in capsys.readouterr().err


def test_a_judge_whose_every_verdict_is_unparsable_gives_no_score_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer(responder=lambda body, i: "I cannot decide." if body["model"] == "gpt-4o" else f"r{i}") as s:
        out = tmp_path / "o"
        assert main(["eval", "alpacaeval", "--recipe", str(recipe(s, tmp_path / "r.yaml")), "--data",
                     str(FIXTURES / "alpaca_eval_set.json"), "--out", str(out), "--judge", "openai/gpt-4o",
                     "--judge-prompt", str(FIXTURES / "alpaca_judge_prompt.txt"), "--no-logprobs",
                     "--judge-set", f"api_base={s.base_url}"]) == 1  # fmt: skip
        assert "no score: not one judgment could be parsed" in capsys.readouterr().err
        summary = json.loads((out / "summary.json").read_text())  # standard JSON: null, never NaN
        assert summary["score"] is None and summary["win_rate"] is None and summary["unparsable_judgments"] == 4
