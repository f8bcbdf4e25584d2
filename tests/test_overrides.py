"""Overrides (--set, --judge-set, moa.run keywords) and numbers go through the recipe's own validation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import agents, loopback_recipe
from hypothesis import given, settings
from hypothesis import strategies as st

import moa
from moa._overrides import apply_sets, call_overrides
from moa.cli import main
from moa.testing import FakeProvider, LoopbackServer

RECIPE = {"name": "r", "layers": [{"kind": "propose", "agents": agents("openai/a", "openai/b")},
                                  {"kind": "aggregate", "agents": agents("openai/agg")}]}  # fmt: skip

#: (override, what the error must name): every one reached the provider, or crashed late, before.
BAD_OVERRIDES: list[tuple[dict[str, Any], str]] = [
    ({"temperature": 99}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"max_tokens": "abc"}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"timeout": "abc"}, "timeout"),
    ({"timeout": math.inf}, "timeout"),
    ({"timeout": -1}, "timeout"),
    ({"top_p": 7}, "top_p"),
    ({"extra": {"num_retries": 4}}, "num_retries"),
    ({"extra": {"n": 3}}, "'n'"),
    ({"extra": {"timeout": math.inf}}, "timeout"),
    ({"extra": {"presence_penalty": math.nan}}, "presence_penalty"),
    ({"api_key_env": "not a name"}, "api_key_env"),
]
UNKNOWN_KEYWORDS = ["bogus_param", "max_cost", "deadline", "num_retries", "n", "model", "messages", "seed"]


@pytest.mark.parametrize(("override", "named"), BAD_OVERRIDES)
async def test_a_bad_keyword_override_is_a_config_error_before_any_call(override: dict[str, Any], named: str) -> None:
    fake = FakeProvider()
    with pytest.raises(moa.ConfigError, match=named):
        await moa.run("Q", RECIPE, provider=fake, **override)
    assert fake.requests == []


@pytest.mark.parametrize("name", UNKNOWN_KEYWORDS)
async def test_an_unknown_keyword_is_a_type_error_naming_it_and_the_valid_ones(name: str) -> None:
    fake = FakeProvider()
    with pytest.raises(TypeError, match=rf"unexpected keyword argument '{name}'") as info:
        await moa.run("Q", RECIPE, provider=fake, **{name: 1})
    assert "max_cost_usd" in str(info.value) and "temperature" in str(info.value)
    assert fake.requests == []


def test_a_typo_gets_a_suggestion() -> None:
    with pytest.raises(TypeError, match="did you mean 'max_cost_usd'"):
        moa.run_sync("Q", RECIPE, provider=FakeProvider(), max_cost=1.0)
    with pytest.raises(moa.ConfigError, match="did you mean `temperature`"):
        apply_sets(RECIPE, ["temprature=0.2"])


def _set_items(override: dict[str, Any]) -> list[str]:
    (name, value), = override.items()  # fmt: skip
    if name == "extra":
        (key, inner), = value.items()  # fmt: skip
        return [f"extra.{key}={yaml.safe_dump(inner, default_flow_style=True).strip().removesuffix('...').strip()}"]
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return [f"{name}={text}"]


@pytest.mark.parametrize(("override", "named"), BAD_OVERRIDES)
def test_a_bad_set_exits_2_before_any_call_or_log_row(
    override: dict[str, Any],
    named: str,
    loopback: LoopbackServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "runs.sqlite"
    monkeypatch.setenv("MOA_LOG_DB", str(db))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(loopback_recipe(loopback, RECIPE["layers"])))
    argv = ["run", "Q", "--recipe", str(recipe)]
    for item in _set_items(override):
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("moa: --set") and named.strip("'") in err and "Traceback" not in err
    assert loopback.completions() == [] and not db.exists()
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"id": 1, "prompt": "Q", "answers": ["x"]}\n')
    eval_argv = ["eval", "qa", "--recipe", str(recipe), "--data", str(qa), "--out", str(tmp_path / "o")]
    for item in _set_items(override):
        eval_argv += ["--set", item]
    assert main(eval_argv) == 2
    assert loopback.completions() == []


def test_unknown_set_names_say_where_they_belong(capsys: pytest.CaptureFixture[str]) -> None:
    for item, hint in [("n=3", "agent field"), ("model=openai/x", "agent field"), ("bogus_param=1", "extra.bogus"),
                       ("api_key=sk-abcdefgh12345678", "refused")]:  # fmt: skip
        with pytest.raises(moa.ConfigError, match=hint):
            apply_sets(RECIPE, [item])


def test_good_overrides_reach_every_call_and_extra_merges() -> None:
    sets = ["temperature=0.2", "extra.seed=7", "layers[1].agents[0].model=openai/agg2"]
    recipe, overrides = apply_sets({**RECIPE, "defaults": {"extra": {"stop": ["x"]}}}, sets)
    fake = FakeProvider()
    moa.run_sync("Q", recipe, provider=fake, settings=overrides)
    assert [r.model for r in fake.requests][-1] == "openai/agg2"
    assert all(r.params["temperature"] == 0.2 and r.params["seed"] == 7 and r.params["stop"] == ["x"]
               for r in fake.requests)  # fmt: skip


def test_a_recipe_edit_by_path_is_validated_and_named() -> None:
    with pytest.raises(moa.RecipeError, match=r"layers\[0\]\.agents\[0\]\.temperature"):
        apply_sets(RECIPE, ["layers[0].agents[0].temperature=.inf"])
    with pytest.raises(moa.ConfigError, match="no such field"):
        apply_sets(RECIPE, ["layers[7].agents[0].model=x"])


FIELDS_WITH_NUMBERS = [
    ("defaults", "timeout"),
    ("defaults", "temperature"),
    ("defaults", "top_p"),
    ("retry", "initial_backoff_s"),
    ("retry", "max_backoff_s"),
    ("retry", "max_retry_after_s"),
    ("layer", "straggler_s"),
    ("limit", "rpm"),
]


@settings(max_examples=60, deadline=None)
@given(where=st.sampled_from(FIELDS_WITH_NUMBERS), value=st.sampled_from([math.inf, -math.inf, math.nan, 1e300]))
def test_infinite_nan_and_absurd_numbers_are_refused_in_recipes(where: tuple[str, str], value: float) -> None:
    block, name = where
    data: dict[str, Any] = {"name": "r", "layers": [{"kind": "propose", "agents": agents("openai/a", "openai/b"),
                                                     "min_success": 1}]}  # fmt: skip
    if block == "layer":
        data["layers"][0][name] = value
    elif block == "limit":
        data["limits"] = {"openai": {name: value}}
    else:
        data[block] = {name: value}
    if block == "limit" and value == 1e300:
        return  # a huge rpm is merely no pacing
    with pytest.raises(moa.RecipeError, match=name):
        moa.load_recipe(data)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "Q", "--max-cost", "nan"],
        ["run", "Q", "--max-cost", "-1"],
        ["run", "Q", "--deadline", "nan"],
        ["run", "Q", "--deadline", "0"],
        ["run", "Q", "--deadline", "-1"],
        ["logs", "--limit", "0"],
        ["eval", "qa", "-r", "local", "--data", "q", "--out", "o", "--concurrency", "0"],
        ["eval", "qa", "-r", "local", "--data", "q", "--out", "o", "--limit", "-1"],
        ["eval", "qa", "-r", "local", "--data", "q", "--out", "o", "--max-cost", "inf"],
    ],
)
def test_cli_numbers_that_would_hang_or_switch_a_limit_off_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert "error: argument" in capsys.readouterr().err


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0.0])
async def test_library_deadlines_and_budgets_must_be_finite(value: float) -> None:
    fake = FakeProvider()
    with pytest.raises(moa.ConfigError, match="deadline_s"):
        await moa.run("Q", RECIPE, provider=fake, deadline_s=value)
    if value != 0.0:
        with pytest.raises(moa.ConfigError, match="max_cost_usd"):
            await moa.run("Q", RECIPE, provider=fake, max_cost_usd=value)
    assert fake.requests == []


def test_call_overrides_only_set_what_they_name() -> None:
    overrides = call_overrides({"temperature": 0.5})
    assert overrides.model_fields_set == {"temperature"}
