"""Generated malformed recipes: each one is a ConfigError with a useful message, never a traceback."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import moa

VALID: dict[str, Any] = {
    "name": "fuzz",
    "defaults": {"temperature": 0.7, "max_tokens": 100},
    "layers": [
        {"kind": "propose", "agents": [{"model": "openai/a"}, {"model": "openai/b", "n": 2}], "min_success": 2},
        {"kind": "aggregate", "agents": [{"model": "openai/c"}]},
    ],
    "limits": {"openai": {"max_concurrency": 4, "rpm": 60}},
    "retry": {"max_attempts": 3},
}
# (path into the recipe, bad value, words the message must contain)
WRONG_VALUES: list[tuple[str, Any, str]] = [
    ("name", 42, "name"), ("name", "", "name"), ("name", ["x"], "name"),
    ("description", {"a": 1}, "description"),
    ("defaults", "hot", "defaults"), ("defaults.temperature", "warm", "defaults.temperature"),
    ("defaults.temperature", 5, "defaults.temperature"), ("defaults.temperature", -1, "defaults.temperature"),
    ("defaults.max_tokens", 0, "defaults.max_tokens"), ("defaults.max_tokens", 10**30, "defaults.max_tokens"),
    ("defaults.max_tokens", 1.5, "defaults.max_tokens"), ("defaults.top_p", 2, "defaults.top_p"),
    ("defaults.timeout", -3, "defaults.timeout"), ("defaults.api_key_env", "not a name!", "defaults.api_key_env"),
    ("defaults.extra", ["x"], "defaults.extra"), ("defaults.extra", {"api_key": "sk-x"}, "defaults.extra"),
    ("defaults.extra", {"messages": []}, "defaults.extra"), ("defaults.extra", {"stream": True}, "defaults.extra"),
    ("layers", "all of them", "layers"), ("layers", [], "layers"), ("layers", {"a": 1}, "layers"),
    ("layers.0", "propose", "layers[0]"), ("layers.0.kind", "judge", "layers[0].kind"),
    ("layers.0.kind", "aggregate", "layers[0]"), ("layers.1.kind", "propose", "layers[1]"),
    ("layers.0.agents", [], "layers[0]"), ("layers.0.agents", "openai/a", "layers[0].agents"),
    ("layers.0.agents.0", "openai/a", "layers[0].agents[0]"),
    ("layers.0.agents.0.model", "", "layers[0].agents[0].model"),
    ("layers.0.agents.0.model", None, "layers[0].agents[0].model"), ("layers.0.agents.1.n", 0, "layers[0].agents[1].n"),
    ("layers.0.agents.1.n", 10**9, "layers[0].agents[1].n"), ("layers.0.agents.1.n", "two", "layers[0].agents[1].n"),
    ("layers.0.min_success", 4, "min_success is 4"), ("layers.0.min_success", 0, "layers[0].min_success"),
    ("layers.1.straggler_s", 1, "straggler"), ("layers.0.template", "aggregate", "layers[0].template"),
    ("layers.1.template", "no-such-template", "layers[1].template"), ("layers.1.window", 3, "window"),
    ("layers.1.agents.0.n", 2, "exactly one"), ("limits", ["openai"], "limits"),
    ("limits.openai.max_concurrency", 0, "limits.openai.max_concurrency"),
    ("limits.openai.rpm", -5, "limits.openai.rpm"),
    ("retry.max_attempts", 0, "retry.max_attempts"), ("retry.max_attempts", 10**6, "retry.max_attempts"),
    ("retry.initial_backoff_s", "soon", "retry.initial_backoff_s"), ("self_moa", {"model": "openai/x"}, "self_moa"),
]  # fmt: skip
UNKNOWN_KEYS = ["", "defaults", "layers.0", "layers.0.agents.0", "limits.openai", "retry"]
BAD_YAML = [
    "name: [unclosed", "name: x\n  bad: indent: here", "layers:\n\t- kind: propose", "{name: x, name",
    "name: x\nlayers: *undefined_alias", "- just\n- a list", "42", "name: x\n---\nname: y",
    "a: &a [*a]\nname: x", "name: !!python/object:os.system 'echo pwned'",
]  # fmt: skip
BAD_TEMPLATES = [
    ("{{ answers }}{{ responses }}", "unknown variable"), ("Fixed text only.", "never uses `responses`"),
    ("{{ responses.__class__.__mro__ }}", "unsafe"), ("{{ ''.__class__.__subclasses__() }}{{ responses }}", "unsafe"),
    ("{% for r in responses %}{{ r.nope }}{% endfor %}", "failed to render"), ("{% if %}{{ responses }}", "line 1"),
]  # fmt: skip


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    target: Any = data
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return data


def cases(tmp: Path) -> list[tuple[str, str, str]]:
    """(label, YAML text, expected words) for every generated malformed recipe."""
    out = [(f"{path}={value!r}"[:60], yaml.safe_dump(_set(VALID, path, value)), words)
           for path, value, words in WRONG_VALUES]  # fmt: skip
    for where in UNKNOWN_KEYS:
        data = copy.deepcopy(VALID)
        target: Any = data
        for part in where.split(".") if where else []:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target["surprise_key"] = 1
        out.append((f"unknown key at {where or 'top'}", yaml.safe_dump(data), "surprise_key"))
    out += [(f"bad yaml {i}", text, "") for i, text in enumerate(BAD_YAML)]
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdef", "bcdefg", strict=True)
    )
    out.append(("alias bomb", bomb, "alias bomb"))
    out.append(("huge file", "name: " + "x" * 1_100_000, "larger than"))
    for i, (template, words) in enumerate(BAD_TEMPLATES):
        path = tmp / f"t{i}.j2"
        path.write_text(template)
        out.append((f"template {template[:30]!r}", yaml.safe_dump(_set(VALID, "layers.1.template", str(path))), words))
    return out


def test_at_least_fifty_malformed_recipes_are_config_errors(tmp_path: Path) -> None:
    generated = cases(tmp_path)
    assert len(generated) >= 50
    for label, text, words in generated:
        path = tmp_path / "recipe.yaml"
        path.write_text(text)
        with pytest.raises(moa.ConfigError) as info:
            moa.load_recipe(path)
        message = str(info.value)
        assert str(path) in message, label
        assert words.lower() in message.lower(), (label, message)
        assert "Traceback" not in message


@pytest.mark.slow
def test_the_cli_reports_them_without_a_traceback(tmp_path: Path) -> None:
    generated = cases(tmp_path)[::5]
    for label, text, _ in generated:
        path = tmp_path / "r.yaml"
        path.write_text(text)
        done = subprocess.run([sys.executable, "-m", "moa", "recipes", "validate", str(path)],
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr and str(path) in done.stderr, label
