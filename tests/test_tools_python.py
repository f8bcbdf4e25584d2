"""The built-in `python` tool: what the model gets back from the sandbox (``moa._sandbox``).

Most tests run the tool against a stand-in with the sandbox's interface (``sandbox(backend).run(code,
limits=Limits(...))`` -> an ``Execution``), so every kind of outcome is exact; the last ones run real
programs in the real local sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import loopback_recipe

import moa
from moa._tools import calls
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

    monkeypatch.setattr(calls, "Limits", Limits)
    monkeypatch.setattr(calls, "sandbox", sandbox)
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


async def test_the_python_tool_runs_real_programs_in_the_sandbox() -> None:
    programs = ["print(6 * 7)", "1/0", "import os; print(sorted(k for k in os.environ if 'KEY' in k))"]
    result, results = await run_python("python", *programs)
    assert results["p0"] == "42\n" and results["p2"] == "[]\n"  # no key of moa's reaches the program
    assert results["p1"].startswith("error: ") and results["p1"].rstrip().endswith(
        "ZeroDivisionError: division by zero"
    )
    (output,) = result.layers[0].outputs
    assert output.tool_calls[1].error is not None and "stderr" not in output.tool_calls[1].error
    assert result.output == "done"


async def test_a_program_past_its_limits_is_stopped_and_the_model_told_why() -> None:
    tool = {"name": "python", "limits": {"wall_s": 1, "cpu_s": 1}}
    result, results = await run_python(tool, "while True: pass")
    (output,) = result.layers[0].outputs
    (call,) = output.tool_calls
    assert call.error is not None and results["p0"] == f"error: {call.error}"
    assert "limit" in call.error and call.wall_s < 30
