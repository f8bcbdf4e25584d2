"""A stage kind of the user's own: registered from Python (or an installed package), used from YAML."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field

import moa


class LongestLayer(moa.Layer):
    """``longest``: keeps the longest candidates; with a ``critic``, asks it to comment on the winner."""

    kind: Literal["longest"] = Field(..., description="`longest`: the longest candidates go on.")
    keep: int = Field(1, ge=1, description="How many go on.")
    critic: moa.Agent | None = Field(None, description="Asked to comment on the winner.")

    def call_agents(self) -> list[moa.Agent]:
        return [self.critic] if self.critic else []

    def calls(self, inputs: int) -> int:
        return 1 if self.critic else 0

    def outputs(self, inputs: int) -> int:
        return min(self.keep, inputs) + (1 if self.critic else 0)


class Longest(moa.Stage):
    async def run(self, ctx: moa.StageContext, inputs: list[moa.Candidate]) -> moa.Outcome:
        layer = ctx.layer
        assert isinstance(layer, LongestLayer)
        ranked = sorted(inputs, key=lambda c: -len(c.text))
        kept = [c.model_copy(update={"score": float(len(c.text))}) for c in ranked[: layer.keep]]
        if layer.critic is not None:
            spec = ctx.specs[0]
            comment = await ctx.call(spec, [{"role": "user", "content": f"Comment on: {kept[0].text}"}])
            kept.append(moa.Candidate.of(comment))
        return moa.Outcome(kept, [c.model_copy(update={"score": float(len(c.text))}) for c in inputs])


moa.register_stage(LongestLayer, Longest(), replace=True)

YAML = """
name: mine
defaults: {{api_base: "{base}", timeout: 5}}
stages:
  - kind: propose
    agents: [{{model: openai/short}}, {{model: openai/longer}}, {{model: openai/mid}}]
  - kind: longest
    keep: {keep}
    {critic}
"""


async def test_a_stage_defined_in_a_test_file_runs_from_yaml(script: Any, tmp_path: Path) -> None:
    server = script({"short": "a", "longer": "a much longer answer", "mid": "medium one", "critic": "nice"})
    path = tmp_path / "mine.yaml"
    path.write_text(YAML.format(base=server.base_url, keep=2, critic="critic: {model: openai/critic}"))
    events: list[moa.Event] = []
    result = await moa.run("Q", path, api_key="k", on_event=events.append)
    assert [c.text for c in result.layers[1].candidates] == ["a much longer answer", "medium one", "nice"]
    assert [c.score for c in result.layers[1].considered] == [1.0, 20.0, 10.0]
    assert result.output == "a much longer answer"
    (comment,) = server.completions("critic")  # the stage's call went through the pipeline: traced, counted
    assert comment.messages == [{"role": "user", "content": "Comment on: a much longer answer"}]
    assert [o.name for o in result.layers[1].outputs] == ["openai/critic"] and len(result.calls) == 4
    assert [e.kind for e in events if e.layer == 2] == ["layer_started", "call_started", "call_finished",
                                                         "layer_finished"]  # fmt: skip
    assert moa.plan(path)[1].calls == 1 and moa.load_recipe(path).calls_per_query == 4


def test_its_fields_validate_like_a_built_in_kinds(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    for keep, critic, where, words in [
        ("0", "", "layers[1].keep", "greater than or equal to 1"),
        ("two", "", "layers[1].keep", "valid integer"),
        ("1", "colour: blue", "layers[1].colour", "unknown key"),
        ("1", "critic: {model: ''}", "layers[1].critic.model", "at least 1 character"),
    ]:
        path.write_text(YAML.format(base="http://127.0.0.1:9/v1", keep=keep, critic=critic))
        with pytest.raises(moa.RecipeError) as info:
            moa.load_recipe(path)
        assert info.value.problems[0][0] == where and words in info.value.problems[0][1], (keep, critic)
        assert str(path) in str(info.value)
    schema = moa.Recipe.model_json_schema()
    assert "LongestLayer" in str(schema) and "the longest candidates go on" in str(schema)


def test_registering_wrongly_is_a_clear_error() -> None:
    class NoLiteral(moa.Layer):
        kind: str = "x"

    with pytest.raises(moa.ConfigError, match="must be declared as Literal"):
        moa.register_stage(NoLiteral, Longest())
    with pytest.raises(moa.ConfigError, match=r"must be an instance of a moa\.Stage subclass"):
        moa.register_stage(LongestLayer, object())  # type: ignore[arg-type]

    class Vote(moa.Layer):
        kind: Literal["vote"] = "vote"

    with pytest.raises(moa.ConfigError, match="a stage kind named 'vote' is already registered"):
        moa.register_stage(Vote, Longest())


PLUGIN = """
from typing import Literal
import moa

class ShoutLayer(moa.Layer):
    kind: Literal["shout"]
    marks: int = 1

class Shout(moa.Stage):
    async def run(self, ctx, inputs):
        return moa.Outcome([c.model_copy(update={"text": c.text.upper() + "!" * ctx.layer.marks}) for c in inputs])

def register():
    moa.register_stage(ShoutLayer, Shout())
"""


@pytest.mark.slow
def test_an_installed_package_adds_a_kind_through_its_entry_point(tmp_path: Path) -> None:
    (tmp_path / "moa_shout.py").write_text(PLUGIN)
    info = tmp_path / "moa_shout-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: moa-shout\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[moa.stages]\nshout = moa_shout:register\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        textwrap.dedent("""
        name: loud
        layers:
          - {kind: propose, agents: [{model: openai/a}]}
          - {kind: shout, marks: 3}
    """)
    )
    env_path = str(tmp_path)
    run = [sys.executable, "-c", "import sys, moa; r = moa.run_sync('hi', sys.argv[1], provider=__import__("
           "'moa.testing', fromlist=['x']).FakeProvider()); print(r.output)", str(recipe)]  # fmt: skip
    done = subprocess.run(run, capture_output=True, text=True, env=_env(env_path), timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("!!!") and done.stdout.strip() == done.stdout.strip().upper()
    bad = subprocess.run([sys.executable, "-m", "moa", "recipes", "validate", str(recipe)], capture_output=True,
                         text=True, env=_env(env_path, broken=True), timeout=600)  # fmt: skip
    assert bad.returncode != 0
    broken = "the stage kind 'shout' (moa_shout:register) cannot be registered: ImportError: half installed"
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "layers[1].kind: unknown kind 'shout'; known: propose" in bad.stderr and broken in bad.stderr
    # A broken plugin breaks only the recipes that use it: the others load, with one warning.
    other = subprocess.run([sys.executable, "-m", "moa", "recipes", "show", "moa-lite"], capture_output=True,
                           text=True, env=_env(env_path), timeout=600)  # fmt: skip
    assert other.returncode == 0 and other.stderr.count(broken) == 1 and "Traceback" not in other.stderr
    assert other.stderr.startswith("moa: ")
    skipped = subprocess.run([sys.executable, "-m", "moa", "recipes", "show", "moa-lite"], capture_output=True,
                             text=True, env={**_env(env_path), "MOA_NO_PLUGINS": "1"}, timeout=600)  # fmt: skip
    assert skipped.returncode == 0 and skipped.stderr == ""


def _env(path: str, broken: bool = False) -> dict[str, str]:
    import os

    if broken:
        Path(path, "moa_shout.py").write_text("raise ImportError('half installed')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([path, os.environ.get("PYTHONPATH", "")])}
