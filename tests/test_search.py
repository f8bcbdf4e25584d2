"""`moa search` on a loopback setup where the best recipe is known by construction: it is found within the budget,
the frontier's recipes load, calls shared by candidates are paid once, budgets and deadlines hold, and a killed
search resumes without paying again for a finished call."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import moa
from moa.cli import main
from moa.search.space import expand
from moa.testing import LoopbackServer

QUESTIONS = 30


def number(messages: list[dict[str, Any]]) -> int:
    text = " ".join(str(m.get("content")) for m in messages)
    return int(re.search(r"What is (\d+) plus", text).group(1))  # type: ignore[union-attr]


def reply(body: dict[str, Any], index: int) -> str:
    """weak is right on 30 % of the questions (n % 10 >= 7), strong on the other 70 %, at four times the words;
    the `fuser` aggregator keeps a right proposal when there is one; `echo` repeats the first proposal."""
    model, messages = body["model"], body["messages"]
    n = number(messages)
    right, wrong = f"Answer: {2 * n}", f"Answer: {2 * n + 1}"
    if model == "weak":
        return right if n % 10 >= 7 else wrong
    if model == "strong":
        return "Let me think this through with care, step by step. " + (right if n % 10 < 7 else wrong)
    quoted = messages[0]["content"]  # the aggregator's system prompt lists the proposals
    if model == "fuser":
        return right if right in quoted else wrong
    return re.search(r"Answer: \d+", quoted).group(0)  # type: ignore[union-attr]


def write_setup(tmp_path: Path, server: LoopbackServer, **space: Any) -> tuple[Path, Path]:
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{n}", "prompt": f"What is {n} plus {n}?", "answers": [2 * n]}) + "\n"
                            for n in range(QUESTIONS)))  # fmt: skip
    for name in ("weak", "strong"):
        single = {"name": f"{name}-alone", "defaults": {"api_base": server.base_url, "timeout": 30},
                  "layers": [{"kind": "propose", "agents": [{"model": f"openai/{name}"}]}]}  # fmt: skip
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(single))
    config = {
        "name": "mix",
        "defaults": {"api_base": server.base_url, "timeout": 30},
        "retry": {"initial_backoff_s": 0.01, "max_backoff_s": 0.05},
        "candidates": ["weak.yaml", "strong.yaml"],
        "search": {"layers": [
            {"kind": "propose", "agents": {"choose": [
                [{"model": "openai/weak"}, {"model": "openai/strong"}],
                [{"model": "openai/strong", "n": 2}],
                [{"model": "openai/weak", "n": 2}]]}},
            {"kind": "aggregate", "agents": [{"model": {"choose": ["openai/fuser", "openai/echo"]}}]},
        ]},
        **space,
    }  # fmt: skip
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, data


def search(space: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["search", "--space", str(space), "--data", str(data), "--out", str(out), "--score", "last-number",
                 *extra])  # fmt: skip


def chats(server: LoopbackServer) -> int:
    return len(server.completions())


def test_the_search_finds_the_recipe_that_is_best_by_construction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer(responder=reply) as server:
        space, data = write_setup(tmp_path, server)
        out = tmp_path / "out"
        assert search(space, data, out, "--holdout", "0.2", "--max-calls", "250") == 0  # found within the budget
        printed = capsys.readouterr()
        frontier = json.loads((out / "frontier.json").read_text())
        best = frontier["frontier"][-1]
        assert best["accuracy"] == 1.0 and best["label"].endswith("layers[1].agents[0].model=openai/fuser")
        assert frontier["baseline"]["label"] == "strong-alone"
        assert frontier["baseline"]["accuracy"] == pytest.approx(0.7, abs=0.15)
        assert best["right_to_wrong"] == 0 and best["wrong_to_right"] > 0 and best["p_value"] < 0.05
        assert best["held_out_accuracy"] == 1.0 and best["held_out_questions"] == 6
        # Its recipe is written and runs: weak and strong propose, the fuser aggregates.
        recipe = moa.load_recipe(best["yaml"])
        assert [a.model for a in recipe.layers[0].agents] == ["openai/weak", "openai/strong"]
        assert recipe.layers[1].agents[0].model == "openai/fuser"
        assert frontier["frontier"][0]["label"] == "weak-alone"  # the cheapest point of the frontier
        assert "fuser" in printed.out and "paid " in printed.out and frontier["warning"] is None
        # Fewer calls than every candidate on every question: halving drops the clear losers, the cache pays shared
        # proposer calls once (an echo candidate reuses its fuser twin's proposals).
        summary = json.loads((out / "search.json").read_text())
        exhaustive = 2 * 24 + 6 * 3 * 24  # the singles and the six mixtures on the 24 search questions
        assert summary["paid_calls"] == chats(server) < exhaustive
        assert summary["candidates"] == 8 and [r["questions"] for r in summary["rungs"]] == [8, 24]
        # `moa eval report` draws the frontier: every candidate of the final comparison, the frontier's labelled.
        page = tmp_path / "report.html"
        assert main(["eval", "report", str(out), "--html", str(page)]) == 0
        html = page.read_text()
        assert 'aria-label="search frontier: accuracy versus cost"' in html and "openai/fuser" in html
        assert html.count("-point") == len(summary["points"]) == 4
        # The same command again pays nothing: every answer is checkpointed.
        before = chats(server)
        assert search(space, data, out, "--holdout", "0.2") == 0
        assert chats(server) == before


def test_a_call_budget_and_a_deadline_stop_the_search_and_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer(responder=reply) as server:
        space, data = write_setup(tmp_path, server)
        # Too few calls for the first rung (8 questions for every candidate): an error that says what to do.
        assert search(space, data, tmp_path / "a", "--max-calls", "60") == 2
        assert chats(server) <= 60
        assert (
            "the search stopped (--max-calls 60 reached) before every candidate answered the 8 question(s) of "
            "its first rung: raise the limit, or lower --min-items"
        ) in capsys.readouterr().err
        # Enough for the first rung, not the second: the frontier of the first, and why it stopped.
        server.requests.clear()
        assert search(space, data, tmp_path / "b", "--max-calls", "100", "--cache", str(tmp_path / "b.sqlite")) == 0
        assert chats(server) <= 100
        summary = json.loads((tmp_path / "b" / "search.json").read_text())
        assert summary["stopped"] == "--max-calls 100 reached" and summary["paid_calls"] <= 100
        assert [r["questions"] for r in summary["rungs"]] == [8] and summary["questions"] == 8
        assert "stopped: --max-calls 100 reached" in capsys.readouterr().out
    with LoopbackServer(responder=reply, latency_s=0.05) as server:
        space, data = write_setup(tmp_path, server)
        started = time.monotonic()
        code = search(space, data, tmp_path / "c", "--deadline", "1.5", "--min-items", "2")
        assert time.monotonic() - started < 30
        err = capsys.readouterr()
        if code == 0:
            assert json.loads((tmp_path / "c" / "search.json").read_text())["stopped"] == "--deadline reached"
        else:
            assert "the search stopped (--deadline reached) before every candidate answered" in err.err


def test_a_space_that_is_wrong_is_refused_with_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer(responder=reply) as server:
        _, data = write_setup(tmp_path, server)

        def refused(config: dict[str, Any]) -> str:
            path = tmp_path / "bad.yaml"
            path.write_text(yaml.safe_dump(config))
            assert search(path, data, tmp_path / "bad") == 2
            return capsys.readouterr().err

        assert "unknown key(s) serach" in refused({"serach": {}})
        assert "give `search` (a recipe with choices) or `candidates`" in refused({"name": "x"})
        assert "`choose` takes a non-empty list" in refused({"search": {"layers": {"choose": []}}})
        text = refused(
            {"search": {"layers": [{"kind": "propose", "agents": [{"model": "openai/a", "n": {"choose": [2, 3]}}]}]}}
        )
        assert "no candidate is left to search: 2 not a valid recipe" in text
        text = refused({"constraints": {"max_calls": 1}, "search": {"layers": [
            {"kind": "propose", "agents": [{"model": "openai/a", "n": 2}]},
            {"kind": "aggregate", "agents": [{"model": "openai/b"}]}]}})  # fmt: skip
        assert "1 above max_calls 1" in text


def test_choices_expand_to_every_combination_with_their_labels() -> None:
    combos = list(expand({"a": {"choose": [1, 2]}, "b": [{"c": {"choose": ["x", {"choose": ["y", "z"]}]}}]}, ()))
    assert [value for value, _ in combos] == [
        {"a": 1, "b": [{"c": "x"}]}, {"a": 1, "b": [{"c": "y"}]}, {"a": 1, "b": [{"c": "z"}]},
        {"a": 2, "b": [{"c": "x"}]}, {"a": 2, "b": [{"c": "y"}]}, {"a": 2, "b": [{"c": "z"}]},
    ]  # fmt: skip
    assert combos[2][1] == [("a", 1), ("b[0].c", {"choose": ["y", "z"]}), ("b[0].c", "z")]


def test_a_search_killed_mid_run_resumes_without_paying_again_for_a_finished_call(tmp_path: Path) -> None:
    with LoopbackServer(responder=reply, latency_s=0.02) as server:
        space, data = write_setup(tmp_path, server)
        out = tmp_path / "out"
        argv = [sys.executable, "-m", "moa", "search", "--space", str(space), "--data", str(data), "--out", str(out),
                "--concurrency", "2"]  # fmt: skip
        env = {**os.environ, "OPENAI_API_KEY": "k"}
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 900  # a bound against a hang only
            while chats(server) < 40 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        # Every request either has its answer in the cache or was in flight at the kill (at most 2 questions x 3
        # calls): no finished call was paid twice.
        with sqlite3.connect(out / "calls.sqlite") as db:
            stored = db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        assert 0 <= chats(server) - stored <= 6
        assert json.loads((out / "frontier.json").read_text())["frontier"][-1]["accuracy"] == 1.0


def judged_reply(body: dict[str, Any], index: int) -> str:
    """terse answers in a few words, rich with detail; the grader rates an answer with detail 9, else 3."""
    model, messages = body["model"], body["messages"]
    if model == "grader":
        assert messages[0]["content"].startswith("You grade one answer to a user's request.")
        answer = messages[-1]["content"].split("[Answer]\n", 1)[1]
        return "Reasons: fine.\n[[9]]" if "detail" in answer else "Too short.\n[[3]]"
    if model == "terse":
        return "It is a topic."
    if model == "rich":
        return "Here is the topic in detail: its history, its parts and its uses."
    return re.search(r"1\. (.*)", messages[0]["content"]).group(1)  # type: ignore[union-attr]  # `first`


def test_open_ended_questions_are_graded_by_a_judge_and_no_gain_is_said_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer(responder=judged_reply) as server:
        data = tmp_path / "open.jsonl"
        data.write_text("".join(json.dumps({"id": n, "prompt": f"Tell me about topic {n}."}) + "\n" for n in range(12)))
        defaults = {"api_base": server.base_url, "timeout": 30}
        for name in ("terse", "rich"):
            (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "defaults": defaults, "layers": [
                {"kind": "propose", "agents": [{"model": f"openai/{name}"}]}]}))  # fmt: skip
        judge = tmp_path / "judge.yaml"
        judge.write_text(yaml.safe_dump({"name": "grader", "defaults": defaults, "layers": [
            {"kind": "propose", "agents": [{"model": "openai/grader", "temperature": 0}]}]}))  # fmt: skip
        space = tmp_path / "space.yaml"
        layers = [{"kind": "propose", "agents": [{"model": "openai/terse"}, {"model": "openai/rich"}]},
                  {"kind": "aggregate", "agents": [{"model": "openai/first"}]}]  # fmt: skip
        space.write_text(yaml.safe_dump({"name": "open", "defaults": defaults, "candidates": ["terse.yaml",
                                         "rich.yaml"], "search": {"layers": layers}}))  # fmt: skip
        out = tmp_path / "out"
        assert main(["search", "--space", str(space), "--data", str(data), "--out", str(out), "--metric", "judge",
                     "--judge", str(judge)]) == 0  # fmt: skip
        printed = capsys.readouterr().out
        frontier = json.loads((out / "frontier.json").read_text())
        scores = {f["label"]: round(f["accuracy"], 3) for f in frontier["frontier"]}
        assert scores == {"terse": round(2 / 9, 3), "rich": round(8 / 9, 3)}
        assert frontier["baseline"]["label"] == "rich"
        # The mixture's aggregator repeats the terse answer: no better than rich alone, and the search says so.
        assert frontier["warning"].startswith("no candidate beats the best single model (rich, 88.9 %)")
        assert "warning: no candidate beats the best single model" in printed
        graded = [r for r in server.completions("grader")]
        # Each distinct (request, answer) is judged once: the mixture's answers are terse's, judged already.
        assert len(graded) == 2 * 12 and all("[Request]\nTell me about topic" in r.messages[-1]["content"]
                                             for r in graded)  # fmt: skip
        summary = json.loads((out / "search.json").read_text())
        assert summary["paid_calls"] == len(server.completions())
        assert main(["search", "--space", str(space), "--data", str(data), "--out", str(tmp_path / "x"), "--metric",
                     "judge"]) == 2  # fmt: skip
        assert "--metric judge needs --judge MODEL" in capsys.readouterr().err


def test_too_few_questions_to_hold_out_are_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LoopbackServer(responder=reply) as server:
        space, _ = write_setup(tmp_path, server)
        one = tmp_path / "one.jsonl"
        one.write_text(json.dumps({"id": "q3", "prompt": "What is 3 plus 3?", "answers": [6]}) + "\n")
        assert search(space, one, tmp_path / "out", "--holdout", "0.5") == 0
        said = capsys.readouterr().err
        assert "--holdout 0.5: 1 question(s) are too few to hold any out; nothing is held out" in said
