"""A recipe's `local_models:` map: short names for GGUF files, resolved and checked when the recipe loads.

No model runs here (the files are GGUF headers, which is all the load-time checks read); the real-model runs are in
tests/test_local_model.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import moa
from moa import _gguf, _local
from moa._overrides import apply_sets
from moa.cli import main
from moa.cli._fitted import absolute_paths
from moa.search.space import read_space


def gguf(path: Path, size: int = 1000) -> Path:
    """A file with GGUF's magic bytes: what the load-time checks read (llama.cpp is never asked to load it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + b"\0" * size)
    return path


def write(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def propose(*models: str) -> list[dict[str, Any]]:
    layers: list[dict[str, Any]] = [{"kind": "propose", "agents": [{"model": m} for m in models]}]
    if len(models) > 1:
        layers.append({"kind": "aggregate", "agents": [{"model": models[0]}]})
    return layers


def problems(source: Any) -> list[tuple[str, str]]:
    with pytest.raises(moa.RecipeError) as caught:
        moa.load_recipe(source)
    return caught.value.problems


def test_names_become_their_files_relative_to_the_recipe_everywhere_an_agent_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)  # not the recipe's folder: relative paths must not be read from here
    qwen, tiny = gguf(home / "models" / "qwen.gguf"), gguf(tmp_path / "recipes" / "weights" / "tiny.gguf")
    recipe = {
        "name": "mapped",
        "local_models": {"qwen": "~/models/qwen.gguf", "tiny": {"path": "weights/tiny.gguf"}},
        "layers": [
            {"kind": "propose", "agents": [
                {"model": "local/qwen"}, {"model": "local/smollm2-135m"}, {"model": f"local:{tiny}"},
                {"model": "local/tiny", "name": "mine", "tools": [{"name": "ask", "agent": {"model": "local/qwen"}}]},
            ]},
            {"kind": "vote", "extract": "llm", "extractor": {"model": "local/tiny"}},
        ],
    }  # fmt: skip
    loaded = moa.load_recipe(write(tmp_path / "recipes" / "r.yaml", recipe))
    agents = loaded.layers[0].call_agents()
    assert [a.model for a in agents] == [f"local:{qwen}", "local/smollm2-135m", f"local:{tiny}", f"local:{tiny}"]
    assert [a.label for a in agents] == ["local/qwen", "local/smollm2-135m", f"local:{tiny}", "mine"]
    assert agents[3].tools[0].agent is not None and agents[3].tools[0].agent.model == f"local:{qwen}"
    assert [a.model for a in loaded.layers[1].call_agents()] == [f"local:{tiny}"]
    assert loaded.models == [f"local:{qwen}", "local/smollm2-135m", f"local:{tiny}"]
    assert {name: entry.path for name, entry in loaded.local_models.items()} == {"qwen": str(qwen), "tiny": str(tiny)}
    # The shorthand's samples and aggregator too.
    shorthand = moa.load_recipe(write(tmp_path / "recipes" / "s.yaml", {
        "name": "s", "local_models": {"tiny": "weights/tiny.gguf"}, "self_moa": {"model": "local/tiny", "samples": 2}
    }))  # fmt: skip
    assert {a.model for layer in shorthand.layers for a in layer.call_agents()} == {f"local:{tiny}"}


def test_a_file_named_twice_is_one_model_and_one_name_in_two_recipes_is_two(tmp_path: Path) -> None:
    first, second = gguf(tmp_path / "a" / "m.gguf"), gguf(tmp_path / "b" / "m.gguf", size=2000)
    (tmp_path / "a" / "link.gguf").symlink_to(first)
    same = moa.load_recipe(write(tmp_path / "a" / "r.yaml", {
        "name": "same", "local_models": {"m": "m.gguf", "alias": "./link.gguf"},
        "layers": [{"kind": "propose", "agents": [{"model": "local/m"}, {"model": "local/alias"},
                                                  {"model": f"local:{tmp_path / 'a' / 'link.gguf'}"}]},
                   {"kind": "vote"}],
    }))  # fmt: skip
    keys = {_local.local_name(agent.model) for agent in same.layers[0].call_agents()}
    assert keys == {str(first)}  # what keys the server registry: one server for the three
    other = moa.load_recipe(write(tmp_path / "b" / "r.yaml", {
        "name": "other", "local_models": {"m": "m.gguf"}, "layers": propose("local/m"),
    }))  # fmt: skip
    assert [_local.local_name(a.model) for a in other.layers[0].call_agents()] == [str(second)]
    assert _local.alias_of(str(first)) != _local.alias_of(str(second))


def test_a_dump_says_the_names_and_loads_again_to_the_same_files(tmp_path: Path) -> None:
    tiny = gguf(tmp_path / "tiny.gguf")
    loaded = moa.load_recipe(write(tmp_path / "r.yaml", {
        "name": "r", "local_models": {"tiny": "tiny.gguf"}, "layers": propose("local/tiny"),
    }))  # fmt: skip
    dumped = loaded.model_dump(mode="json", exclude_defaults=True)
    assert dumped["local_models"] == {"tiny": {"path": str(tiny)}}
    assert dumped["layers"][0]["agents"] == [{"model": "local/tiny"}]
    assert moa.load_recipe(dumped, base_dir=tmp_path / "elsewhere") == loaded
    # A recipe without the map dumps as it did before the map existed (its eval fingerprint is unchanged).
    assert "local_models" not in moa.load_recipe("moa-lite").model_dump(mode="json")


def test_overrides_name_mapped_models_and_recheck_the_map(tmp_path: Path) -> None:
    one, two = gguf(tmp_path / "one.gguf"), gguf(tmp_path / "two.gguf")
    path = write(tmp_path / "r.yaml", {
        "name": "r", "local_models": {"one": "one.gguf", "two": "two.gguf"}, "layers": propose("local/one"),
    })  # fmt: skip
    recipe, _ = apply_sets(path, ["layers[0].agents[0].model=local/two"])
    (agent,) = recipe.layers[0].call_agents()
    assert (agent.model, agent.label) == (f"local:{two}", "local/two")
    recipe, _ = apply_sets(path, ["temperature=0.5", "layers[0].agents[0].temperature=0.1"])
    assert recipe.layers[0].call_agents()[0].model == f"local:{one}"  # untouched agents keep their files
    with pytest.raises(moa.RecipeError, match=r"local_models\.two: '/nowhere\.gguf': no such file"):
        apply_sets(path, ["local_models.two=/nowhere.gguf"])


def test_unknown_local_names_fail_at_load_listing_the_known_ones(tmp_path: Path) -> None:
    gguf(tmp_path / "q.gguf")
    found = problems(write(tmp_path / "r.yaml", {
        "name": "r", "local_models": {"qwen": "q.gguf"}, "layers": propose("local/qwen", "local/qwne"),
    }))  # fmt: skip
    assert found == [(
        "layers[0].agents[1].model",
        "unknown local model 'local/qwne'; known: local/smollm2-135m (bundled); local/qwen (this recipe's "
        "`local_models`). Name a GGUF file of yours in the recipe's `local_models`, or write "
        "local:/path/to/model.gguf",
    )]  # fmt: skip
    (where, message), *_ = problems({"name": "r", "layers": propose("local/qwen")})
    assert where == "layers[0].agents[0].model" and "known: local/smollm2-135m (bundled). Name a GGUF" in message


def test_bad_entries_are_errors_naming_the_recipe_the_entry_and_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf(tmp_path / "ok.gguf")
    (tmp_path / "notes.gguf").write_text("these are notes, not weights")
    path = tmp_path / "bad.yaml"

    def refused(entries: Any, model: str = "local/m") -> str:
        write(path, {"name": "bad", "local_models": entries, "layers": propose(model)})
        with pytest.raises(moa.RecipeError) as caught:
            moa.load_recipe(path)
        assert caught.value.source == str(path)
        return str(caught.value).removeprefix(f"invalid recipe {path}:\n  ")

    missing = tmp_path / "missing.gguf"
    assert refused({"m": "missing.gguf"}) == f"local_models.m: 'missing.gguf' ({missing}): no such file"
    assert refused({"m": {"path": str(missing)}}) == f"local_models.m: '{missing}': no such file"
    assert refused({"m": "notes.gguf"}) == (
        f"local_models.m: 'notes.gguf' ({tmp_path / 'notes.gguf'}): not a GGUF file (it does not start with "
        "'GGUF'); llama.cpp serves GGUF weights"
    )
    assert refused({"m": 42}) == "local_models.m: a GGUF file's path, or a mapping {path: ...}; got 42"
    assert refused({"m": ["ok.gguf"]}) == (
        "local_models.m: a GGUF file's path, or a mapping {path: ...}; got ['ok.gguf']"
    )
    assert refused(["ok.gguf"]) == (
        "local_models: a mapping of short names to GGUF files (`qwen: ~/models/qwen.gguf`); got ['ok.gguf']"
    )
    assert refused({"m": {"path": "ok.gguf", "n_ctx": 4096}}).startswith("local_models.m.n_ctx: unknown key")
    assert refused({"m": {}}) == "local_models.m.path: required field is missing"
    assert refused({"smollm2-135m": "ok.gguf"}, "local/smollm2-135m") == (
        "local_models.smollm2-135m: 'smollm2-135m' is already the bundled model local/smollm2-135m; give your file "
        "another name"
    )
    assert refused({"my model": "ok.gguf"}).startswith("local_models.my model: 'my model' is not a short name")
    monkeypatch.setattr(_gguf, "_available_memory", lambda: 100)
    assert refused({"m": "ok.gguf"}) == (
        f"local_models.m: 'ok.gguf' ({tmp_path / 'ok.gguf'}): the model needs about 0.0 GiB of memory and 0.0 GiB "
        "is free; it does not fit"
    )
    # A file a server of this process holds is in memory already: it is not measured against what is left.
    monkeypatch.setattr(_gguf, "held", {str(tmp_path / "ok.gguf")})
    assert moa.load_recipe(path).layers[0].call_agents()[0].model == f"local:{tmp_path / 'ok.gguf'}"


def test_an_error_comes_before_any_call(tmp_path: Path) -> None:
    from moa.testing import FakeProvider

    fake = FakeProvider()
    recipe = {"name": "r", "local_models": {"m": str(tmp_path / "gone.gguf")}, "layers": propose("local/m")}
    with pytest.raises(moa.RecipeError, match="no such file"):
        moa.run_sync("Hi", recipe, provider=fake)
    assert fake.requests == []


def test_the_cli_reads_the_map_and_reports_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gguf(tmp_path / "m.gguf")
    good = write(tmp_path / "good.yaml", {"name": "g", "local_models": {"m": "m.gguf"}, "layers": propose("local/m")})
    assert main(["recipes", "validate", str(good)]) == 0
    bad = write(tmp_path / "bad.yaml", {"name": "b", "local_models": {"m": "nope.gguf"}, "layers": propose("local/m")})
    assert main(["run", "Hi", "--recipe", str(bad), "--no-log"]) == 2
    assert f"local_models.m: 'nope.gguf' ({tmp_path / 'nope.gguf'}): no such file" in capsys.readouterr().err


def test_a_search_space_shares_its_map_with_absolute_paths(tmp_path: Path) -> None:
    one, two = gguf(tmp_path / "space" / "w" / "one.gguf"), gguf(tmp_path / "space" / "w" / "two.gguf")
    space = write(tmp_path / "space" / "space.yaml", {
        "name": "sp", "local_models": {"one": "w/one.gguf", "two": "w/two.gguf"},
        "search": {"layers": [{"kind": "propose", "agents": [{"model": {"choose": ["local/one", "local/two"]}}]}]},
    })  # fmt: skip
    candidates = read_space(space).candidates
    assert sorted(c.recipe.models[0] for c in candidates) == [f"local:{one}", f"local:{two}"]
    # The frontier's recipes are written elsewhere (OUT/recipes/): their files must still be found.
    assert all(c.source["local_models"] == {"one": str(one), "two": str(two)} for c in candidates)
    assert moa.load_recipe(candidates[0].source, base_dir=tmp_path / "out").models == [candidates[0].recipe.models[0]]
    write(space, {"name": "sp", "local_models": {"one": "w/none.gguf"},
                  "search": {"layers": [{"kind": "propose", "agents": [{"model": "local/one"}]}]}})  # fmt: skip
    with pytest.raises(moa.ConfigError) as caught:
        read_space(space)
    missing = tmp_path / "space" / "w" / "none.gguf"
    assert str(caught.value) == f"{space}: local_models.one: 'w/none.gguf' ({missing}): no such file"


def test_a_fitted_recipe_keeps_finding_its_files(tmp_path: Path) -> None:
    data = {"name": "r", "local_models": {"a": "w/a.gguf", "b": {"path": "w/b.gguf"}, "c": "/abs/c.gguf",
                                          "d": "~/d.gguf"}}  # fmt: skip
    fixed = absolute_paths(data, tmp_path)
    assert fixed["local_models"] == {
        "a": str(tmp_path / "w" / "a.gguf"), "b": {"path": str(tmp_path / "w" / "b.gguf")}, "c": "/abs/c.gguf",
        "d": "~/d.gguf",
    }  # fmt: skip
