"""What users see of stages: the live view, `moa recipes show`, plans, worst cases, reuse, and evaluations."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import agents, loopback_recipe
from rich.console import Console

import moa
from moa.cli import main
from moa.cli.live import LiveView
from moa.result import LayerResult

FIXTURES = Path(__file__).parent / "fixtures" / "evals"


def render(view: LiveView) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(view.__rich__())
    return console.file.getvalue()  # type: ignore[attr-defined]


def selection_recipe(server: Any) -> dict[str, Any]:
    return loopback_recipe(
        server,
        [
            {"kind": "propose", "agents": agents("openai/p1", "openai/p2", "openai/p3", "openai/p4")},
            {"kind": "vote", "extract": "number", "ties": "all"},
            {"kind": "rank", "judge": {"model": "openai/j"}, "top_k": 2},
            {"kind": "verify", "checks": [{"type": "regex", "pattern": "42"}], "keep": "first"},
        ],
    )


async def test_the_live_view_shows_votes_rank_order_and_verdicts(script: Any) -> None:
    def judge(messages: list[dict[str, Any]]) -> str:
        return "A" if "Response A:\nIt is 42" in messages[-1]["content"] else "B"

    server = script({"p1": "It is 41", "p2": "It is 42", "p3": "so 41", "p4": "42 it is", "j": judge})
    recipe = moa.load_recipe(selection_recipe(server))
    view = LiveView(recipe, Console(file=io.StringIO(), width=160, color_system=None), stream=False)
    result = await moa.run("Q", recipe, api_key="k", on_event=view.on_event)
    screen = render(view)
    assert "votes: '41' x2, '42' x2" in screen
    assert "rank: #2 (+2.00), #1 (-2.00); the best 2 go on" in screen  # one win in each order
    assert "Layer 3 · rank · 2 calls" in screen  # planned for 4 candidates (ties: all), made for the 2 it got
    assert "verdicts: 1 of 2 passed" in screen
    assert "done 2/2" in screen  # the judge's two verdicts share its row
    assert "calls 6/6" in screen and "failed 0" in screen and "cost unknown" in screen and "cost cost" not in screen
    assert result.output == "It is 42"
    finished = [e for e in view_events(result)]
    assert finished == ["vote", "rank", "verify"]


def view_events(result: moa.MoAResult) -> list[str]:
    return [layer.kind for layer in result.layers if layer.considered]


async def test_layer_finished_events_carry_the_candidates(script: Any) -> None:
    server = script({"p1": "It is 41", "p2": "It is 42", "p3": "so 41", "p4": "42 it is", "j": "A"})
    events: list[moa.Event] = []
    await moa.run("Q", selection_recipe(server), api_key="k", on_event=events.append)
    finished = [e for e in events if e.kind == "layer_finished"]
    assert [e.layer for e in finished] == [1, 2, 3, 4]
    assert all(e.result is not None for e in finished)
    assert [c.votes for c in finished[1].result.candidates] == [2, 2]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "lines"),
    [
        (
            "self-consistency",
            [
                "Layer 2 · vote · 0 calls",
                "votes over the 8 previous outputs: each answer is read as "
                "phrase; the most frequent wins (ties: the earliest)",
            ],
        ),
        (
            "blender",
            [
                "Layer 2 · rank · 20 calls",
                "compares every pair of the 5 previous outputs, both orders; the best 3 go on",
                "verdicts are one token at temperature 0",
                "previous layer's 3 outputs",
            ],
        ),
        (
            "debate",
            [
                "Layer 1 · debate · 6 calls",
                "round 1: each agent answers the conversation",
                "round 2: each agent's own conversation continues with the other 2 agents' latest answers",
            ],
        ),
        (
            "verify-escalate",
            [
                "Layer 2 · verify · at most 5 calls",
                "checks each of the 1 previous outputs (regex, llm)",
                "goes back to the model that wrote it with the failed checks, up to 1 time(s)",
                "then escalates to openai/gpt-4o, in turn",
                "if nothing passes: the run fails",
            ],
        ),
    ],
)
def test_recipes_show_explains_who_gets_which_prompt(name: str, lines: list[str], capsys: Any) -> None:
    assert main(["recipes", "show", name]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for line in lines:
        assert " ".join(line.split()) in out, line


def test_plans_name_every_agent_a_stage_calls() -> None:
    blender = moa.plan("blender")
    assert [(p.kind, p.calls, p.sees_previous) for p in blender] == [
        ("propose", 5, False), ("rank", 20, True), ("aggregate", 1, True)
    ]  # fmt: skip
    assert blender[1].agents == ["together_ai/meta-llama/Llama-3-70b-chat-hf"] and blender[1].template is None
    assert blender[2].template is not None and blender[2].template.endswith("aggregate.j2")
    assert moa.plan("verify-escalate")[1].agents == ["openai/gpt-4o-mini", "openai/gpt-4o"]


@pytest.mark.parametrize("name", ["self-consistency", "debate", "verify-escalate", "blender"])
async def test_every_call_of_a_built_in_stage_recipe_fits_its_reservation(name: str, script: Any) -> None:
    """The run reserves its worst case; any call the estimate missed would be refused (BudgetExceeded)."""

    def answer(messages: list[dict[str, Any]]) -> str:
        system = str(messages[0]["content"]) if messages[0]["role"] == "system" else ""
        return "no" if system.startswith("You check") else "B" if system.startswith("You compare") else "Thinking."

    server = script({}, responder=None) if False else script({m: answer for m in MODELS})
    settings = moa.CallParams(api_base=server.base_url)
    worst = sum(p.worst_case_usd or 0 for p in moa.plan(name, "What is 6 x 7?", settings=settings))
    assert worst > 0
    try:
        result = await moa.run("What is 6 x 7?", name, api_key="k", settings=settings, max_cost_usd=worst)
    except moa.VerificationError as exc:  # verify-escalate: nothing passes on this server, every path taken
        result = exc.partial
    assert result.cost_usd is not None and result.cost_usd <= worst
    assert len(result.calls) == moa.load_recipe(name).calls_per_query


MODELS = [
    "gpt-4o-mini", "gpt-4o", "Qwen1.5-110B-Chat", "Qwen1.5-72B-Chat", "WizardLM-2-8x22B", "Llama-3-70b-chat-hf",
    "Mixtral-8x22B-Instruct-v0.1",
]  # fmt: skip


async def test_reusing_a_trace_written_before_stages_kept_candidates(script: Any) -> None:
    server = script({"p1": "Answer 7", "p2": "Answer 7", "p3": "Answer 9"})
    propose = {"kind": "propose", "agents": agents("openai/p1", "openai/p2", "openai/p3")}
    first = await moa.run("Q", loopback_recipe(server, [propose, {"kind": "vote"}]), api_key="k")
    old = LayerResult.model_validate(
        {k: v for k, v in first.layers[0].model_dump().items() if k not in ("candidates", "considered")}
    )
    assert old.candidates == [] and [c.text for c in old.passed_on()] == ["Answer 7", "Answer 7", "Answer 9"]
    server.clear()
    again = await moa.run("Q", loopback_recipe(server, [propose, {"kind": "vote", "extract": "number"}]),
                          api_key="k", reuse=[old])  # fmt: skip
    assert server.completions() == [] and again.output == "Answer 7" and again.layers[1].candidates[0].votes == 2


def test_an_old_self_moa_seq_trace_passes_on_its_last_step() -> None:
    step = {"layer": 2, "agent": 0, "name": "a", "model": "m", "text": "", "usage": {}}
    old = LayerResult.model_validate(
        {"index": 2, "kind": "aggregate_seq", "outputs": [{**step, "step": 1, "text": "draft"},
                                                           {**step, "step": 2, "text": "final"}]}
    )  # fmt: skip
    assert [c.text for c in old.passed_on()] == ["final"]


def test_qa_eval_runs_a_stage_recipe_unchanged(script: Any, tmp_path: Path) -> None:
    answers = {"spider": "Eight legs.", "France": "Paris, of course.", "planet": "Jupiter.", "1,000": "It is 1,024."}

    def proposer(messages: list[dict[str, Any]]) -> str:
        return next((a for needle, a in answers.items() if needle in messages[-1]["content"]), "no idea")

    server = script({"p1": proposer, "p2": proposer, "p3": "I am not sure."})
    layers = [
        {"kind": "propose", "agents": agents("openai/p1", "openai/p2", "openai/p3")},
        {"kind": "vote"},
        {"kind": "verify", "checks": [{"type": "regex", "pattern": "sure"}], "fallback": agents("openai/p3"),
         "if_none_pass": "last"},
    ]  # fmt: skip
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump({**loopback_recipe(server, layers), "name": "stages"}))
    out = tmp_path / "qa"
    assert main(["eval", "qa", "--recipe", str(path), "--data", str(FIXTURES / "qa.jsonl"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == 4 and summary["recipe_calls_per_query"] == 4
    assert summary["calls_per_item"] == 4  # 3 proposers, then the fallback: the vote's winner never passes
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert all(item["traces"][0]["layers"][2]["considered"] for item in items)


def test_mt_bench_and_alpacaeval_run_a_debate_recipe_unchanged(script: Any, tmp_path: Path) -> None:
    def debater(messages: list[dict[str, Any]]) -> str:
        return f"take {sum(m['role'] == 'assistant' for m in messages)}"

    server = script({"d": debater, "gpt-4o": "Solid answer. Rating: [[7]]"})
    layers = [{"kind": "debate", "agents": [{"model": "openai/d", "n": 2}]}, {"kind": "vote", "extract": "text"}]
    path = tmp_path / "debate.yaml"
    path.write_text(yaml.safe_dump({**loopback_recipe(server, layers), "name": "debate-lb"}))
    out = tmp_path / "mt"
    args = ["eval", "mt-bench", "--recipe", str(path), "--questions", str(FIXTURES / "mt_bench_questions.jsonl"),
            "--out", str(out), "--judge", "openai/gpt-4o", "--judge-prompts",
            str(FIXTURES / "mt_bench_judge_prompts.jsonl"), "--judge-set", f"api_base={server.base_url}"]  # fmt: skip
    assert main(args) == 0
    answers = [json.loads(line) for line in next(out.glob("*.jsonl")).read_text().splitlines() if "choices" in line]
    assert len(answers) == 3 and all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    # Turn 2: each debater's conversation carries turn 1's answer, then its own round-1 answer of turn 2.
    turn2 = [r for r in server.completions("d") if r.messages[0]["content"] == "Write a two-line poem about rain."]
    assert len(turn2) == 2 * 2 * 2  # two debaters, two rounds, two turns
    first_answer = answers[0]["choices"][0]["turns"][0]
    assert all(r.messages[1] == {"role": "assistant", "content": first_answer} for r in turn2[4:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["score"] == 7.0 and summary["recipe_calls_per_query"] == 4
    alpaca = tmp_path / "alpaca"
    assert main(["eval", "alpacaeval", "--recipe", str(path), "--data", str(FIXTURES / "alpaca_eval_set.json"),
                 "--out", str(alpaca), "--limit", "2"]) == 0  # fmt: skip
    outputs = json.loads((alpaca / "model_outputs.json").read_text())
    assert [o["output"] for o in outputs] == ["take 1", "take 1"] and outputs[0]["generator"] == "debate-lb"
