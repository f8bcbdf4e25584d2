"""One protocol for every benchmark, so a new one (or ``moa search``'s scorer) is one module.

A benchmark reads its items, answers each with one or more runs of the recipe
(``EvalContext.answer``), writes its official files, and may judge the
answers.  The driver (``moa eval``) does everything else the same way for all
of them: run identity, locks, budgets, preflight, resume, progress, exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from moa.eval._common import EvalContext
from moa.eval._runner import RunStats
from moa.recipe import Recipe


@dataclass
class EvalOptions:
    """What one benchmark run is asked to do (the command line's arguments, for library users too)."""

    data: Path  # the eval set or questions file
    out: Path  # the run's folder
    limit: int | None = None  # only the first N items
    concurrency: int = 8  # items in flight at once
    name: str | None = None  # AlpacaEval's generator / MT-Bench's model id (default: the recipe's name)
    judge: str | None = None  # the judge model; judging runs after generation
    judge_prompt: Path | None = None  # AlpacaEval's chatml prompt / FastChat's judge_prompts.jsonl
    references: Path | None = None  # AlpacaEval's reference outputs / FastChat's reference answers
    lc_data: Path | None = None  # AlpacaEval's df_gamed.csv (or instruction_difficulty.csv)
    logprobs: bool = True  # the AlpacaEval judge reads logprobs (else its text)


@dataclass(frozen=True)
class JudgeSetup:
    """A judge, checked before any call: its recipe, its prompt file, and the references' identity."""

    recipe: Recipe
    prompt_file: Path
    references: str


class Benchmark(Protocol):
    """A benchmark: items in, official files and a summary out."""

    name: str
    #: Files judging adds to the folder, and keys it adds to ``summary.json`` (moved aside or
    #: dropped when the judge changes).
    judge_files: tuple[str, ...]
    judge_summary_keys: tuple[str, ...]

    def read(self, options: EvalOptions) -> list[dict[str, Any]]:
        """The items (after ``limit``), read and checked; a bad file is a ``DataError`` naming file and line."""
        ...

    def items(self, rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        """(checkpoint key, item) per item."""
        ...

    def run_keys(self, rows: list[dict[str, Any]]) -> list[str]:
        """The key of every run the items make (re-aggregation needs a trace for each)."""
        ...

    def worst_case(self, ctx: EvalContext, item: Any) -> float | None:
        """The most one item can cost (what its budget reservation holds); None when unpriced."""
        ...

    async def generate(self, ctx: EvalContext, options: EvalOptions, run: str) -> tuple[dict[str, Any], RunStats]:
        """Answer every item not finished yet; write the official files and ``summary.json``."""
        ...

    def judge_setup(self, options: EvalOptions) -> JudgeSetup | None:
        """The judge (None without ``--judge``); its files are read and checked now, before any call."""
        ...

    async def judge(
        self, ctx: EvalContext, options: EvalOptions, run: str, lc_data: Any
    ) -> tuple[dict[str, Any], RunStats]:
        """Judge the generated answers (resumably); write the judgments and the scores."""
        ...

    def describe(self, summary: dict[str, Any], stats: RunStats, judged: bool) -> list[str]:
        """The result lines to print (a score, its method and caveats)."""
        ...

    def output_file(self, summary: dict[str, Any]) -> str:
        """The name of the main file written in the run's folder."""
        ...


def read_text(path: Path) -> str:
    """A judge prompt file's text (a ``DataError`` naming it when it cannot be read)."""
    from moa.eval._common import DataError

    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read: {exc}") from None
