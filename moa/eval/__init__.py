"""The evaluation harness behind ``moa eval``: AlpacaEval 2.0, MT-Bench and your own QA sets.

Every benchmark run is resumable (a checkpoint per finished item, fsync'd),
keeps each item's full MoA trace, and writes the official file formats.

Library use: ``BENCHMARKS[name]`` is a ``Benchmark``; ``EvalContext`` answers
items with a recipe under shared limits and a budget; ``EvalOptions`` says
what to run.  The command line (``moa.cli.eval``) drives them the same way.
"""

from moa.eval import alpaca, mtbench, qa
from moa.eval._common import DataError, EvalContext
from moa.eval._runner import RunStats
from moa.eval.benchmark import Benchmark, EvalOptions, JudgeSetup

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (alpaca.BENCHMARK, mtbench.BENCHMARK, qa.BENCHMARK)}

__all__ = ["BENCHMARKS", "Benchmark", "DataError", "EvalContext", "EvalOptions", "JudgeSetup", "RunStats"]
