"""Overrides: one parser and validator for ``--set``, ``--judge-set`` and ``moa.run(**overrides)``.

Every override is checked by the same rules as the recipe field it replaces,
before any call and before anything is logged:

- a plain name (``temperature``, ``max_tokens``, ``top_p``, ``timeout``,
  ``api_base``, ``api_key_env``, ``extra``) is a *call setting*, validated as a
  ``CallParams`` field: ranges, finite numbers, no literal keys, no reserved
  ``extra`` keys (``n``, ``num_retries``, ``model``...);
- ``extra.NAME=VALUE`` (CLI) adds one more litellm argument, as ``extra:`` in a recipe;
- a path (``layers[0].agents[1].model``, ``defaults.temperature``,
  ``self_moa.samples``) edits the recipe, which is then validated whole;
- anything else is refused, naming it and the valid names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic
import yaml

from moa._errors import ConfigError
from moa._loader import RecipeSource, error_lines, load_recipe
from moa.recipe import CallParams, Recipe

CALL_SETTINGS: tuple[str, ...] = tuple(CallParams.model_fields)
_AGENT_FIELDS = ("model", "name", "system", "n")


def call_overrides(values: Mapping[str, Any], source: str = "override") -> CallParams:
    """Validate call settings given as overrides; raise ``ConfigError`` naming each bad one.

    Only the names in ``values`` count as set (``model_fields_set``), so an
    override never resets a recipe's setting it does not mention.
    """
    unknown = [name for name in values if name not in CALL_SETTINGS]
    if unknown:
        raise ConfigError(f"{source}: {unknown_setting(unknown[0])}")
    try:
        return CallParams.model_validate(dict(values))
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{path or 'value'}: {message}" for path, message in error_lines(exc))
        raise ConfigError(f"{source}: {problems}") from None  # pydantic's text quotes the values


def unknown_setting(name: str) -> str:
    """Why ``name`` is not a call setting, and what the user probably meant."""
    if name in _AGENT_FIELDS:
        return (
            f"`{name}` is an agent field, not a call setting: set it on one agent by path, "
            f"e.g. layers[0].agents[0].{name}=..."
        )
    if name == "api_key":
        return "a literal API key is refused (it would end up in shell history and logs); use api_key_env=VAR"
    close = difflib.get_close_matches(name, CALL_SETTINGS, n=1)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    return (
        f"unknown call setting `{name}`{hint}; call settings are {', '.join(CALL_SETTINGS)}, "
        f"and any other litellm argument goes in extra (CLI: --set extra.{name}=VALUE)"
    )


def merge(base: CallParams | None, top: CallParams | None) -> CallParams | None:
    """``top``'s explicitly set fields over ``base``'s; ``extra`` dictionaries are merged."""
    if base is None or top is None:
        return top if base is None else base
    update = {name: getattr(top, name) for name in top.model_fields_set if name != "extra"}
    if top.extra:
        update["extra"] = {**base.extra, **top.extra}
    merged = base.model_copy(update=update)
    # model_copy keeps base's set fields; record the new ones so a later merge sees them as set.
    merged.__pydantic_fields_set__ = base.model_fields_set | top.model_fields_set
    return merged


def apply_sets(source: RecipeSource, sets: Sequence[str], flag: str = "--set") -> tuple[Recipe, CallParams | None]:
    """Load a recipe and apply ``KEY=VALUE`` items: recipe edits by path, call settings otherwise."""
    recipe = load_recipe(source)
    settings: dict[str, Any] = {}
    edits: list[tuple[str, Any]] = []
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        if key == "api_key":
            raise ConfigError(f"{flag} api_key: {unknown_setting('api_key')}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"{flag} {key}=...: the value is not valid YAML") from None
        if key.startswith("extra."):
            _assign(settings.setdefault("extra", {}), key.removeprefix("extra."), value, flag, create=True)
        elif "." in key or "[" in key:
            edits.append((key, value))
        else:
            settings[key] = value
    overrides = call_overrides(settings, flag) if settings else None
    if edits:
        data = recipe.model_dump(mode="json", exclude_unset=False)
        for key, value in edits:
            _assign(data, key, value, flag)
        recipe = load_recipe(data, label=f"{recipe.name} with {flag} " + " ".join(k for k, _ in edits))
    return recipe, overrides


def _assign(data: dict[str, Any], path: str, value: Any, flag: str, create: bool = False) -> None:
    """Set ``data[path] = value`` (unknown keys are caught when the recipe is validated)."""
    parts: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        parts.append(int(index) if index else name)
    if parts and parts[0] == "stages" and not create:
        parts[0] = "layers"  # the recipe's other name for its layers
    if not parts:
        raise ConfigError(f"{flag} {path}=...: no field named")
    target: Any = data
    try:
        for part in parts[:-1]:
            if create and isinstance(target, dict) and part not in target:
                target[part] = {}
            target = target[part]
        if isinstance(target, list) and not isinstance(parts[-1], int):
            raise TypeError
        target[parts[-1]] = value
    except (KeyError, IndexError, TypeError):
        raise ConfigError(f"{flag} {path}=...: no such field in the recipe") from None
