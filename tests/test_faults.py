"""The fault suite: every fault class, in a proposer and in the final aggregator, through real litellm.

It also writes the README's fault table (between the fault-table markers): run
``MOA_UPDATE_FAULT_TABLE=1 python -m pytest tests/test_faults.py`` after a change of
behaviour; otherwise the test fails when the README's table is stale.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import agents, loopback_recipe

import moa
from moa.testing import LoopbackServer

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"
FAULTS = {
    "429": "429 + Retry-After",
    "500": "500",
    "503": "503",
    "hang": "hang past the timeout",
    "reset": "connection reset mid-body",
    "malformed": "non-JSON body",
    "empty": "empty `choices`",
    "stream_cut": "stream cut mid-way",
}
POSITIONS = {"proposer": "p1", "final aggregator": "agg"}


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        yield running


def recipe(server: LoopbackServer, quorum: int | None) -> dict[str, Any]:
    first: dict[str, Any] = {"kind": "propose", "agents": agents("openai/p0", "openai/p1", "openai/p2")}
    if quorum:
        first["min_success"] = quorum
    layers = [first, {"kind": "aggregate", "agents": agents("openai/agg")}]
    return loopback_recipe(server, layers, defaults={"timeout": 0.4}, retry={"max_attempts": 3})


async def outcome(server: LoopbackServer, fault: str, model: str, times: int, quorum: int | None) -> str:
    """Run once with the fault injected ``times`` times into ``model``; describe what happened."""
    server.clear()
    server.add_fault(fault, times=times, model=model, retry_after=0.05)
    tokens: list[str] = []
    try:
        result = await moa.run("Q", recipe(server, quorum), api_key="k", on_token=tokens.append)
    except moa.QuorumError as exc:
        cause = exc.failures[0]
        assert f"agent {cause.site.agent}" in str(exc) and f"model openai/{model}" in str(exc)  # type: ignore[union-attr]
        tries = f"{cause.attempts} attempt{'s' * (cause.attempts > 1)}"  # type: ignore[union-attr]
        return f"run fails: `QuorumError` (layer {exc.layer}, {type(cause).__name__}, {tries})"
    call = next(c for c in result.calls if c.model == f"openai/{model}")
    # A streamed answer that broke off restarts from scratch: the stream ends with the whole answer.
    assert result.output and "".join(tokens).endswith(result.output)
    sent = len(server.completions(model))
    if call.ok:
        return (
            f"retried, run succeeds ({call.attempts} attempts)" if call.attempts > 1 else "not affected (not streamed)"
        )
    assert call.error is not None
    tries = f"{call.attempts} attempt{'s' * (call.attempts > 1)}"
    return f"call fails ({call.error.type}, {tries}, {sent} sent); quorum holds, run succeeds"


async def table(server: LoopbackServer) -> list[list[str]]:
    rows = []
    for fault, label in FAULTS.items():
        for position, model in POSITIONS.items():
            once = await outcome(server, fault, model, 1, None)
            always_quorum = await outcome(server, fault, model, 99, 2) if position == "proposer" else "-"
            always = await outcome(server, fault, model, 99, None)
            rows.append([label, position, once, always_quorum, always])
    return rows


def render(rows: list[list[str]]) -> str:
    head = ["fault", "position", "once", "every attempt, quorum 2 of 3 holds", "every attempt, no slack"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


async def test_fault_matrix_matches_the_readme(server: LoopbackServer) -> None:
    rows = await table(server)
    by_key = {(r[0], r[1]): r for r in rows}
    # Transient faults are retried and the run succeeds (stream cuts only hit streamed calls).
    for fault in (
        "429 + Retry-After",
        "500",
        "503",
        "hang past the timeout",
        "connection reset mid-body",
        "non-JSON body",
    ):
        for position in POSITIONS:
            assert by_key[(fault, position)][2] == "retried, run succeeds (2 attempts)", (fault, position)
    assert by_key[("stream cut mid-way", "proposer")][2] == "not affected (not streamed)"
    assert by_key[("stream cut mid-way", "final aggregator")][2] == "retried, run succeeds (2 attempts)"
    # Permanent faults end the call at once; the quorum decides the run.
    assert by_key[("empty `choices`", "proposer")][3].startswith("call fails (BadResponseError, 1 attempt, 1 sent)")
    # Streamed, an empty body is indistinguishable from a cut stream: retried, then the run fails.
    assert by_key[("empty `choices`", "final aggregator")][2] == "retried, run succeeds (2 attempts)"
    assert by_key[("empty `choices`", "final aggregator")][4].startswith("run fails: `QuorumError` (layer 2")
    assert by_key[("500", "proposer")][4] == "run fails: `QuorumError` (layer 1, ProviderUnavailableError, 3 attempts)"

    generated = f"{START}\n{render(rows)}\n{END}"
    text = README.read_text()
    current = text[text.index(START) : text.index(END) + len(END)]
    if os.environ.get("MOA_UPDATE_FAULT_TABLE"):
        README.write_text(text.replace(current, generated))
    else:
        assert current == generated, "README fault table is stale: MOA_UPDATE_FAULT_TABLE=1 pytest tests/test_faults.py"
