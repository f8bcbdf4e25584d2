"""One rule for cost: --dry-run, moa.plan and the budget's reservation agree; events carry layer, step and site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import agents, loopback_recipe

import moa
from moa.cli import main
from moa.testing import FakeProvider, LoopbackServer

QUESTIONS = ["How many legs does a spider have?", "What is the capital of France?", "Name the largest planet.",
             "What is 1,000 plus 24? Think step by step and show your work."]  # fmt: skip


def priced_recipe(server: LoopbackServer, path: Path) -> Path:
    # Models litellm prices; the loopback server answers with a few words, so real costs stay tiny.
    layers = [{"kind": "propose", "agents": agents("openai/gpt-4o-mini", "openai/gpt-4o-mini", "openai/gpt-4o")},
              {"kind": "aggregate", "agents": [{"model": "openai/gpt-4o", "max_tokens": 500}]}]  # fmt: skip
    data = loopback_recipe(server, layers, defaults={"api_base": server.base_url, "max_tokens": 300})
    path.write_text(yaml.safe_dump(data))
    return path


def test_dry_run_plan_and_budget_reservation_agree_and_that_much_budget_refuses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackServer() as server:
        path = priced_recipe(server, tmp_path / "r.yaml")
        data = tmp_path / "qa.jsonl"
        data.write_text("".join(json.dumps({"id": i, "prompt": q, "answers": ["x"]}) + "\n"
                                for i, q in enumerate(QUESTIONS)))  # fmt: skip
        assert main(["eval", "qa", "--recipe", str(path), "--data", str(data), "--out", str(tmp_path / "d"),
                     "--dry-run"]) == 0  # fmt: skip
        dry_run = float(capsys.readouterr().out.split("generation cost: $")[1].split()[0])

        planned = []
        for question in QUESTIONS:
            layers = moa.plan(path, question)
            assert all(layer.worst_case_usd is not None and layer.worst_case_usd > 0 for layer in layers)
            planned.append(sum(layer.worst_case_usd or 0.0 for layer in layers))
        assert sum(planned) == pytest.approx(dry_run, abs=1e-6)  # the dry run prints 6 decimals

        for question, worst in zip(QUESTIONS, planned, strict=True):
            budget = moa.Budget(max_cost_usd=1.0)
            reserved: list[float] = []

            def on_event(event: moa.Event, budget: moa.Budget = budget, reserved: list[float] = reserved) -> None:
                if event.kind == "layer_started" and event.layer == 1:
                    reserved.append(budget.reserved_usd)  # the run's reservation, before its first call

            moa.run_sync(question, path, budget=budget, on_event=on_event)
            assert reserved == [pytest.approx(worst, rel=1e-12)]

        # --max-cost exactly the worst case of all items: every item runs, no call is ever refused.
        for concurrency in ("1", "8"):
            out = tmp_path / f"run-{concurrency}"
            assert main(["eval", "qa", "--recipe", str(path), "--data", str(data), "--out", str(out),
                         "--max-cost", repr(sum(planned)), "--concurrency", concurrency]) == 0  # fmt: skip
            summary = json.loads((out / "summary.json").read_text())
            assert summary["finished"] == 4 and summary["failed"] == 0 and summary["not_started"] == 0
            records = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
            calls = [c for r in records for t in r["traces"] for layer in t["layers"] for c in layer["outputs"]]
            assert len(calls) == 16 and not [c for c in calls if c["error"]]


def test_every_layer_kind_reports_layer_step_and_site_through_retries_exhausted() -> None:
    recipe = {
        "name": "kinds",
        "retry": {"max_attempts": 3, "initial_backoff_s": 0, "max_backoff_s": 0},
        "layers": [
            {"kind": "propose", "agents": agents("openai/p-ok", "openai/p-down"), "min_success": 1},
            {"kind": "aggregate", "agents": agents("openai/a1", "openai/a2", "openai/a3", "openai/a-down"),
             "min_success": 3},
            {"kind": "aggregate_seq", "agents": agents("openai/seq"), "window": 2},
        ],
    }  # fmt: skip

    def respond(request: moa.Request, index: int) -> str | moa.ProviderError:
        down = request.model.endswith("-down")
        second_step = request.model == "openai/seq" and "synthesis" in (request.messages[0]["content"])
        if down or second_step:
            return moa.ProviderUnavailableError("503 from the test", model=request.model, status_code=503)
        return "synthesis" if request.model == "openai/seq" else f"{request.model} says hi"

    events: list[moa.Event] = []
    with pytest.raises(moa.QuorumError) as info:
        moa.run_sync("Q", recipe, provider=FakeProvider(respond), on_event=events.append)
    assert info.value.layer == 3
    calls = [e for e in events if e.kind.startswith("call_")]
    assert calls and all(e.site is not None and e.layer == e.site.layer for e in calls)
    by_model: dict[str, list[tuple[str, int, int]]] = {}
    for event in calls:
        assert event.site is not None
        by_model.setdefault(event.site.model, []).append((event.kind, event.layer, event.step))
    retried = ["call_started", "call_retried"] * 2 + ["call_started", "call_failed"]
    assert [kind for kind, _, _ in by_model["openai/p-down"]] == retried
    assert {(layer, step) for _, layer, step in by_model["openai/p-down"]} == {(1, 0)}
    assert {(layer, step) for _, layer, step in by_model["openai/a-down"]} == {(2, 0)}
    seq = by_model["openai/seq"]
    assert [(kind, step) for kind, _, step in seq] == [("call_started", 1), ("call_finished", 1),
                                                       *[(kind, 2) for kind in retried]]  # fmt: skip
    assert {layer for _, layer, _ in seq} == {3}
    failed = [e for e in calls if e.kind == "call_failed"]
    assert all(e.output is not None and e.output.step == e.step and e.output.layer == e.layer for e in failed)
    layer_events = [e for e in events if e.kind.startswith("layer_")]
    assert [(e.kind, e.layer, e.step, e.site) for e in layer_events] == [
        ("layer_started", 1, 0, None), ("layer_finished", 1, 0, None), ("layer_started", 2, 0, None),
        ("layer_finished", 2, 0, None), ("layer_started", 3, 0, None),
    ]  # fmt: skip
