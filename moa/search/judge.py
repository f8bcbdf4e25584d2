"""Grading open-ended answers for ``moa search --metric judge``: a judge model rates each answer from 1 to 10.

The judge (any model, or a recipe) reads the request and one answer and ends
with ``[[N]]``; the score is (N - 1) / 9, from 0 to 1.  A judgment without a
rating scores 0 and is counted.  Judge calls go through the search's call
cache and limits; they are not part of a candidate's cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moa._call import CallCache
from moa._errors import MoAError
from moa.eval._common import DataError, read_jsonl
from moa.eval.mtbench.grading import parse_rating
from moa.recipe import Recipe

from .run import Grader, Limits

JUDGE_SYSTEM = (
    "You grade one answer to a user's request. Weigh whether it is correct, helpful, complete and clear for that "
    "request; length is no merit in itself. Give one or two sentences of reasons, then the rating on a line of its "
    "own as [[N]], N a whole number from 1 (wrong or useless) to 10 (excellent)."
)


def judge_of(reference: str) -> Recipe:
    """The judge: a recipe (a built-in name or a YAML path), or a model asked at temperature 0."""
    from moa._loader import builtin_recipes, load_recipe

    if reference in builtin_recipes() or reference.endswith((".yaml", ".yml")) or Path(reference).is_file():
        return load_recipe(reference)
    agent = {"model": reference, "temperature": 0.0, "max_tokens": 512}
    return load_recipe({"name": f"judge {reference}", "layers": [{"kind": "propose", "agents": [agent]}]})


def judge_grader(judge: Recipe, cache: CallCache | None, unrated: list[str]) -> Grader:
    """A grader asking ``judge``; the ids of questions whose judgment had no rating are added to ``unrated``."""
    from moa.eval._common import EvalContext

    ctx = EvalContext(recipe=judge, cache=cache)  # (on Ray workers too, when the search runs there)

    async def grade(row: Mapping[str, Any], answer: str, limits: Limits) -> tuple[float | None, list[Any]]:
        messages = [{"role": "system", "content": JUDGE_SYSTEM},
                    {"role": "user", "content": f"[Request]\n{row['prompt']}\n\n[Answer]\n{answer}"}]  # fmt: skip
        try:
            result = await ctx.answer(messages, budget=limits.budget)
        except MoAError as exc:
            unrated.append(str(row["id"]))
            partial = getattr(exc, "partial", None)
            return None, list(partial.calls) if partial is not None else []
        rating = parse_rating(result.output)
        if not 1 <= rating <= 10:
            unrated.append(str(row["id"]))
            return None, list(result.calls)
        return (rating - 1) / 9, list(result.calls)

    return grade


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """Open-ended questions: JSON Lines of ``id`` and ``prompt`` (other fields are kept, not read)."""
    rows = read_jsonl(path)
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        where = f"{path}, line {number}"
        if not isinstance(row.get("id"), str | int) or isinstance(row.get("id"), bool):
            raise DataError(f"{where}: `id` must be a string or an integer")
        if str(row["id"]) in seen:
            raise DataError(f"{where}: the id {row['id']!r} is used twice")
        seen.add(str(row["id"]))
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(f"{where}: `prompt` must be a non-empty string")
    if not rows:
        raise DataError(f"{path}: no question")
    return rows
