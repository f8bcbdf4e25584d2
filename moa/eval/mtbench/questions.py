"""MT-Bench's questions: reading them, their checkpoint keys, FastChat's temperatures, an item's worst case."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from moa._errors import ConfigError
from moa.eval._common import (
    DataError,
    EvalContext,
    read_jsonl,
    require,
    require_text,
)
from moa.recipe import CallParams

#: FastChat's sampling temperature per category (llm_judge/common.py).
CATEGORY_TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
NEED_REFERENCE = {"math", "reasoning", "coding", "arena-hard-200"}


def read_questions(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path)
    seen: dict[int, int] = {}
    for number, row in enumerate(rows, start=1):
        where = f"{path}, line {number}"
        require(row, "question_id", int, where)
        if row["question_id"] in seen:
            raise DataError(
                f"{where}: duplicate question_id {row['question_id']} (first on line {seen[row['question_id']]}): "
                "answers are stored by question_id, so one of the two would be lost"
            )
        seen[row["question_id"]] = number
        require(row, "category", str, where)
        turns = require(row, "turns", list, where)
        if not turns:
            raise DataError(f"{where}: `turns` must be a non-empty list of strings")
        for turn, text in enumerate(turns, start=1):
            require_text(text, f"{where}: turn {turn}")
    return rows


def worst_case(ctx: EvalContext, row: dict[str, Any]) -> float | None:
    """The most answering one question can cost: each turn is a run that sees every earlier answer at its longest."""
    key, total = _key(row), 0.0
    longest = "x" * ctx.answer_chars_max()
    temperature = CallParams(temperature=CATEGORY_TEMPERATURE.get(row["category"], 0.7))
    conversation: list[dict[str, str]] = []
    for turn, question in enumerate(row["turns"]):
        conversation.append({"role": "user", "content": question})
        worst = ctx.worst_case(conversation, key if turn == 0 else f"{key}#turn{turn + 1}", temperature)
        if worst is None:
            return None
        total += worst
        conversation.append({"role": "assistant", "content": longest})
    return total


def _key(row: dict[str, Any]) -> str:
    """The checkpoint key: the id and a digest of the question, so a changed question is answered anew."""
    content = json.dumps([row["category"], row["turns"]], ensure_ascii=False)
    return f"{row['question_id']}:{hashlib.sha1(content.encode()).hexdigest()[:10]}"


def items(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(checkpoint key, row) per question."""
    return [(_key(row), row) for row in rows]


def reuse_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The keys of every turn's run (for ``--reaggregate-from``)."""
    keys = []
    for key, row in items(rows):
        keys += [key if turn == 0 else f"{key}#turn{turn + 1}" for turn in range(len(row["turns"]))]
    return keys


def answer_file(model_id: str) -> str:
    """FastChat's answer file name, ``<model_id>.jsonl``: refused when it would not be a plain file in ``--out``."""
    name = f"{model_id}.jsonl"
    unsafe = (
        not model_id.strip()
        or model_id != model_id.strip()
        or any(c in model_id for c in '/\\:*?"<>|\0')
        or model_id.startswith(".")
        or any(ord(c) < 32 for c in model_id)
        or len(name.encode()) > 255
    )
    if unsafe:
        raise ConfigError(
            f"model id {model_id!r} cannot name the answer file {name!r} inside --out (no path separators, "
            "control characters or leading dot); pass --model-id NAME"
        )
    return name
