"""`moa eval qa --score`: which part of an output is scored, cut answers, re-scoring from the checkpoint; and
the arithmetic word-problem set (`evals/arith-64.jsonl`) with its audit."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from conftest import agents, loopback_recipe

from moa.cli import main
from moa.eval.qa import Scoring, finish_reason, is_correct, read_questions, score
from moa.testing import LoopbackServer

EVALS = Path(__file__).resolve().parents[1] / "evals"


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_arith", EVALS / "check_arith.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ the word-problem set


def test_every_word_problem_answer_is_its_arithmetic(capsys: pytest.CaptureFixture[str]) -> None:
    rows = read_questions(EVALS / "arith-64.jsonl")  # the harness reads it as it is
    assert [row["id"] for row in rows] == [f"wp-{n:02d}" for n in range(1, 65)]
    assert all(len(row["answers"]) == 1 and type(row["answers"][0]) is int for row in rows)
    assert _checker().main() == 0
    assert capsys.readouterr().out == (
        "64 answers check out: 20 easy (2 steps), 30 medium (3-4 steps), 14 hard (5 steps or a trap)\n"
    )


def test_the_audit_names_a_wrong_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checker = _checker()
    lines = (EVALS / "arith-64.jsonl").read_text().splitlines()
    row = json.loads(lines[56])
    lines[56] = json.dumps({**row, "answers": [3451]})
    lines[3] = json.dumps({**json.loads(lines[3]), "prompt": "How many? Reply with just the number."})
    wrong = tmp_path / "arith-64.jsonl"
    wrong.write_text("\n".join(lines[:-1]) + "\n")
    monkeypatch.setattr(checker, "DATA", wrong)
    assert checker.problems() == [
        "arith-64.jsonl has 63 questions, CHECKS 64",
        "wp-04: the recipe, not the question, says how to answer",
        "wp-57: the file says 3451, the arithmetic gives 3450",
    ]


# ------------------------------------------------------------------ the modes, on crafted outputs

ANSWER_RE = r"regex:(?i)answer(?:\s+is)?\s*[:=]?\s*(-?[\d,\.]+)"
CHAIN = "Each box has 4 rows of 3, so 12 per box.\n5 boxes hold 5 x 12 = 60.\nThe answer is 60."


def scored(output: str, mode: str, *answers: Any) -> bool:
    return is_correct(output, {"answers": list(answers)}, Scoring.parse(mode))


@pytest.mark.parametrize(
    ("output", "answer", "expected"),
    [
        # mode:                                     last-number final-line anywhere answer-regex
        (CHAIN, 60, (True, True, True, True)),
        (CHAIN, 12, (False, False, True, False)),  # an intermediate number is right only `anywhere`
        ("The answer is 12.\nI hope this helps!", 12, (True, False, True, True)),  # trailing text
        ("The answer is 12.\nThat is 3 more than 9.", 12, (False, False, True, True)),
        ("3 + 4 = 7, doubled: 14\nAnswer: 14", 14, (True, True, True, True)),
        ("3 + 4 = 7, doubled: 14\nAnswer: 14", 7, (False, False, True, False)),
        ("Answer: 12\nWait, I forgot the tax.\nAnswer: 15", 12, (False, False, True, False)),  # the last match
        ("It falls 15 degrees from 4.\n\nAnswer: -11\n\n", -11, (True, True, True, True)),  # blank lines at the end
        ("It falls 15 degrees from 4.\nAnswer: -11", 11, (False, False, False, False)),  # the sign counts
        ("Total: 38,400 toys\nanswer = 38,400", 38400, (True, True, True, True)),  # thousands separators
        ("Total: 38400\nANSWER: 38400.0", "38,400", (True, True, True, True)),
        ("He needs 9 packs (84 sheets).", 9, (False, False, True, False)),  # no marked answer: no match
        ("", 0, (False, False, False, False)),
    ],
)
def test_each_mode_reads_its_own_part_of_the_output(output: str, answer: Any, expected: tuple[bool, ...]) -> None:
    modes = ("last-number", "final-line", "anywhere", ANSWER_RE)
    assert tuple(scored(output, mode, answer) for mode in modes) == expected


def test_the_readme_example_regex() -> None:
    readme = r"regex:(?i)answer\s*[:=]?\s*(-?[\d,\.]+)"
    assert scored("2 x 512\nAnswer: 1,024.", readme, 1024)  # "1,024." holds one number, 1024
    assert not scored("The answer is 1,024.", readme, 1024)  # "answer is" is not "answer:": no match


def test_last_number_is_the_default_and_todays_rule() -> None:
    assert str(Scoring()) == "last-number" and Scoring() == Scoring.parse("last-number")
    row = {"answers": [8, "eight"]}
    assert is_correct("8 legs? No: 10 legs.", row) is False and is_correct("It has eight legs, not 10.", row)


def test_words_and_row_regexes_in_the_final_line() -> None:
    output = "Paris? No, it is not Paris.\nThe capital is Lyon."
    assert scored(output, "last-number", "Paris") and scored(output, "anywhere", "Paris")
    assert not scored(output, "final-line", "Paris") and scored(output, "final-line", "lyon")
    row = {"regex": "(?i)paris"}
    assert is_correct(output, row, Scoring.parse("last-number"))
    assert not is_correct(output, row, Scoring.parse("final-line"))


def test_a_regex_takes_group_one_or_else_the_whole_match() -> None:
    grouped, whole = "regex:Final: (\\w+)", "regex:\\d+(?= apples)"
    assert scored("Final: Lyon. Final: Paris!", grouped, "paris") and not scored("Final: Lyon", grouped, "Paris")
    assert scored('Final: "Paris".', "regex:Final: (\\S+)", "Paris")  # quotes and punctuation around it are ignored
    assert scored("3 pears and 12 apples", whole, 12) and not scored("3 pears and 12 apples", whole, 3)
    assert not scored("12 apples or 13", "regex:\\d+ apples or \\d+", 12)  # two numbers are no one number
    assert not scored("no apples here", whole, 12)  # no match: no answer
    assert scored("Answer: 5 then more: ", "regex:(?i)answer:\\s*(\\d*)|more:\\s*(\\d*)", 5)  # blank answers skipped
    assert is_correct("Final: JUPITER", {"regex": "^JUP"}, Scoring.parse(grouped))  # a row's regex, in the answer
    assert not is_correct("Final: JUPITER", {"regex": "^UP"}, Scoring.parse(grouped))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("last", "'last' is not a scoring mode: use last-number, final-line, anywhere or regex:PATTERN"),
        ("regex:", "'regex:': the pattern is empty"),
        ("regex:(", "'regex:(': the pattern does not compile: missing ), unterminated subpattern at position 0"),
    ],
)
def test_a_bad_mode_is_a_usage_error_before_any_call(
    value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError) as raised:
        Scoring.parse(value)
    assert str(raised.value) == message
    with LoopbackServer() as server:
        recipe = single(server, tmp_path, "one")
        data = questions(tmp_path)
        assert main(["eval", "qa", "-r", str(recipe), "--data", str(data), "--out", str(tmp_path / "o"),
                     "--score", value]) == 2  # fmt: skip
        assert not server.completions() and not (tmp_path / "o").exists()
    assert capsys.readouterr().err.endswith(f"moa eval qa: error: argument --score: {message}\n")


def test_a_scoring_is_built_by_parse() -> None:
    with pytest.raises(ValueError) as raised:
        Scoring("regex")
    assert str(raised.value) == "no scoring 'regex' with pattern None: use Scoring.parse()"
    with pytest.raises(ValueError):
        Scoring("final-line", re.compile("x"))


# ------------------------------------------------------------------ cut outputs


def _record(output: str, finish: str | None, *, candidates: bool = True) -> dict[str, Any]:
    call = {"layer": 2, "agent": 0, "name": "agg", "model": "openai/agg", "text": output, "finish_reason": finish}
    layer: dict[str, Any] = {"index": 2, "kind": "aggregate", "outputs": [call]}
    if candidates:
        layer["candidates"] = [{"text": output, "layer": 2, "finish_reason": finish}]
    first = {"index": 1, "kind": "propose", "outputs": [{**call, "layer": 1, "finish_reason": "stop"}]}
    return {"output": output, "traces": [{"layers": [first, layer]}]}


@pytest.mark.parametrize("candidates", [True, False])  # traces from before stages kept their candidates, too
def test_an_output_cut_by_max_tokens_has_no_answer(candidates: bool) -> None:
    row = {"answers": [7]}
    cut = _record("First 3 + 4 = 7 then 7", "length", candidates=candidates)
    assert finish_reason(cut) == "length"
    assert [score(cut, row, Scoring.parse(m)) for m in ("last-number", "final-line", "anywhere")] == [False] * 3
    done = _record("First 3 + 4 = 7 then 7", "stop", candidates=candidates)
    assert finish_reason(done) == "stop" and score(done, row, Scoring())
    assert finish_reason({"output": "7"}) is None and score({"output": "7"}, row, Scoring())  # no trace: not cut


# ------------------------------------------------------------------ end to end: summary, re-scoring, baseline

# Question: (the aggregator's output, the baseline's output, the answer).  The proposers always run past
# max_tokens (8 words): only the final output's cut counts.
QUESTIONS = {
    "c1": ("5 + 7 = 12\nDone.", "12", 12),
    "c2": ("The answer is 1,024.\nChecked with 2 steps.", "1024", 1024),
    "c3": ("Start at 4, drop 7.\nAnswer: -3", "3", -3),
    "c4": ("First 3 + 4 = 7 then 7 x 2 = 14 so the answer is 14", "7", 7),  # cut after "then 7"
    "c5": ("Paris is wrong.\nIt is Lyon.", "Lyon", "Paris"),
}
MODES = {  # mode: (correct per question, printed line)
    "last-number": ([True, False, True, False, True], "accuracy 60.0% (3/5; 1 cut by max_tokens, counted wrong)"),
    "final-line": ([False, False, True, False, False], "accuracy 20.0% (1/5; 1 cut by max_tokens, counted wrong)"),
    "anywhere": ([True, True, True, False, True], "accuracy 80.0% (4/5; 1 cut by max_tokens, counted wrong)"),
    ANSWER_RE: ([False, True, True, False, False], "accuracy 40.0% (2/5; 1 cut by max_tokens, counted wrong)"),
}


def reply(body: dict[str, Any], index: int) -> str:
    question = re.search(r"Question (c\d)", " ".join(str(m["content"]) for m in body["messages"]))
    assert question is not None
    final, baseline, _ = QUESTIONS[question.group(1)]
    model = body["model"].split("/")[-1]
    return {"agg": final, "solo": baseline}.get(model, "let me think " * 10)


def single(server: LoopbackServer, tmp_path: Path, model: str) -> Path:
    path = tmp_path / f"{model}.yaml"
    data = loopback_recipe(server, [{"kind": "propose", "agents": agents(f"openai/{model}")}], name=model)
    path.write_text(yaml.safe_dump(data))
    return path


def moa_recipe(server: LoopbackServer, tmp_path: Path) -> Path:
    layers = [{"kind": "propose", "agents": agents("openai/p1", "openai/p2", max_tokens=8)},
              {"kind": "aggregate", "agents": agents("openai/agg", max_tokens=8)}]  # fmt: skip
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(loopback_recipe(server, layers, name="mix")))
    return path


def questions(tmp_path: Path) -> Path:
    path = tmp_path / "q.jsonl"
    rows = [{"id": key, "prompt": f"Question {key}?", "answers": [answer]} for key, (*_, answer) in QUESTIONS.items()]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "qa_results.jsonl").read_text().splitlines()]


def test_another_scoring_rescores_a_finished_run_without_a_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with LoopbackServer(responder=reply) as server:
        args = ["eval", "qa", "--recipe", str(moa_recipe(server, tmp_path)), "--data", str(questions(tmp_path)),
                "--out", str(out)]  # fmt: skip
        assert main(args) == 0
        assert len(server.completions()) == 5 * 3
        assert sum(r.body is not None and r.body["max_tokens"] == 8 for r in server.completions()) == 15
        items = (out / "items.jsonl").read_text()
        for mode, (correct, line) in MODES.items():
            capsys.readouterr()
            assert main(args if mode == "last-number" else [*args, "--score", mode]) == 0
            assert len(server.completions()) == 5 * 3  # every answer came from the checkpoint
            printed = capsys.readouterr()
            assert f"mix: {line}, scored by {mode}\n" in printed.out
            assert "0 now, 5 from checkpoint" in printed.err
            assert [r["correct"] for r in results(out)] == correct
            assert [r["finish_reason"] for r in results(out)] == ["stop", "stop", "stop", "length", "stop"]
            summary = json.loads((out / "summary.json").read_text())
            assert (summary["scoring"], summary["score_name"], summary["cut"]) == (mode, f"accuracy ({mode})", 1)
            assert summary["score"] == sum(correct) / 5 * 100
            assert (out / "items.jsonl").read_text() == items  # the run itself is untouched
    assert results(out)[3]["output"] == "First 3 + 4 = 7 then 7"  # cut: it ends on a step, and is wrong


def test_the_baseline_is_scored_the_same_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    with LoopbackServer(responder=reply) as server:
        args = ["eval", "qa", "--recipe", str(moa_recipe(server, tmp_path)), "--data", str(questions(tmp_path)),
                "--out", str(out), "--baseline", str(single(server, tmp_path, "solo"))]  # fmt: skip
        assert main([*args, "--score", "final-line"]) == 0
        calls = len(server.completions())
        assert calls == 5 * 3 + 5
        printed = capsys.readouterr().out
        assert "baseline solo: accuracy 60.0% (3/5), scored by final-line\n" in printed
        assert "on the 5 questions both answered, scored by final-line: 20.0% vs baseline 60.0%; " in printed
        comparison = json.loads((out / "summary.json").read_text())["comparison"]
        assert comparison["scoring"] == "final-line"
        assert (comparison["right_to_wrong"], comparison["wrong_to_right"]) == (["c1", "c2", "c4"], ["c3"])
        assert [r["correct"] for r in results(out / "baseline")] == [True, True, False, True, False]

        assert main([*args, "--score", "anywhere"]) == 0
        assert len(server.completions()) == calls
        comparison = json.loads((out / "summary.json").read_text())["comparison"]
        assert json.loads((out / "baseline" / "summary.json").read_text())["scoring"] == "anywhere"
        assert comparison["scoring"] == "anywhere"
        assert (comparison["right_to_wrong"], comparison["wrong_to_right"]) == (["c4"], ["c3", "c5"])


def test_runs_scored_differently_are_not_compared(tmp_path: Path) -> None:
    from moa.eval import DataError, qa

    for name, scoring in (("a", "last-number"), ("b", "final-line")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"scoring": scoring}))
        (tmp_path / name / "qa_results.jsonl").write_text("")
    with pytest.raises(DataError) as raised:
        qa.compare(tmp_path / "a", tmp_path / "b")
    assert str(raised.value) == (
        f"{tmp_path / 'a'} was scored by last-number and its baseline {tmp_path / 'b'} by final-line: score both "
        "the same way to compare them"
    )
