"""Mutation score of the core modules: mutmut 3, one module at a time, and a table of the results.

    python benchmarks/mutation_score.py                      # every core module (tens of minutes on 2 cores)
    python benchmarks/mutation_score.py moa/_call/retry.py   # a subset
    python benchmarks/mutation_score.py --report             # the table of the last runs, running nothing
    python benchmarks/mutation_score.py --survivors moa/_secrets.py   # and the diff of every survivor

Each module is mutated on its own, with only the test files that exercise it (``MODULES``), in a
folder of its own: ``mutants/by-module/<module>/``.  mutmut reads its settings from the
``pyproject.toml`` of the folder it runs in and has no command-line override, so that folder holds
links to the sources and tests and a ``pyproject.toml`` made of the repository's pytest settings and
its ``[tool.mutmut]`` section, with ``only_mutate`` and the test selection set for the module.  To
look at one mutant by hand::

    cd mutants/by-module/moa._call.retry && ../../../.venv/bin/mutmut show NAME

Score = (killed + timeout) / (killed + timeout + survived + no tests): a mutant that makes the tests
time out was detected, and one that no selected test reaches counts as a survivor.

By default every module is measured afresh (its folder's earlier results are deleted).  ``--retest``
keeps the verdicts of killed mutants and runs the others again (after a test was added).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "mutants" / "by-module"

_CALL = ("tests/test_engine.py", "tests/test_reliability.py", "tests/test_plan_and_events.py")
_STAGE_KINDS = tuple(
    f"tests/test_stage_{kind}.py" for kind in ("debate", "plugins", "rank", "review", "verify", "views", "vote")
)
_STAGES = (*_CALL, "tests/test_plan.py", "tests/test_recipes.py", *_STAGE_KINDS, "tests/test_mutation_stages.py")
#: The stage kinds that call the sandbox or check answers, and the test files that reach them.
_STAGES_MORE = (*_STAGES, "tests/test_stage_agree.py", "tests/test_stage_execute.py", "tests/test_extract.py")
#: The tool-calling loop: its own tests, and the engine's (a spec with tools is a loop).
_TOOLS = (
    "tests/test_tools.py",
    "tests/test_tools_budget.py",
    "tests/test_tools_config.py",
    "tests/test_tools_python.py",
    *_CALL,
    "tests/test_plan.py",
    "tests/test_mutation_tools.py",
)
#: The sandbox: only tests that start no program.  A mutant of the sandbox runs in the process that
#: supervises programs, as root here: the programs that the slow tests and the execute and python-tool
#: tests start (fork bombs, writes outside the working directory) would then run with broken
#: containment, and ``_local``'s mutants that pick the processes to SIGKILL (``_kill_uid``, ``_kill_group``)
#: killed every process on the machine when they were run so.  ``_local.py`` is left out for that reason
#: (nothing but running programs reaches its logic), and so is ``_launcher.py`` (it runs in the child, an
#: isolated interpreter that never imports the mutants).
_SANDBOX = ("tests/test_sandbox.py", "tests/test_mutation_sandbox.py")
_TEMPLATES = (
    "tests/test_templates.py",
    "tests/test_template_safety.py",
    "tests/test_recipes.py",
    "tests/test_mutation_templates.py",
)
_RUNLOG = ("tests/test_runlog.py", "tests/test_cli.py", "tests/test_cli_trust.py", "tests/test_mutation_runlog.py")
_STATS = ("tests/test_benchmark_logic.py", "tests/test_evals.py", "tests/test_mutation_stats.py")
#: Cost-aware control: cascades, routes (by rules, a classifier or neighbours) and their calibration.  In-process
#: and loopback-server tests only (never tests/test_local_model.py, which starts llama models).
_CONTROL_STAGES = (
    "tests/test_stage_cascade.py",
    "tests/test_stage_route.py",
    "tests/test_stage_route_neighbours.py",
    "tests/test_mutation_control.py",
)
_CONTROL_EVAL = (
    "tests/test_calibrate.py",
    "tests/test_calibrate_routes.py",
    "tests/test_stage_cascade.py",
    "tests/test_stage_route.py",
    "tests/test_mutation_control.py",
)

#: The core modules and the test files each one's mutants are run against (fast, in-process tests only:
#: tests marked ``slow`` start subprocesses, which never import the mutants).  A file that does not exist
#: yet is left out.
MODULES: dict[str, tuple[str, ...]] = {
    "moa/_call/retry.py": (
        "tests/test_retry.py",
        "tests/test_loopback.py",
        *_CALL,
        "tests/test_mutation_call.py",
    ),
    "moa/_call/cost.py": (*_CALL, "tests/test_plan.py", "tests/test_mutation_call.py"),
    "moa/_call/budget.py": (*_CALL, "tests/test_mutation_call.py"),
    "moa/_call/pipeline.py": (
        *_CALL,
        "tests/test_retry.py",
        "tests/test_loopback.py",
        "tests/test_answers.py",
        "tests/test_live_view.py",
        "tests/test_mutation_call.py",
    ),
    "moa/_limits.py": (
        "tests/test_limits.py",
        "tests/test_tpm.py",
        "tests/test_engine.py",
        "tests/test_mutation_limits.py",
    ),
    "moa/_templates/__init__.py": _TEMPLATES,
    "moa/_templates/sizes.py": _TEMPLATES,
    "moa/_templates/sandbox.py": _TEMPLATES,
    "moa/_runlog.py": _RUNLOG,
    "moa/eval/_stats.py": _STATS,
    "moa/eval/_lc.py": ("tests/test_lc.py", *_STATS),
    "moa/_secrets.py": (
        "tests/test_secrets.py",
        "tests/test_loopback.py",
        "tests/test_engine.py",
        "tests/test_mutation_secrets.py",
    ),
    "moa/_stages/base.py": _STAGES,
    "moa/_stages/propose.py": _STAGES,
    "moa/_stages/aggregate.py": _STAGES,
    "moa/_stages/aggregate_seq.py": _STAGES,
    "moa/_stages/verify.py": _STAGES_MORE,
    "moa/_stages/execute.py": _STAGES_MORE,
    "moa/_stages/vote.py": _STAGES_MORE,
    "moa/_stages/rank.py": _STAGES_MORE,
    "moa/_stages/debate.py": _STAGES_MORE,
    "moa/_stages/checks.py": _STAGES_MORE,
    "moa/_stages/extract.py": _STAGES_MORE,
    "moa/_stages/verdicts.py": _STAGES_MORE,
    "moa/_tools/loop.py": _TOOLS,
    "moa/_tools/calls.py": _TOOLS,
    "moa/_tools/worst.py": _TOOLS,
    "moa/_sandbox/_isolation.py": _SANDBOX,
    "moa/_sandbox/_verdict.py": _SANDBOX,
    "moa/_sandbox/_types.py": _SANDBOX,
    "moa/_sandbox/_container.py": _SANDBOX,
    "moa/_stages/cascade.py": _CONTROL_STAGES,
    "moa/_stages/route.py": _CONTROL_STAGES,
    "moa/_stages/neighbours.py": _CONTROL_STAGES,
    "moa/_stages/answering.py": _CONTROL_STAGES,
    "moa/eval/_calibrate.py": _CONTROL_EVAL,
    "moa/eval/_calibrate_routes.py": _CONTROL_EVAL,
    "moa/eval/_control.py": _CONTROL_EVAL,
    "moa/_embeddings.py": ("tests/test_stage_route_neighbours.py", "tests/test_mutation_control.py"),
}

#: Tests left out of every selection (none now: no test times the wall clock; one that did failed under
#: mutmut's trampolines on a loaded machine without any mutant, and the stats run stopped).
DESELECTED: tuple[str, ...] = ()

#: What the folder of a module links to (besides the ``also_copy`` paths of the configuration).
_LINKED = ("moa", "tests")

_KILLED = {"killed"}
_TIMEOUT = {"timeout"}
_SURVIVED = {"survived"}
_NO_TESTS = {"no tests"}


@dataclass
class Score:
    module: str
    mutants: int
    killed: int
    timeout: int
    survived: int
    no_tests: int
    other: int
    seconds: float | None
    survivors: list[str]

    @property
    def percent(self) -> float | None:
        detected = self.killed + self.timeout
        judged = detected + self.survived + self.no_tests
        return 100.0 * detected / judged if judged else None


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_table(name: str, table: dict[str, object]) -> str:
    return f"[{name}]\n" + "".join(f"{key} = {_toml_value(value)}\n" for key, value in table.items())


def _slug(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def prepare(module: str, tests: tuple[str, ...]) -> Path:
    """The folder mutmut runs in for ``module``: links to the sources, and its own ``pyproject.toml``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mutmut = dict(project["tool"]["mutmut"])
    pytest_options = project["tool"]["pytest"]["ini_options"]
    selected = [test for test in tests if (ROOT / test).is_file()]
    if not selected:
        raise SystemExit(f"{module}: none of its test files exists: {', '.join(tests)}")
    mutmut["only_mutate"] = [module]
    mutmut["pytest_add_cli_args_test_selection"] = [*selected, *(f"--deselect={test}" for test in DESELECTED)]
    folder = WORK / _slug(module)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*_LINKED, *mutmut.get("also_copy", [])):
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name)
    text = _toml_table("tool.pytest.ini_options", pytest_options) + "\n" + _toml_table("tool.mutmut", mutmut)
    config = folder / "pyproject.toml"
    if not config.is_file() or config.read_text(encoding="utf-8") != text:
        config.write_text(text, encoding="utf-8")
    return folder


def _meta(folder: Path, module: str) -> dict[str, int | None]:
    path = folder / "mutants" / f"{module}.meta"
    if not path.is_file():
        return {}
    codes: dict[str, int | None] = json.loads(path.read_text(encoding="utf-8"))["exit_code_by_key"]
    return codes


def _status(code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    return str(status_by_exit_code[code])


def score(folder: Path, module: str, seconds: float | None) -> Score:
    statuses = {name: _status(code) for name, code in _meta(folder, module).items()}
    values = list(statuses.values())
    killed = sum(status in _KILLED for status in values)
    timeout = sum(status in _TIMEOUT for status in values)
    survived = sum(status in _SURVIVED for status in values)
    no_tests = sum(status in _NO_TESTS for status in values)
    survivors = sorted(name for name, status in statuses.items() if status in _SURVIVED | _NO_TESTS)
    other = len(values) - killed - timeout - survived - no_tests
    return Score(module, len(values), killed, timeout, survived, no_tests, other, seconds, survivors)


def _mutmut() -> str:
    found = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if found is None:
        raise SystemExit("mutmut is not installed (pip install -e '.[dev]')")
    return found


def run(module: str, *, retest: bool, max_children: int) -> Score:
    folder = prepare(module, MODULES.get(module) or _unknown(module))
    names: list[str] = []
    if retest:
        names = [name for name, code in _meta(folder, module).items() if _status(code) not in _KILLED | _TIMEOUT]
        if not names and _meta(folder, module):
            return score(folder, module, 0.0)
    else:
        shutil.rmtree(folder / "mutants", ignore_errors=True)
    log = folder / "mutmut.log"
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run(
            [_mutmut(), "run", f"--max-children={max_children}", *names],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            check=False,
        )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        print(f"{module}: mutmut failed (exit {done.returncode}); the end of {log}:\n{tail}", file=sys.stderr)
    return score(folder, module, seconds)


def _unknown(module: str) -> tuple[str, ...]:
    raise SystemExit(f"{module} is not a core module; known: {', '.join(MODULES)}")


def table(scores: list[Score]) -> str:
    header = ("module", "mutants", "killed", "timeout", "survived", "no tests", "other", "score %", "time s")
    rows = [header]
    for s in scores:
        percent = "-" if s.percent is None else f"{s.percent:.1f}"
        seconds = "-" if s.seconds is None else f"{s.seconds:.0f}"
        rows.append(
            (
                s.module,
                *(str(n) for n in (s.mutants, s.killed, s.timeout, s.survived, s.no_tests, s.other)),
                percent,
                seconds,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="module paths (default: every core module)")
    parser.add_argument("--report", action="store_true", help="print the table of the last runs; run nothing")
    parser.add_argument("--retest", action="store_true", help="keep killed verdicts, run the other mutants again")
    parser.add_argument("--survivors", action="store_true", help="also print the diff of every surviving mutant")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    args = parser.parse_args(argv)
    modules = [str(Path(m).resolve().relative_to(ROOT)) if Path(m).exists() else m for m in args.modules] or list(
        MODULES
    )
    for module in modules:
        if module not in MODULES:
            _unknown(module)
    os.chdir(ROOT)
    scores = []
    started = time.monotonic()
    for module in modules:
        if args.report:
            scores.append(score(WORK / _slug(module), module, None))
        else:
            scores.append(run(module, retest=args.retest, max_children=args.max_children))
            print(f"done: {module} ({scores[-1].seconds:.0f} s)", file=sys.stderr, flush=True)
    print(table(scores))
    if not args.report:
        print(f"\ntotal {time.monotonic() - started:.0f} s")
    if args.survivors:
        for s in scores:
            for name in s.survivors:
                shown = subprocess.run(
                    [_mutmut(), "show", name], cwd=WORK / _slug(s.module), capture_output=True, text=True, check=False
                )
                print(f"\n{shown.stdout.rstrip() or shown.stderr.rstrip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
