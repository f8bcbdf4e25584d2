"""The built-in `python` tool: what the model gets back from the sandbox (``moa._sandbox``).

The sandbox is another branch's work; until it is merged here, these tests run the tool against a
stand-in with the sandbox's interface (``sandbox(backend).run(code, limits=Limits(...))`` -> an
``Execution``).  The last test runs real programs and is skipped while ``moa._sandbox`` is missing.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import loopback_recipe

import moa
from moa.testing import LoopbackServer


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 256
    processes: int = 16
    output_bytes: int = 65536


@dataclass(frozen=True)
class Execution:
    code: str
    exit_status: int | None
    stdout: str
    stderr: str
    wall_s: float = 0.01
    limit: str | None = None
    reason: str | None = None
    isolation: tuple[str, ...] = ("process",)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and self.limit is None


@dataclass
class StandIn:
    """A sandbox that answers from a script of executions, keyed by the program, and notes every run."""

    name: str
    script: dict[str, Execution]
    runs: list[tuple[str, Limits]] = field(default_factory=list)

    async def run(self, code: str, *, limits: Limits | None = None, stdin: str = "") -> Execution:
        self.runs.append((code, limits or Limits()))
        return self.script[code]


@pytest.fixture
def sandboxes(monkeypatch: pytest.MonkeyPatch) -> dict[str, StandIn]:
    made: dict[str, StandIn] = {}
    script = {
        "print(6 * 7)": Execution("print(6 * 7)", 0, "42\n", ""),
        "pass": Execution("pass", 0, "", ""),
        "1/0": Execution(
            "1/0",
            1,
            "partial output\n",
            "Traceback (most recent call last):\n" + "  ...\n" * 400 + "ZeroDivisionError: division by zero\n",
            reason="the program exited with status 1",
        ),
        "while True: pass": Execution(
            "while True: pass", None, "", "", limit="wall_time", reason="it ran past its 2 s wall-clock limit"
        ),
    }

    def sandbox(backend: str = "local", **options: Any) -> StandIn:
        made[backend] = made.get(backend) or StandIn(backend, script)
        return made[backend]

    module = types.ModuleType("moa._sandbox")
    module.Limits = Limits  # type: ignore[attr-defined]
    module.sandbox = sandbox  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "moa._sandbox", module)
    return made


def runs_programs(*programs: str) -> Any:
    def respond(body: dict[str, Any], index: int) -> Any:
        if body["messages"][-1]["role"] == "tool":
            return "done"
        calls = [{"id": f"p{n}", "name": "python", "arguments": {"code": code}} for n, code in enumerate(programs)]
        return {"tool_calls": calls}

    return respond


async def run_python(tool: Any, *programs: str) -> tuple[moa.MoAResult, dict[str, str]]:
    with LoopbackServer(responder=runs_programs(*programs)) as server:
        agents = [{"model": "openai/gpt-4o-mini", "tools": [tool]}]
        recipe = loopback_recipe(server, [{"kind": "propose", "agents": agents}])
        result = await moa.run("Compute.", recipe, api_key="k")
        body = server.completions()[1].body
    assert body is not None
    return result, {m["tool_call_id"]: m["content"] for m in body["messages"] if m["role"] == "tool"}


async def test_a_program_s_output_is_the_result_and_its_failures_say_why(sandboxes: dict[str, StandIn]) -> None:
    result, results = await run_python("python", "print(6 * 7)", "pass", "1/0", "while True: pass")
    assert results["p0"] == "42\n"
    assert results["p1"] == "(the program printed nothing)"
    failed = results["p2"]
    assert failed.startswith("error: the program exited with status 1\nstdout:\npartial output\n\nstderr (its end):\n")
    assert failed.endswith("  ...\nZeroDivisionError: division by zero\n") and len(failed) < 1700
    assert results["p3"] == "error: it ran past its 2 s wall-clock limit"
    (output,) = result.layers[0].outputs
    assert [t.error for t in output.tool_calls] == [
        None,
        None,
        "the program exited with status 1",
        "it ran past its 2 s wall-clock limit",
    ]
    assert [t.result for t in output.tool_calls] == list(results.values())
    assert [code for code, _ in sandboxes["local"].runs] == ["print(6 * 7)", "pass", "1/0", "while True: pass"]
    assert all(limits == Limits() for _, limits in sandboxes["local"].runs)


async def test_the_tool_s_limits_and_backend_reach_the_sandbox(sandboxes: dict[str, StandIn]) -> None:
    tool = {"name": "python", "sandbox": "container", "limits": {"wall_s": 2, "memory_mb": 128, "output_bytes": 4096}}
    await run_python(tool, "print(6 * 7)")
    ((_, limits),) = sandboxes["container"].runs
    assert limits == Limits(wall_s=2.0, cpu_s=5, memory_mb=128, processes=16, output_bytes=4096)


@pytest.mark.skipif(
    importlib.util.find_spec("moa._sandbox") is None,
    reason="moa._sandbox (branch `sandbox`) is not merged here yet: the python tool is tested against a stand-in",
)
async def test_the_python_tool_runs_real_programs_in_the_sandbox() -> None:
    result, results = await run_python("python", "print(6 * 7)", "1/0")
    assert results["p0"].strip() == "42"
    assert results["p1"].startswith("error: ") and "ZeroDivisionError" in results["p1"]
    assert result.output == "done"
