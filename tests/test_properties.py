"""Properties, checked on generated inputs: overrides validate like recipe fields; run identity names what changed."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import moa
from moa._overrides import CALL_SETTINGS, apply_sets, call_overrides
from moa.eval._identity import Identity, generation_identity
from moa.recipe import CallParams

BASE = {"name": "r", "layers": [{"kind": "propose", "agents": [{"model": "openai/a"}]}]}

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(["seed", "stop", "n", "timeout", "api_key", "user"]), st.integers(), max_size=2),
)
NAMES = st.one_of(st.sampled_from(CALL_SETTINGS), st.sampled_from(["bogus", "model", "n", "seed", "max_cost"]))


@settings(max_examples=300, deadline=None)
@given(overrides=st.dictionaries(NAMES, VALUES, max_size=3))
def test_an_override_is_accepted_exactly_when_the_same_recipe_field_would_be(overrides: dict[str, Any]) -> None:
    try:
        accepted = call_overrides(overrides)
    except moa.ConfigError:
        accepted = None
    if any(name not in CALL_SETTINGS for name in overrides):
        assert accepted is None  # unknown names are refused, never sent to the provider
        return
    try:  # the recipe field's own validation, as in `defaults:`
        field = moa.load_recipe({**BASE, "defaults": overrides}).defaults
    except moa.RecipeError:
        field = None
    assert (accepted is None) == (field is None)
    if accepted is not None and field is not None:
        assert accepted.model_dump() == field.model_dump()
        for value in accepted.model_dump().values():
            assert not (isinstance(value, float) and not math.isfinite(value))


@settings(max_examples=200, deadline=None)
@given(value=VALUES, name=st.sampled_from(["temperature", "max_tokens", "top_p", "timeout"]))
def test_set_and_keyword_overrides_agree(value: Any, name: str) -> None:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    try:
        _, from_set = apply_sets(BASE, [f"{name}={text}"])
    except moa.ConfigError:
        from_set = None
    try:
        from_keyword: CallParams | None = call_overrides({name: yaml.safe_load(text)})
    except moa.ConfigError:
        from_keyword = None
    assert (from_set is None) == (from_keyword is None)
    if from_set is not None and from_keyword is not None:
        assert from_set.model_dump() == from_keyword.model_dump()


COMPONENTS = st.fixed_dictionaries(
    {
        "recipe": st.sampled_from(["a", "b"]),
        "temperature": st.sampled_from([None, 0.2, 0.7]),
        "max_tokens": st.sampled_from([None, 64]),
        "reused": st.sampled_from([None, "run1 #0123", "run2 #4567"]),
        "benchmark": st.sampled_from(["qa", "alpacaeval"]),
    }
)


def _identity(parts: dict[str, Any]) -> Identity:
    recipe = moa.load_recipe({**BASE, "name": parts["recipe"]})
    settings = {k: parts[k] for k in ("temperature", "max_tokens") if parts[k] is not None}
    overrides = call_overrides(settings) if settings else None
    return generation_identity(parts["benchmark"], recipe, overrides, parts["reused"])


@settings(max_examples=200, deadline=None)
@given(first=COMPONENTS, second=COMPONENTS)
def test_run_identity_differs_exactly_when_a_component_does_and_names_it(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    old, new = _identity(first), _identity(second)
    assert (old.digest == new.digest) == (first == second)
    named = new.changes_from(old.to_json())
    expected = set()
    if first["recipe"] != second["recipe"]:
        expected.add("recipe")
    if (first["temperature"], first["max_tokens"]) != (second["temperature"], second["max_tokens"]):
        expected.add("--set call settings")
    if first["reused"] != second["reused"]:
        expected.add("reused layers")
    if first["benchmark"] != second["benchmark"]:
        expected.add("benchmark")
    assert {part.split(" (was ")[0] for part in named.split("; ")} == (expected or {"its identity"})


def test_the_identity_property_sees_a_changed_template_text(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    (folder / "t.j2").write_text("{{ responses | join('; ') }}")
    data = {"name": "r", "layers": [BASE["layers"][0], {"kind": "aggregate", "template": str(folder / "t.j2"),
                                                      "agents": [{"model": "openai/b"}]}]}  # fmt: skip
    before = generation_identity("qa", moa.load_recipe(data), None)
    (folder / "t.j2").write_text("{{ responses | join(' / ') }}")
    after = generation_identity("qa", moa.load_recipe(data), None)
    assert before.digest != after.digest and after.changes_from(before.to_json()).startswith("recipe (was 'r' #")
