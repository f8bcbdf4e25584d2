"""`execute` (program-of-thought) through real litellm and the loopback server: each program the model "wrote"
runs in the local sandbox; its output is the answer; a program that misbehaves is contained, recorded with a
clear reason, and the run goes on with the other candidates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import agents, loopback_recipe

import moa
from moa._stages.execute import answer_of, code_of
from moa.recipe import ExecuteLayer

GOOD = "Let me compute.\n```python\napples = 3\nboxes = 4\nprint(apples * boxes)\n```\nThat prints the answer."
LIMITS = {"wall_s": 20, "cpu_s": 5, "memory_mb": 128, "processes": 8, "output_bytes": 4096}


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def recipe(server: Any, proposers: list[dict[str, Any]], *after: dict[str, Any], **execute: Any) -> Any:
    layers = [
        {"kind": "propose", "agents": proposers},
        {"kind": "execute", "limits": LIMITS, **execute},
        *after,
    ]
    return loopback_recipe(server, layers)


def executions(result: Any, layer: int = 1) -> list[dict[str, Any]]:
    return [c.execution for c in result.layers[layer].considered]


async def test_each_program_runs_and_its_output_is_the_answer_the_vote_counts(script: Any) -> None:
    server = script({"p1": GOOD, "p2": fenced("print(6 * 2)"), "p3": fenced("print(1 / 0)")})
    proposers = agents("openai/p1", "openai/p2", "openai/p3")
    result = await moa.run("Q", recipe(server, proposers, {"kind": "vote", "extract": "number"}), api_key="k")
    assert result.output == "12"
    first, second, third = executions(result)
    assert first["code"] == "apples = 3\nboxes = 4\nprint(apples * boxes)\n" and first["exit_status"] == 0
    assert (first["answer"], second["answer"]) == ("12", "12")
    assert third["exit_status"] == 1 and "ZeroDivisionError: division by zero" in third["no_answer"]
    assert [c.text for c in result.layers[1].candidates] == ["12", "12"]  # the failed program goes nowhere
    assert result.layers[2].considered[0].votes == 2
    assert first["isolation"] and "separate process" in " ".join(first["isolation"])
    assert len(server.requests) == 3  # running and voting cost no call
    json.dumps(result.model_dump())  # every run is in the trace, as JSON


async def test_no_answer_is_never_a_wrong_value_and_none_at_all_stops_the_run_with_every_reason(script: Any) -> None:
    exits_first = fenced("import sys\nsys.exit(0)\nprint(7)")
    server = script({"p1": "The answer is 7.", "p2": fenced("x = 7"), "p3": exits_first})
    proposers = agents("openai/p1", "openai/p2", "openai/p3")
    with pytest.raises(moa.ExecutionError) as info:
        await moa.run("Q", recipe(server, proposers), api_key="k")
    assert str(info.value) == (
        "layer 2 (execute): none of the 3 candidates' programs gave an answer\n"
        "  the answer of layer 1, openai/p1: no code found in it\n"
        "  the answer of layer 1, openai/p2: printed nothing\n"
        "  the answer of layer 1, openai/p3: printed nothing"
    )
    partial = info.value.partial
    assert [c.execution["no_answer"] for c in partial.layers[1].considered] == [
        "no code found in it", "printed nothing", "printed nothing",
    ]  # fmt: skip
    assert isinstance(info.value, moa.VerificationError)  # handled like a verify stage where nothing passed


async def test_only_the_named_agents_programs_run_and_agreement_with_the_chain_of_thought_settles_it(
    script: Any,
) -> None:
    server = script({"coder": fenced("print(15 * 3)"), "thinker": "15 x 3 = 45.\nAnswer: 45"})
    proposers = [{"model": "openai/coder", "name": "program"}, {"model": "openai/thinker", "name": "reasoning"}]
    verify = {"kind": "verify", "checks": [{"type": "agree"}], "keep": "first", "if_none_pass": "last"}
    result = await moa.run("Q", recipe(server, proposers, verify, only=["program"], unanswered="keep"), api_key="k")
    program, reasoning = result.layers[1].considered
    assert (program.text, program.answer, reasoning.execution) == ("45", "45", None)
    assert reasoning.text == "15 x 3 = 45.\nAnswer: 45"
    assert result.output == "45" and result.confidence == "verified"
    assert [c.agreement for c in result.layers[2].considered] == [2, 2]


async def test_a_failed_program_kept_for_escalation_neither_votes_nor_agrees_with_its_own_source(
    script: Any,
) -> None:
    # The program's source holds 45, but it raises: it must not count as an answer of 45.
    server = script({"coder": fenced("x = 45\nraise ValueError(x)"), "thinker": "Answer: 45", "strong": "Answer: 44"})
    proposers = [{"model": "openai/coder", "name": "program"}, {"model": "openai/thinker", "name": "reasoning"}]
    verify = {
        "kind": "verify", "checks": [{"type": "agree"}], "fallback": agents("openai/strong"),
        "keep": "first", "if_none_pass": "last",
    }  # fmt: skip
    result = await moa.run("Q", recipe(server, proposers, verify, only=["program"], unanswered="keep"), api_key="k")
    # execute passes the answered candidates first, then the unanswered one, marked
    assert [(c.model, c.agreement) for c in result.layers[2].considered] == [
        ("openai/thinker", 1), ("openai/coder", None), ("openai/strong", 1),
    ]  # fmt: skip
    assert result.output == "Answer: 44" and result.confidence == "unverified"


SECRET = "the-users-private-note-4471"

HOSTILE = {
    "every environment variable": "import os\nprint(dict(os.environ))",
    "the user's home": "import pathlib\nprint(pathlib.Path(HOME_FILE).read_text())",
    "a file outside its folder": "open(OUTSIDE, 'w').write('escaped')\nprint('wrote it')",
    "a network connection": "import socket\nsocket.create_connection(('127.0.0.1', PORT), 5)\nprint('connected')",
    "an infinite loop": "while True:\n    pass",
    "a fork bomb": "import os\nwhile True:\n    os.fork()",
    "a memory bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(2**24))",
    "100 MB of output": "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 1_000_000)",
    "sys.exit(0) before printing": "import sys\nsys.exit(0)\nprint(7)",
    "a non-UTF-8 byte stream": "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe 7 \\x80')",
}
#: How each misbehaviour must end (the limit hit, or why it gave no answer), where the isolation claims it.
EXPECTED: dict[str, tuple[str, ...]] = {
    "the user's home": ("No such file", "Permission denied"),
    "a file outside its folder": ("No such file", "Permission denied", "Read-only file system"),
    "a network connection": ("Network is unreachable", "Connection refused", "unreachable", "OSError"),
    "an infinite loop": ("wall_time", "cpu_time"),
    "a fork bomb": ("processes", "wall_time", "cpu_time", "memory"),
    "a memory bomb": ("memory",),
    "100 MB of output": ("output",),
    "sys.exit(0) before printing": ("printed nothing",),
}
#: What the isolation statement says when a protection is not in force on this machine (then it is not asserted).
NOT_IN_FORCE = {
    "the user's home": "files not isolated",
    "a file outside its folder": "files not isolated",
    "a network connection": "network not isolated",
    "a fork bomb": "process limit not enforced",
}


@pytest.mark.parametrize("what", list(HOSTILE))
async def test_a_misbehaving_program_is_contained_and_the_run_goes_on(
    what: str, script: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from moa._sandbox import LocalSandbox

    isolation = " ".join(await LocalSandbox().isolation())
    if what == "a fork bomb" and NOT_IN_FORCE[what] in isolation:
        pytest.skip(f"not contained on this machine, and the sandbox says so: {isolation}")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-do-not-leak-0123456789")
    home_file = Path.home() / f".moa-test-{tmp_path.name}"
    home_file.write_text(SECRET)
    outside = tmp_path / "escaped.txt"
    try:
        code = HOSTILE[what].replace("HOME_FILE", repr(str(home_file))).replace("OUTSIDE", repr(str(outside)))
        port: list[int] = []  # the program connects to the server that serves it

        def bad(messages: list[dict[str, Any]]) -> str:
            return fenced(code.replace("PORT", str(port[0])))

        server = script({"good": GOOD, "bad": bad})
        port.append(server.port)
        result = await moa.run("Q", recipe(server, agents("openai/good", "openai/bad")), api_key="k")
    finally:
        home_file.unlink()
    assert result.output == "12"  # the run went on with the other candidate
    bad = executions(result)[1]
    assert "sk-live-do-not-leak" not in json.dumps(result.model_dump())
    assert bad["isolation"]
    if what == "every environment variable":
        assert "OPENAI_API_KEY" not in bad["stdout"] and "PATH" in bad["stdout"]
    elif what == "a non-UTF-8 byte stream":
        assert bad["answer"] == "7"  # undecodable bytes are replaced, never an error
    elif what in NOT_IN_FORCE and NOT_IN_FORCE[what] in " ".join(bad["isolation"]):
        pass  # not isolated here, and the trace says so
    else:
        assert bad.get("answer") is None
        found = f"{bad.get('limit')} {bad['no_answer']}"
        assert any(reason in found for reason in EXPECTED[what]), found
        assert SECRET not in json.dumps(bad) and not outside.exists()


@pytest.mark.parametrize(
    ("text", "how", "code"),
    [
        ("```python\nprint(1)\n```", {}, "print(1)\n"),
        ("```py\nprint(1)\n```\n```\nprint(2)\n```", {}, "print(1)\n"),  # a marked block wins over an unmarked one
        ("```\nprint(2)\n```", {}, "print(2)\n"),
        ("```python\na = 1\n```\ntext\n```python\nprint(a)\n```", {}, "print(a)\n"),  # the last marked block
        ("Here:\n```python\nprint(3)", {}, "print(3)"),  # left open: cut off, or never closed
        ("```js\nconsole.log(1)\n```", {}, None),
        ("no code at all", {}, None),
        ("```python\n   \n```", {}, None),
        ("print(4)", {"code": "whole"}, "print(4)"),
        ("<code>print(5)</code>", {"code_pattern": r"<code>(.*?)</code>"}, "print(5)"),
        ("nothing", {"code_pattern": r"<code>(.*?)</code>"}, None),
    ],
)
def test_the_code_is_found_as_configured(text: str, how: dict[str, Any], code: str | None) -> None:
    assert code_of(ExecuteLayer(kind="execute", **how), text) == code


@pytest.mark.parametrize(
    ("answer", "stdout", "expected"),
    [
        ("last_number", "step 1: 40\nresult: 1,024.0\n", "1024"),
        ("last_number", "no numbers\n", None),
        ("last_line", "a\nParis  \n\n", "Paris"),
        ("stdout", "  a\nb  \n", "a\nb"),
        ("stdout", "\n \n", None),
    ],
)
def test_the_answer_is_read_from_the_output_as_configured(answer: str, stdout: str, expected: str | None) -> None:
    assert answer_of(ExecuteLayer(kind="execute", answer=answer), stdout) == expected


def test_a_bad_execute_stage_is_refused_naming_the_field() -> None:
    layers = [
        {"kind": "propose", "agents": agents("openai/p1")},
        {"kind": "execute", "limits": {"wall_s": 0}, "language": "ruby"},
    ]
    with pytest.raises(moa.RecipeError) as info:
        moa.load_recipe({"name": "r", "layers": layers})
    assert str(info.value) == (
        "invalid recipe <dict>:\n"
        "  layers[1].language: Input should be 'python' (got 'ruby')\n"
        "  layers[1].limits.wall_s: Input should be greater than 0 (got 0)"
    )


def test_the_plan_counts_no_call_for_running_programs() -> None:
    loaded = moa.load_recipe("pal")
    assert [plan.calls for plan in moa.plan(loaded, "Q")] == [5, 0, 0]
