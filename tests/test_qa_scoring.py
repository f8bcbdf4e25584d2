"""`moa eval qa --score`: which part of an output is scored, cut answers, re-scoring from the checkpoint; and
the arithmetic word-problem set (`evals/arith-64.jsonl`) with its audit."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from moa.eval.qa import read_questions

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
