"""The hostile review of stages: each finding as a test that failed before its fix (loopback, real litellm)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
from conftest import agents, loopback_recipe
from rich.console import Console

import moa
from moa.cli import main
from moa.cli.live import LiveView

ANSWER_LINE = {"type": "regex", "pattern": r"(?m)^Answer: \S"}
KEY = "sk-checker-1234567890abcdef"


def leaky(answer: str, question: str) -> tuple[bool, str]:
    return False, f"could not check with key {os.environ['CHECKER_API_KEY']}"


async def leaky_async(answer: str, question: str) -> bool:
    return "ok" in answer


def says_no(answer: str, question: str) -> str:
    return "no"


def three(answer: str, question: str) -> tuple[bool, str, int]:
    return True, "fine", 3


def nothing(answer: str, question: str) -> None:
    return None


def verify_recipe(server: Any, verify: dict[str, Any], proposers: list[Any] | None = None, **fields: Any) -> Any:
    layers = [{"kind": "propose", "agents": proposers or agents("openai/p1")}, {"kind": "verify", **verify}]
    return loopback_recipe(server, layers, **fields)


@pytest.mark.parametrize(
    ("layer", "field"),
    [
        ({"kind": "rank", "judge": {"model": "openai/j", "n": 2}}, "judge"),
        ({"kind": "vote", "extract": "llm", "extractor": {"model": "openai/x", "n": 2}}, "extractor"),
        ({"kind": "verify", "checks": [{"type": "llm", "judge": {"model": "openai/j", "n": 2}, "criterion": "c"}]},
         "checks[0].judge"),
        ({"kind": "verify", "checks": [ANSWER_LINE], "repair_with": {"model": "openai/r", "n": 3}}, "repair_with"),
    ],
)  # fmt: skip
def test_an_agent_asked_once_each_time_must_have_n_1(layer: dict[str, Any], field: str) -> None:
    with pytest.raises(moa.RecipeError, match=rf"`{re.escape(field)}` is asked once each time: its `n` must be 1"):
        moa.load_recipe({"name": "n", "layers": [{"kind": "propose", "agents": [{"model": "openai/a"}]}, layer]})


async def test_a_repair_chain_never_outspends_the_reservation(script: Any) -> None:
    """Each repair quotes the previous repair's answer (up to its max_tokens) and the repairer's system."""
    long_answer = " ".join(["word"] * 3000)
    server = script({"gpt-4o-mini": long_answer})
    verify = {
        "checks": [{"type": "regex", "pattern": "x" * 900 + "|never"}],  # a long pattern, a long failure message
        "repairs": 2,
        "repair_with": {"model": "openai/gpt-4o-mini", "max_tokens": 3000, "system": "Fix it. " * 2000},
    }
    proposer = [{"model": "openai/gpt-4o-mini", "max_tokens": 1}]
    spec = verify_recipe(server, {**verify, "if_none_pass": "last"}, proposer)
    worst = sum(p.worst_case_usd or 0 for p in moa.plan(spec, "Q"))
    result = await moa.run("Q", spec, api_key="k", max_cost_usd=worst)  # any call the estimate missed: refused
    assert len(server.completions()) == 3 and result.cost_usd is not None and result.cost_usd <= worst


def test_text_that_tokenizes_finely_is_not_underestimated() -> None:
    from moa._call.cost import prompt_tokens

    assert prompt_tokens([{"role": "user", "content": "w " * 20_000}]) >= 20_000
    assert prompt_tokens([{"role": "user", "content": "1 2 3 " * 5_000}]) >= 15_000
    assert prompt_tokens([{"role": "user", "content": "日本" * 1_000}]) >= 2_000


async def test_a_python_checks_message_is_masked_in_the_trace_the_error_and_the_repair_prompt(
    script: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHECKER_API_KEY", KEY)
    server = script({"p1": "an answer"})
    verify = {"checks": [{"type": "python", "function": "test_stage_review:leaky"}], "repairs": 1}
    with pytest.raises(moa.VerificationError) as info:
        await moa.run("Q", verify_recipe(server, verify), api_key="k")
    assert KEY not in str(info.value) and KEY not in info.value.partial.model_dump_json()
    assert KEY not in str(info.value.failures)
    assert all(KEY not in str(r.messages) for r in server.completions())
    assert "could not check with key " in str(info.value)


async def test_python_check_return_values_are_read_strictly(script: Any) -> None:
    server = script({"p1": "ok then"})
    for function, passed, words in [
        ("leaky_async", True, ""),
        ("says_no", False, "returned 'no': expected a bool or (bool, message)"),
        ("three", False, "returned (True, 'fine', 3): expected a bool or (bool, message)"),
        ("nothing", False, "returned None: expected a bool or (bool, message)"),
    ]:
        verify = {"checks": [{"type": "python", "function": f"test_stage_review:{function}"}], "if_none_pass": "last"}
        result = await moa.run("Q", verify_recipe(server, verify), api_key="k")
        (found,) = result.layers[1].considered[0].verdicts
        assert (found.passed, words in found.message) == (passed, True), function


async def test_a_repair_keeps_the_writers_system_prompt(script: Any) -> None:
    server = script({"p1": "eight"})
    proposer = [{"model": "openai/p1", "system": "End with 'Answer: <n>'.", "temperature": 0.3}]
    verify = {"checks": [ANSWER_LINE], "repairs": 1, "if_none_pass": "last"}
    await moa.run("Q", verify_recipe(server, verify, proposer), api_key="k")
    _, repair = server.completions("p1")
    assert repair.messages[0] == {"role": "system", "content": "End with 'Answer: <n>'."}
    assert repair.body is not None and repair.body["temperature"] == 0.3


async def test_a_reused_answer_from_another_model_is_not_repaired_by_the_wrong_one(script: Any) -> None:
    server = script({"a1": "no line", "b1": "Answer: 1"})
    first = await moa.run("Q", loopback_recipe(server, [{"kind": "propose", "agents": agents("openai/a1")}]),
                          api_key="k")  # fmt: skip
    server.clear()
    verify = {"checks": [ANSWER_LINE], "repairs": 1}
    with pytest.raises(moa.VerificationError) as info:
        await moa.run("Q", verify_recipe(server, verify, agents("openai/b1")), api_key="k", reuse=first.layers[:1])
    assert server.completions() == []
    assert "repairs skipped: the call that wrote the answer of layer 1, openai/a1 is not in this run" in str(info.value)


async def test_a_second_verify_sends_a_repaired_answer_back_to_its_writer(script: Any) -> None:
    answers = iter(["first try", "Answer: 2 (short)", "Answer: 2 and long enough"])

    def writer(messages: list[dict[str, Any]]) -> str:
        return next(answers)

    server = script({"p1": writer})
    layers = [
        {"kind": "propose", "agents": agents("openai/p1")},
        {"kind": "verify", "checks": [ANSWER_LINE], "repairs": 1},
        {"kind": "verify", "checks": [{"type": "regex", "pattern": "long enough"}], "repairs": 1},
    ]
    result = await moa.run("Q", loopback_recipe(server, layers), api_key="k")
    assert result.output == "Answer: 2 and long enough" and len(server.completions("p1")) == 3
    assert [o.name for o in result.layers[2].outputs] == ["openai/p1 (repair) (repair)"]


async def test_the_partial_trace_of_a_verification_error_keeps_every_verdict(script: Any) -> None:
    server = script({"p1": "no", "p2": "nope"})
    with pytest.raises(moa.VerificationError) as info:
        await moa.run("Q", verify_recipe(server, {"checks": [ANSWER_LINE]}, agents("openai/p1", "openai/p2")),
                      api_key="k")  # fmt: skip
    considered = info.value.partial.layers[1].considered
    assert [c.text for c in considered] == ["no", "nope"]
    assert all(v.check == "regex" and not v.passed and v.layer == 2 for c in considered for v in c.verdicts)


async def test_a_judge_that_cannot_be_asked_triggers_no_repair_and_no_escalation(script: Any) -> None:
    server = script({"p1": "Answer: 3"})
    server.add_fault("401", times=10, model="j")
    verify = {
        "checks": [{"type": "llm", "judge": {"model": "openai/j"}, "criterion": "right"}],
        "repairs": 2,
        "fallback": agents("openai/strong"),
    }
    with pytest.raises(moa.VerificationError, match="the judge could not be asked"):
        await moa.run("Q", verify_recipe(server, verify), api_key="k")
    assert len(server.completions("p1")) == 1 and server.completions("strong") == []


async def test_the_summary_counts_every_candidate_that_passed_with_keep_first(script: Any) -> None:
    server = script({"p1": "Answer: 1", "p2": "Answer: 2", "p3": "Answer: 3"})
    recipe = moa.load_recipe(
        verify_recipe(server, {"checks": [ANSWER_LINE], "keep": "first"}, agents("openai/p1", "openai/p2", "openai/p3"))
    )
    view = LiveView(recipe, Console(file=io.StringIO(), width=160, color_system=None), stream=False)
    await moa.run("Q", recipe, api_key="k", on_event=view.on_event)
    assert view.layers[1].summary == "verdicts: 3 of 3 passed"


def test_remote_references_in_a_json_schema_are_refused_when_the_recipe_loads() -> None:
    schema = {"$ref": "http://127.0.0.1:9/schema.json"}
    with pytest.raises(moa.RecipeError, match="only local references"):
        moa.load_recipe({"name": "j", "layers": [{"kind": "propose", "agents": [{"model": "openai/a"}]},
                                                 {"kind": "verify", "checks": [{"type": "json_schema",
                                                                                "json_schema": schema}]}]})  # fmt: skip


async def test_a_local_reference_in_a_json_schema_works(script: Any) -> None:
    server = script({"p1": '{"n": 3}'})
    schema = {"$defs": {"n": {"type": "integer"}}, "type": "object", "properties": {"n": {"$ref": "#/$defs/n"}}}
    result = await moa.run("Q", verify_recipe(server, {"checks": [{"type": "json_schema", "json_schema": schema}]}),
                           api_key="k")  # fmt: skip
    assert result.output == '{"n": 3}'


async def test_a_lone_debater_stops_debating(script: Any) -> None:
    server = script({"d1": "one"})
    server.add_fault("400", times=1, model="d2")
    layers = [{"kind": "debate", "agents": agents("openai/d1", "openai/d2"), "min_success": 1}, {"kind": "vote"}]
    result = await moa.run("Q", loopback_recipe(server, layers), api_key="k")
    assert len(server.completions("d1")) == 1 and result.output == "one"


async def test_a_debate_round_that_loses_its_quorum_is_named(script: Any) -> None:
    server = script({})
    server.add_fault("400", times=1, model="d2")
    layers = [{"kind": "debate", "agents": agents("openai/d1", "openai/d2", "openai/d3")}, {"kind": "vote"}]
    with pytest.raises(moa.QuorumError, match=r"layer 1 \(debate round 1\) failed: "):
        await moa.run("Q", loopback_recipe(server, layers), api_key="k")


class BrokenLayer(moa.Layer):
    kind: Literal["broken"]
    empty: bool = False


class Broken(moa.Stage):
    async def run(self, ctx: moa.StageContext, inputs: list[moa.Candidate]) -> moa.Outcome:
        assert isinstance(ctx.layer, BrokenLayer)
        if ctx.layer.empty:
            return moa.Outcome([])
        raise ValueError("my stage has a bug")


moa.register_stage(BrokenLayer, Broken(), replace=True)


async def test_a_stage_that_breaks_its_contract_is_a_stage_error_that_keeps_the_paid_calls(script: Any) -> None:
    server = script({})
    cases = [({}, "the stage raised ValueError: my stage has a bug"), ({"empty": True}, "passed on no candidate")]
    for fields, words in cases:
        recipe = loopback_recipe(
            server, [{"kind": "propose", "agents": agents("openai/p1")}, {"kind": "broken", **fields}]
        )
        with pytest.raises(moa.StageError, match=words) as info:
            await moa.run("Q", recipe, api_key="k")
        assert isinstance(info.value, moa.RunError) and "layer 2 (broken)" in str(info.value)
        assert info.value.partial.layers[0].outputs[0].ok  # the proposer's paid answer is kept


def test_registering_a_kind_checks_its_arguments_first() -> None:
    with pytest.raises(moa.ConfigError, match=r"a stage config must be a subclass of moa\.Layer"):
        moa.register_stage(dict, Broken())  # type: ignore[arg-type]
    from moa.recipe import VoteLayer

    with pytest.raises(moa.ConfigError, match="a stage kind named 'vote' is already registered"):
        moa.register_stage(VoteLayer, Broken())


def test_recipes_list_imports_no_module_a_check_names(tmp_path: Path) -> None:
    (tmp_path / "sideeffect.py").write_text("open(__file__ + '.imported', 'w').close()\ndef f(a, q): return True\n")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "r.yaml").write_text(
        "name: r\nlayers:\n  - {kind: propose, agents: [{model: openai/a}]}\n"
        "  - {kind: verify, checks: [{type: python, function: 'sideeffect:f'}]}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "moa", "recipes", "list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0 and "r " in done.stdout
    assert not (tmp_path / "sideeffect.py.imported").exists()


def test_stages_is_another_name_for_layers_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    schema = moa.Recipe.model_json_schema()
    assert schema["properties"]["stages"]["description"] == "Another name for `layers`."
    from moa._overrides import apply_sets

    recipe, _ = apply_sets("verify-escalate", ["stages[1].repairs=0"])
    assert recipe.layers[1].repairs == 0  # type: ignore[union-attr]
    bad = {"name": "v", "layers": [{"kind": "propose", "agents": [{"model": "openai/a"}]},
                                   {"kind": "vote", "extract": "regex", "pattern": "("}]}  # fmt: skip
    with pytest.raises(moa.RecipeError) as info:
        moa.load_recipe(bad)
    assert info.value.problems[0][0] == "layers[1].pattern"


def test_live_view_plans_every_debate_round_and_names_each_sample() -> None:
    recipe = moa.load_recipe(
        {"name": "d", "layers": [{"kind": "debate", "agents": [{"model": "openai/d", "n": 3}]}, {"kind": "vote"}]}
    )
    view = LiveView(recipe, Console(file=io.StringIO(), width=160, color_system=None), stream=False)
    labels = [row.label for row in view.layers[0].rows.values()]
    assert labels == [f"openai/d #{s} round {r}" for s in (1, 2, 3) for r in (1, 2)]
    screen = io.StringIO()
    Console(file=screen, width=160, color_system=None).print(view.totals())
    assert "calls 0/6" in screen.getvalue()


def test_dry_run_says_at_most_for_calls_that_may_not_happen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = Path(__file__).parent / "fixtures" / "evals" / "qa.jsonl"
    assert main(["eval", "qa", "--recipe", "verify-escalate", "--data", str(data), "--out", str(tmp_path / "o"),
                 "--dry-run"]) == 0  # fmt: skip
    assert "x at most 6 calls = at most 24 calls" in capsys.readouterr().out
