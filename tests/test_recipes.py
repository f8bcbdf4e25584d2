"""Recipes: loading from every source, round-trips, built-ins, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import moa
from moa import RecipeError

PAPER_PROPOSERS = [
    "together_ai/Qwen/Qwen1.5-110B-Chat",
    "together_ai/Qwen/Qwen1.5-72B-Chat",
    "together_ai/microsoft/WizardLM-2-8x22B",
    "together_ai/meta-llama/Llama-3-70b-chat-hf",
    "together_ai/mistralai/Mixtral-8x22B-Instruct-v0.1",
    "together_ai/databricks/dbrx-instruct",
]

MINIMAL = """
name: tiny
layers:
  - kind: propose
    agents: [{model: openai/a}, {model: openai/b}]
  - kind: aggregate
    agents: [{model: openai/c}]
"""


def test_builtin_names() -> None:
    assert moa.builtin_recipes() == [
        "blender", "cascade", "debate", "local", "local-blender", "local-cascade", "local-debate",
        "local-orchestrator", "local-pal", "local-pal-cot-agree", "local-self-consistency", "local-verify-escalate",
        "moa", "moa-gpt4o", "moa-lite", "orchestrator", "pal", "pal-cot-agree", "route", "self-consistency",
        "self-moa", "self-moa-seq", "verify-escalate",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "calls", "per_layer"),
    [
        ("moa", 13, [6, 6, 1]),
        ("moa-gpt4o", 13, [6, 6, 1]),
        ("moa-lite", 7, [6, 1]),
        ("self-moa", 7, [6, 1]),
        ("self-moa-seq", 9, [6, 3]),
        ("local", 4, [3, 1]),
        ("self-consistency", 8, [8, 0]),
        ("blender", 26, [5, 20, 1]),
        ("debate", 6, [6, 0]),
        ("verify-escalate", 6, [1, 5]),  # at most: 3 verdicts, 1 repair, 1 escalation
        ("local-self-consistency", 5, [5, 0]),
        ("local-blender", 10, [3, 6, 1]),
        ("local-debate", 6, [6, 0]),
        ("local-verify-escalate", 3, [1, 2]),
        ("cascade", 2, [2]),  # at most: gpt-4o-mini, then gpt-4o
        ("local-cascade", 2, [2]),
        ("route", 2, [2]),  # the classifier and one route
    ],
)
def test_builtin_recipes_plan_paper_counts(name: str, calls: int, per_layer: list[int]) -> None:
    recipe = moa.load_recipe(name)
    assert recipe.name == name
    assert recipe.calls_per_query == calls
    assert [layer.calls for layer in moa.plan(recipe)] == per_layer


def test_paper_recipes_use_the_papers_models_and_sampling() -> None:
    full = moa.load_recipe("moa")
    assert [a.model for a in full.layers[0].agents] == PAPER_PROPOSERS
    assert [a.model for a in full.layers[1].agents] == PAPER_PROPOSERS
    assert [a.model for a in full.layers[2].agents] == ["together_ai/Qwen/Qwen1.5-110B-Chat"]
    assert (full.defaults.temperature, full.defaults.max_tokens) == (0.7, 2048)
    lite = moa.load_recipe("moa-lite")
    assert [a.model for a in lite.layers[-1].agents] == ["together_ai/Qwen/Qwen1.5-72B-Chat"]
    gpt = moa.load_recipe("moa-gpt4o")
    assert [a.model for a in gpt.layers[-1].agents] == ["openai/gpt-4o"]
    assert [a.model for a in gpt.layers[1].agents] == PAPER_PROPOSERS
    self_moa = moa.load_recipe("self-moa")
    assert self_moa.layers[0].agents[0].n == 6 and self_moa.layers[0].agents[0].temperature == 0.7
    seq = moa.load_recipe("self-moa-seq")
    assert seq.layers[1].kind == "aggregate_seq" and seq.layers[1].window == 3


@pytest.mark.parametrize("name", moa.builtin_recipes())
def test_model_dump_round_trips(name: str) -> None:
    recipe = moa.load_recipe(name)
    assert moa.load_recipe(recipe.model_dump()) == recipe
    assert moa.load_recipe(recipe.model_dump(mode="json")) == recipe


def test_self_moa_dump_keeps_the_shorthand() -> None:
    dumped = moa.load_recipe("self-moa").model_dump()
    assert "layers" not in dumped and dumped["self_moa"]["samples"] == 6


def test_every_source_kind_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(MINIMAL)
    from_text = moa.load_recipe(MINIMAL)
    assert moa.load_recipe(path) == from_text
    assert moa.load_recipe(str(path)) == from_text
    assert moa.load_recipe(from_text.model_dump()) == from_text
    assert moa.load_recipe(from_text) is from_text
    monkeypatch.chdir(tmp_path)
    assert moa.load_recipe("tiny.yaml") == from_text


def test_template_path_is_relative_to_the_recipe_file(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "mine.j2").write_text("Use these:\n{% for r in responses %}- {{ r }}\n{% endfor %}")
    text = MINIMAL.replace("agents: [{model: openai/c}]", "agents: [{model: openai/c}]\n    template: prompts/mine.j2")
    (tmp_path / "r.yaml").write_text(text)
    recipe = moa.load_recipe(tmp_path / "r.yaml")
    assert recipe.layers[1].template == str((tmp_path / "prompts" / "mine.j2").resolve())
    assert recipe.layers[1].compiled_template.render(responses=["x"], layer=2) == "Use these:\n- x"
    assert moa.load_recipe(recipe.model_dump()) == recipe


# ------------------------------------------------------------------ bad input


def error_of(source: object) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        moa.load_recipe(source)  # type: ignore[arg-type]
    return info.value


def test_malformed_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nlayers:\n  - kind: propose\n    agents: [model: a\n")
    err = error_of(path)
    assert str(path) in str(err)
    assert "malformed YAML" in str(err) and "line" in str(err)


def test_missing_file_and_unknown_name() -> None:
    assert "file not found" in str(error_of("nope/missing.yaml"))
    err = str(error_of("moa-heavy"))
    assert "no built-in recipe or file named 'moa-heavy'" in err and "moa-lite" in err


def test_unknown_key_names_its_path() -> None:
    err = error_of(MINIMAL.replace("{model: openai/b}", "{model: openai/b, temprature: 0.3}"))
    assert err.problems[0][0] == "layers[0].agents[1].temprature"
    assert "unknown key" in str(err)


def test_wrong_type_names_path_and_value() -> None:
    err = error_of(MINIMAL.replace("{model: openai/b}", "{model: openai/b, n: many}"))
    assert err.problems[0][0] == "layers[0].agents[1].n"
    assert "'many'" in str(err)


def test_missing_model_names_its_path() -> None:
    err = error_of(MINIMAL.replace("agents: [{model: openai/c}]", "agents: [{name: judge}]"))
    assert ("layers[1].agents[0].model", "required field is missing") in err.problems


def test_layer_without_agents() -> None:
    err = error_of(MINIMAL.replace("agents: [{model: openai/c}]", "agents: []"))
    assert err.problems[0][0] == "layers[1]" and "at least one agent" in str(err)


def test_min_success_larger_than_layer() -> None:
    err = error_of(MINIMAL.replace("  - kind: propose\n", "  - kind: propose\n    min_success: 3\n"))
    assert err.problems[0][0] == "layers[0]"
    assert "min_success is 3 but the layer makes only 2 calls" in str(err)


def test_unknown_template_variable_fails_at_load(tmp_path: Path) -> None:
    (tmp_path / "bad.j2").write_text("{{ responses }} {{ reponses_count }}")
    text = MINIMAL.replace(
        "agents: [{model: openai/c}]", f"agents: [{{model: openai/c}}]\n    template: {tmp_path}/bad.j2"
    )
    err = error_of(text)
    assert err.problems[0][0] == "layers[1].template"
    assert "unknown variable(s) reponses_count" in str(err)


def test_missing_template_file_and_builtin(tmp_path: Path) -> None:
    text = MINIMAL.replace("agents: [{model: openai/c}]", "agents: [{model: openai/c}]\n    template: nothere.j2")
    assert "does not exist" in str(error_of(text))
    text = MINIMAL.replace("agents: [{model: openai/c}]", "agents: [{model: openai/c}]\n    template: agregate")
    assert "no built-in template named 'agregate'" in str(error_of(text))


def test_literal_api_key_is_refused_without_echoing_it() -> None:
    text = MINIMAL.replace("name: tiny", "name: tiny\ndefaults:\n  extra: {api_key: sk-live-123456789}")
    err = error_of(text)
    assert err.problems[0][0] == "defaults.extra"
    assert "api_key_env" in str(err) and "sk-live-123456789" not in str(err)


def test_shape_rules() -> None:
    first = str(error_of(MINIMAL.replace("kind: propose", "kind: aggregate")))
    assert "layers[0].kind is 'aggregate'" in first and "must write its own answers (`propose`, `debate`)" in first
    later = str(error_of(MINIMAL.replace("kind: aggregate", "kind: propose")))
    assert "layers[1].kind is 'propose'" in later and "can only come first" in later
    assert "exactly one" in str(
        error_of(MINIMAL.replace("agents: [{model: openai/c}]", "agents: [{model: openai/c, n: 2}]"))
    )
    assert "layers" in str(error_of("name: empty\n"))
    both = MINIMAL + "self_moa: {model: openai/x}\n"
    assert "either `self_moa` or `layers`" in str(error_of(both))


def test_self_moa_field_errors_keep_their_path() -> None:
    err = error_of({"name": "s", "self_moa": {"model": "openai/x", "samples": 0}})
    assert err.problems[0][0] == "self_moa.samples"


def test_not_a_mapping_and_alias_abuse() -> None:
    assert "found a list" in str(error_of("- a\n- b\n"))
    assert "cyclic" in str(error_of("name: &a [*a]\nlayers: []\n"))
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdef", "bcdefg", strict=True)
    )
    assert "alias bomb" in str(error_of(bomb))


def test_readme_documents_every_recipe_field() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for model in (
        moa.Recipe,
        moa.CallParams,
        moa.Agent,
        moa.Layer,
        moa.SelfMoA,
        moa.ProviderLimit,
        moa.RetryPolicy,
    ):
        for name, field in model.model_fields.items():
            assert f"`{name}`" in readme, f"README does not document {model.__name__}.{name}"
            assert field.description, f"{model.__name__}.{name} has no description"


def test_a_template_that_needs_more_responses_than_a_quorum_leaves_fails_at_load(tmp_path: Path) -> None:
    (tmp_path / "two.j2").write_text("First: {{ responses[0] }}; second: {{ responses[1] }}")
    layers = [{"kind": "propose", "agents": [{"model": "a"}, {"model": "b"}, {"model": "c"}], "min_success": 1},
              {"kind": "aggregate", "template": "two.j2", "agents": [{"model": "d"}]}]  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "layers": layers}))
    with pytest.raises(moa.RecipeError, match=r"layers\[1\]\.template: .* fails when it receives 1 response"):
        moa.load_recipe(path)
    layers[0]["min_success"] = 2  # at least two responses always reach it: fine
    path.write_text(yaml.safe_dump({"name": "r", "layers": layers}))
    assert moa.load_recipe(path).name == "r"
    seq = [layers[0], {"kind": "aggregate_seq", "template": "two.j2", "agents": [{"model": "d"}], "window": 2}]
    path.write_text(yaml.safe_dump({"name": "r", "layers": seq}))  # later steps see the synthesis and one more
    assert moa.load_recipe(path).name == "r"
