"""The evaluation harness: official formats, resume, judges, statistics, report (loopback server)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import agents, loopback_recipe

from moa.cli import main
from moa.eval import _lc, _stats
from moa.eval._store import Checkpoint
from moa.testing import LoopbackServer

FIXTURES = Path(__file__).parent / "fixtures" / "evals"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
QA_ANSWERS = {"spider": "Eight legs.", "France": "Paris, of course.", "planet": "Jupiter.", "1,000": "It is 1,024."}


def responder(body: dict[str, Any], index: int) -> str:
    messages = body["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    last = messages[-1]["content"]
    if "name the better one" in system:
        return "m"
    if system.startswith("You grade"):
        return "The answer is unclear." if "Why do metals" in last else "Solid answer. Rating: [[7]]"
    model = body["model"]
    for needle, answer in QA_ANSWERS.items():
        if needle in last:
            if (model == "agg" and needle == "spider") or (model == "solo" and needle == "planet"):
                return "I am not sure."
            return answer
    return f"{model} reply {index}: {last[:40]}"


def judge_logprobs(body: dict[str, Any], text: str) -> dict[str, float]:
    return {"m": math.log(0.8), "M": math.log(0.2)}


@pytest.fixture
def server() -> Any:
    with LoopbackServer(responder=responder, logprobs=judge_logprobs) as running:
        yield running


def recipe_file(server: LoopbackServer, tmp_path: Path, name: str = "lb", **fields: Any) -> Path:
    layers = [
        {"kind": "propose", "agents": agents("openai/p1", "openai/p2", "openai/p3")},
        {"kind": "aggregate", "agents": agents("openai/agg")},
    ]
    path = tmp_path / f"{name}.yaml"
    data = loopback_recipe(server, layers, **fields)
    data["name"] = name
    path.write_text(yaml.safe_dump(data))
    return path


def judged_alpaca(server: LoopbackServer, tmp_path: Path, out: Path, *extra: str) -> list[str]:
    """`moa eval alpacaeval` on the fixtures, judged by the loopback server (the first 8 items: generation only)."""
    return [
        "eval", "alpacaeval", "--recipe", str(recipe_file(server, tmp_path)), "--data",
        str(FIXTURES / "alpaca_eval_set.json"), "--out", str(out), "--judge", "openai/gpt-4o",
        "--judge-prompt", str(FIXTURES / "alpaca_judge_prompt.txt"), *extra,
        "--judge-set", f"api_base={server.base_url}",
    ]  # fmt: skip


def completions_for(server: LoopbackServer, text: str) -> int:
    return sum(1 for r in server.completions() if text in r.messages[-1]["content"])


# ------------------------------------------------------------------ statistics


def test_win_rate_on_a_hand_computed_case() -> None:
    rate = _stats.win_rate([2.0, 1.0, 1.5, 1.75, None, 3.0])
    assert rate.win_rate == pytest.approx(56.25)
    # values 1, 0, 0.5, 0.75: sample sd = sqrt(0.546875 / 3); sem = sd / 2
    assert rate.standard_error == pytest.approx(math.sqrt(0.546875 / 3) / 2 * 100)
    assert (rate.n_wins, rate.n_wins_base, rate.n_draws, rate.n_total) == (2, 1, 1, 4)
    assert rate.discrete_win_rate == pytest.approx(62.5)


def test_logprob_and_text_preferences() -> None:
    top = {"m": math.log(0.8), "M": math.log(0.2), "The": -3.0}
    assert _stats.preference_from_logprobs(top, switched=False) == pytest.approx(1.2)
    assert _stats.preference_from_logprobs(top, switched=True) == pytest.approx(1.8)
    assert _stats.preference_from_logprobs({"M": -0.01}, switched=False) == pytest.approx(2.0)
    assert _stats.preference_from_logprobs({"The": -0.1}, switched=False) is None
    assert _stats.preference_from_text(" M\n", switched=False) == 2.0
    assert _stats.preference_from_text("m", switched=False) == 1.0
    assert _stats.preference_from_text("m", switched=True) == 2.0
    assert _stats.preference_from_text("Model M is better", switched=False) is None


def test_mcnemar_exact() -> None:
    assert _stats.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert _stats.mcnemar_exact(1, 1) == 1.0
    assert _stats.mcnemar_exact(0, 0) == 1.0
    assert _stats.mcnemar_exact(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 4096)


def test_length_control_removes_a_pure_length_effect() -> None:
    # The judge prefers whichever output is longer; with equal lengths the model would win half the time.
    reference = [200] * 8
    skewed = [1.9 if m > r else 1.1 for m, r in zip([300, 310, 320, 330, 340, 350, 100, 360], reference, strict=True)]
    assert _stats.win_rate(skewed).win_rate > 70
    lc = _lc.length_controlled_win_rate(skewed, [300, 310, 320, 330, 340, 350, 100, 360], reference, range(8))
    assert lc is not None and lc.win_rate < 60 and lc.method.startswith("APPROXIMATION") and not lc.exact


@pytest.mark.skipif(not (SHARED / "alpaca_eval").exists(), reason="needs ../shared/data (not committed)")
def test_output_order_and_preference_match_the_official_annotations() -> None:
    annotations = json.loads(
        (SHARED / "alpaca_eval/alpaca-7b.weighted_alpaca_eval_gpt4_turbo.annotations.json").read_text()
    )
    checked = 0
    for row in annotations:
        if row["preference"] is None or not row.get("raw_completion"):
            continue
        content = row["raw_completion"]["logprobs"]["content"][0]["top_logprobs"]
        top = {t["token"]: t["logprob"] for t in content}
        ours = _stats.preference_from_logprobs(top, _stats.is_switched(row["instruction"]))
        assert ours == pytest.approx(float(row["preference"]), abs=1e-6)
        checked += 1
    assert checked == 802


@pytest.mark.skipif(not (SHARED / "mt_bench").exists(), reason="needs ../shared/data (not committed)")
def test_readers_accept_the_official_files() -> None:
    from moa.eval import alpaca, mtbench

    assert len(alpaca.read_eval_set(SHARED / "alpaca_eval/gpt4_1106_preview.model_outputs.json")) == 805
    assert len(mtbench.read_questions(SHARED / "mt_bench/question.jsonl")) == 80
    prompts = mtbench.read_judge_prompts(SHARED / "mt_bench/judge_prompts.jsonl")
    assert {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"} <= set(prompts)
    references = mtbench.read_reference_answers(SHARED / "mt_bench/reference_answer/gpt-4.jsonl")
    assert len(references) == 30
    question = {"question_id": 101, "category": "reasoning", "turns": ["q1", "q2"]}
    name, _, user = mtbench.build_judge_prompt(prompts, question, ["a1", "a2"], 2, references[101])
    assert name == "single-math-v1-multi-turn" and "a2" in user and references[101][1][:30] in user
    chatml = alpaca.parse_chatml((SHARED / "alpaca_eval/judge_prompts/alpaca_eval_clf.txt").read_text(), "clf")
    assert [m["role"] for m in chatml] == ["system", "user"]


# ------------------------------------------------------------------ alpacaeval


def test_alpacaeval_generates_the_official_file_and_judges_it(
    server: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "alpaca"
    args = judged_alpaca(server, tmp_path, out)
    assert main(args) == 0
    outputs = json.loads((out / "model_outputs.json").read_text())
    data = json.loads((FIXTURES / "alpaca_eval_set.json").read_text())
    assert [o["instruction"] for o in outputs] == [d["instruction"] for d in data]
    assert all(list(o) == ["instruction", "output", "generator", "dataset"] for o in outputs)
    assert {o["generator"] for o in outputs} == {"lb"} and outputs[1]["dataset"] == "koala"
    assert all(o["output"].startswith("agg reply") for o in outputs)
    items = Checkpoint(out / "items.jsonl").load()
    assert len(items) == 4 and all(len(r["traces"][0]["layers"]) == 2 and r["calls"] == 4 for r in items.values())

    annotations = json.loads((out / "annotations.json").read_text())
    expected = [1.8 if _stats.is_switched(d["instruction"]) else 1.2 for d in data]
    assert [a["preference"] for a in annotations] == pytest.approx(expected)
    assert all(a["method"] == "logprobs" for a in annotations)
    judge_requests = [r for r in server.completions() if r.model == "gpt-4o"]
    assert len(judge_requests) == 4 and all(r.body["logprobs"] and r.body["max_tokens"] == 1 for r in judge_requests)
    first = next(r for r in judge_requests if data[0]["instruction"] in r.messages[1]["content"])
    shown_first = first.messages[1]["content"].split("Answer m:\n")[1].split("\n\nAnswer M:")[0]
    switched = _stats.is_switched(data[0]["instruction"])
    assert (shown_first == data[0]["output"]) is (not switched)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["win_rate"] == pytest.approx(sum(p - 1 for p in expected) / 4 * 100)
    assert summary["lc_method"].startswith("APPROXIMATION") and summary["judge_method"] == "logprobs"
    assert summary["score_name"] == "LC win rate (approx.)" and summary["lc_exact"] is False
    assert summary["calls_per_item"] == 4 and summary["complete"]


def test_exact_lc_from_df_gamed_on_rerun_without_new_calls(
    server: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_lc import sklearn_lc, write_gamed

    out = tmp_path / "alpaca"
    args = judged_alpaca(server, tmp_path, out)
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["lc_method"].startswith("APPROXIMATION")
    calls = len(server.completions())

    difficulty = [0.4, -0.3, 1.1, -0.8]
    gamed = [
        _lc.GamedRow(i, pref, sd, difficulty[i], False)
        for k, (sd, base) in enumerate([(1.2, 0.7), (-1.0, 0.3)])
        for i in range(4)
        for pref in [min(1.0, base + 0.05 * i + 0.02 * k)]
    ]
    gamed_csv = write_gamed(tmp_path / "df_gamed.csv", gamed)
    assert main(judged_alpaca(server, tmp_path, out, "--lc-data", str(gamed_csv))) == 0
    assert len(server.completions()) == calls  # every item and judgment came from the checkpoints
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lc_exact"] is True and summary["lc_method"].startswith("exact: AlpacaEval length_controlled_v1")
    annotations = json.loads((out / "annotations.json").read_text())
    expected, _c, _ = sklearn_lc(
        [a["preference"] for a in annotations],
        [len(a["output_2"]) for a in annotations],
        [len(a["output_1"]) for a in annotations],
        [difficulty[a["index"]] for a in annotations],
        gamed,
    )
    assert summary["length_controlled_win_rate"] == pytest.approx(expected, abs=0.02)
    assert summary["score"] == summary["length_controlled_win_rate"] and summary["score_name"] == "LC win rate"
    assert f"LC win rate {summary['length_controlled_win_rate']:.2f} [exact" in capsys.readouterr().out

    assert main(judged_alpaca(server, tmp_path, out, "--lc-data", str(tmp_path / "nope.csv"))) == 2
    assert f"{tmp_path / 'nope.csv'} does not exist" in capsys.readouterr().err
    assert main([*args[:8], "--lc-data", str(gamed_csv)]) == 2
    assert "--lc-data is used when judging" in capsys.readouterr().err
    assert len(server.completions()) == calls


def test_judge_without_logprobs_falls_back_to_text_and_says_so(server: LoopbackServer, tmp_path: Path) -> None:
    out = tmp_path / "alpaca"
    args = judged_alpaca(server, tmp_path, out, "--no-logprobs")
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judge_method"] == "text verdicts for 4 of 4 (no usable logprobs)"
    annotations = json.loads((out / "annotations.json").read_text())
    assert {a["preference"] for a in annotations} <= {1.0, 2.0}


def test_resume_never_repeats_a_finished_item(server: LoopbackServer, tmp_path: Path) -> None:
    out = tmp_path / "alpaca"
    recipe = recipe_file(server, tmp_path, retry={"max_attempts": 1})
    data = json.loads((FIXTURES / "alpaca_eval_set.json").read_text())
    server.add_fault("401", times=1, model="p1")  # one item's proposer fails: that item fails
    args = ["eval", "alpacaeval", "--recipe", str(recipe), "--data", str(FIXTURES / "alpaca_eval_set.json"),
            "--out", str(out), "--concurrency", "1"]  # fmt: skip
    assert main(args) == 1  # incomplete: one item failed
    assert len(json.loads((out / "model_outputs.json").read_text())) == 3
    assert not json.loads((out / "summary.json").read_text())["complete"]
    # A crash mid-write leaves a torn last line: it is cut off, not lost or duplicated.
    with (out / "items.jsonl").open("a") as handle:
        handle.write('{"key": "torn')
    before = {d["instruction"]: completions_for(server, d["instruction"]) for d in data}
    assert main(args) == 0
    after = {d["instruction"]: completions_for(server, d["instruction"]) for d in data}
    rerun = [i for i in before if after[i] > before[i]]
    assert len(rerun) == 1  # only the failed item was requested again
    outputs = json.loads((out / "model_outputs.json").read_text())
    assert [o["instruction"] for o in outputs] == [d["instruction"] for d in data]
    lines = (out / "items.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len({json.loads(line)["key"] for line in lines}) == 4


def test_reaggregation_reuses_proposer_outputs(server: LoopbackServer, tmp_path: Path) -> None:
    first = tmp_path / "first"
    data = str(FIXTURES / "alpaca_eval_set.json")
    assert main(["eval", "alpacaeval", "--recipe", str(recipe_file(server, tmp_path)), "--data", data,
                 "--out", str(first)]) == 0  # fmt: skip
    proposer_calls = len([r for r in server.completions() if r.model.startswith("p")])
    other = recipe_file(server, tmp_path, name="lb2")
    assert main(["eval", "alpacaeval", "--recipe", str(other), "--data", data, "--out", str(tmp_path / "second"),
                 "--reaggregate-from", str(first), "--set", "layers[1].agents[0].model=openai/agg2"]) == 0  # fmt: skip
    assert len([r for r in server.completions() if r.model.startswith("p")]) == proposer_calls
    second = [r for r in server.completions() if r.model == "agg2"]
    assert len(second) == 4
    items = Checkpoint(first / "items.jsonl").load()
    texts = [o["text"] for r in items.values() for o in r["traces"][0]["layers"][0]["outputs"]]
    assert any(text in second[0].messages[0]["content"] for text in texts)


def test_max_cost_and_dry_run(server: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layers = [{"kind": "propose", "agents": agents("openai/gpt-4o-mini", "openai/gpt-4o-mini")},
              {"kind": "aggregate", "agents": agents("openai/gpt-4o-mini")}]  # fmt: skip
    path = tmp_path / "priced.yaml"
    path.write_text(yaml.safe_dump(loopback_recipe(server, layers)))
    data = str(FIXTURES / "alpaca_eval_set.json")
    assert main(["eval", "alpacaeval", "--recipe", str(path), "--data", data, "--out", str(tmp_path / "d"),
                 "--dry-run"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "4 items x 1 turn(s) x 3 calls = 12 calls" in printed and "$" in printed
    assert not server.completions()
    assert main(["eval", "alpacaeval", "--recipe", str(path), "--data", data, "--out", str(tmp_path / "c"),
                 "--max-cost", "0.0000001", "--concurrency", "1"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "stopped starting items: --max-cost $1e-07 reached: an item's worst case" in err
    assert "4 items not started" in err and "failed" not in err.split("stopped")[1]
    assert json.loads((tmp_path / "c" / "model_outputs.json").read_text()) == []
    assert not server.completions()  # the first item's worst case did not fit: nothing was sent
    assert main(["eval", "alpacaeval", "--recipe", str(path), "--data", data, "--out", str(tmp_path / "c"),
                 "--max-cost", "1.0"]) == 0  # fmt: skip
    assert len(json.loads((tmp_path / "c" / "model_outputs.json").read_text())) == 4


# ------------------------------------------------------------------ mt-bench


def test_mt_bench_two_turns_temperatures_answers_and_judging(server: LoopbackServer, tmp_path: Path) -> None:
    out = tmp_path / "mt"
    args = [
        "eval", "mt-bench", "--recipe", str(recipe_file(server, tmp_path)), "--questions",
        str(FIXTURES / "mt_bench_questions.jsonl"), "--out", str(out), "--model-id", "moa-lb",
        "--judge", "openai/gpt-4o", "--judge-prompts", str(FIXTURES / "mt_bench_judge_prompts.jsonl"),
        "--reference-answers", str(FIXTURES / "mt_bench_reference.jsonl"), "--judge-set", f"api_base={server.base_url}",
    ]  # fmt: skip
    assert main(args) == 0
    answers = [json.loads(line) for line in (out / "moa-lb.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [1, 2, 3]
    for answer in answers:
        assert list(answer) == ["question_id", "answer_id", "model_id", "choices", "tstamp"]
        assert answer["model_id"] == "moa-lb" and len(answer["answer_id"]) == 22
        assert len(answer["choices"]) == 1 and len(answer["choices"][0]["turns"]) == 2
    # Turn 2 carries turn 1's final answer as the assistant turn, for every agent.
    turn2 = [r for r in server.completions() if r.messages[-1]["content"] == "Now make it rhyme."]
    assert len(turn2) == 4
    first_answer = answers[0]["choices"][0]["turns"][0]
    assert all(r.messages[-2] == {"role": "assistant", "content": first_answer} for r in turn2)
    temperatures = {
        r.messages[-1]["content"]: r.body["temperature"] for r in server.completions() if r.model != "gpt-4o"
    }
    assert temperatures["Write a two-line poem about rain."] == 0.7
    assert temperatures["What is 12 times 12?"] == 0.0
    assert temperatures["Why do metals conduct electricity?"] == 0.1

    judgments = [json.loads(line) for line in (out / "model_judgment.jsonl").read_text().splitlines()]
    assert len(judgments) == 6
    assert all(list(j) == ["question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"]
               for j in judgments)  # fmt: skip
    by_key = {(j["question_id"], j["turn"]): j for j in judgments}
    assert (
        by_key[(2, 1)]["judge"] == ["openai/gpt-4o", "single-math-v1"]
        and "[Reference]\n144" in by_key[(2, 1)]["user_prompt"]
    )
    assert by_key[(2, 2)]["judge"][1] == "single-math-v1-multi-turn"
    assert by_key[(1, 1)]["judge"][1] == "single-v1" and by_key[(1, 2)]["judge"][1] == "single-v1-multi-turn"
    assert by_key[(3, 1)]["score"] == by_key[(3, 2)]["score"] == -1  # "The answer is unclear." has no [[rating]]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unparsable_judgments"] == 2 and summary["score"] == 7.0
    assert summary["score_by_category"] == {"math": 7.0, "writing": 7.0}
    judge_requests = [r for r in server.completions() if r.model == "gpt-4o"]
    assert all(r.body["temperature"] == 0.0 for r in judge_requests)


def test_mt_bench_rating_parser() -> None:
    from moa.eval.mtbench import parse_rating

    assert parse_rating("Good. Rating: [[8]]") == 8.0
    assert parse_rating("Rating: [[6.5]] overall") == 6.5
    assert parse_rating("I'd say [9] here") == 9.0
    assert parse_rating("no rating at all") == -1.0


# ------------------------------------------------------------------ qa + report


def test_qa_scoring_rules() -> None:
    from moa.eval.qa import is_correct

    assert is_correct("It has eight legs.", {"answers": ["8", "eight"]})
    assert is_correct("It has 8.0 legs.", {"answers": ["8"]})
    assert not is_correct("It has 18 legs.", {"answers": ["8"]})
    assert not is_correct("Eighteen", {"answers": ["eight"]})
    assert is_correct("The sum is 1,024.", {"answers": [1024]})
    assert is_correct("JUPITER!", {"regex": "(?i)jupiter"})
    # A number counts as the output's last number: not the question's echoed back, not a step on the way.
    assert not is_correct("144 divided by 12 is about 1.375", {"answers": [12]})
    assert is_correct("6 x 7 = 42", {"answers": [42]}) and is_correct("42, since 6 x 7 = 42", {"answers": [42]})
    assert not is_correct("3 + 4 = 7, doubled: 14", {"answers": [7]})
    assert is_correct("3 + 4 = 7, doubled: 14\nAnswer: 14", {"answers": [14]})


def test_qa_with_baseline_flips_and_mcnemar_then_report(
    server: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    solo = tmp_path / "solo.yaml"
    solo.write_text(yaml.safe_dump({**loopback_recipe(server, [{"kind": "propose", "agents": agents("openai/solo")}]),
                                    "name": "solo"}))  # fmt: skip
    out = tmp_path / "qa"
    args = ["eval", "qa", "--recipe", str(recipe_file(server, tmp_path)), "--data", str(FIXTURES / "qa.jsonl"),
            "--out", str(out), "--baseline", str(solo)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "accuracy 75.0% (3/4)" in printed
    summary = json.loads((out / "summary.json").read_text())
    comparison = summary["comparison"]
    assert comparison["right_to_wrong"] == ["q1"] and comparison["wrong_to_right"] == ["q3"]
    assert comparison["mcnemar_p"] == 1.0 and comparison["baseline_accuracy"] == 75.0
    results = [json.loads(line) for line in (out / "qa_results.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in results] == [False, True, True, True]

    mt = tmp_path / "mt"
    assert main(["eval", "mt-bench", "--recipe", str(recipe_file(server, tmp_path)), "--questions",
                 str(FIXTURES / "mt_bench_questions.jsonl"), "--out", str(mt), "--judge", "openai/gpt-4o",
                 "--judge-prompts", str(FIXTURES / "mt_bench_judge_prompts.jsonl"),
                 "--judge-set", f"api_base={server.base_url}"]) == 0  # fmt: skip
    html_path = tmp_path / "report.html"
    assert main(["eval", "report", str(out), str(out / "baseline"), str(mt), "--html", str(html_path)]) == 0
    page = html_path.read_text()
    assert page.count("<svg") >= 2 and "Score by category" in page and "McNemar" in page
    assert "right→wrong 1 (q1)" in page and "<script" not in page
    assert "moa eval report" in capsys.readouterr().out


def test_bad_input_files_name_the_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "x", "answers": ["1"]}\n{"id": "b", "prompt": 3, "answers": ["1"]}\n')
    assert main(["eval", "qa", "--recipe", "local", "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}, line 2: field `prompt` must be a str" in err and "Traceback" not in err
    assert main(["eval", "report", str(tmp_path)]) == 2
    assert "has no summary.json" in capsys.readouterr().err
