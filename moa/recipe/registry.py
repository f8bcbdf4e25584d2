"""The stage kinds a recipe may use: built-in ones, and those a user or a package registers.

Each kind has a config class (a ``Layer`` subclass with ``kind: Literal["name"]``).
Registering one rebuilds the recipe model, so the new kind's fields are
validated, documented (``moa schema``) and reported with their paths exactly
like the built-in ones.  Installed packages add kinds through the entry point
group ``moa.stages``; they are loaded the first time a recipe is validated.
"""

from __future__ import annotations

import os
import typing
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from moa._errors import ConfigError

from .layers import Layer, kind_of

ENTRY_POINT_GROUP = "moa.stages"

_kinds: dict[str, type[Layer]] = {}
_listeners: list[Callable[[], None]] = []
_entry_points_loaded = False
_failed: dict[str, str] = {}


def kind_name(config: type[Layer]) -> str:
    """The kind a config class declares (its ``kind: Literal["name"]``)."""
    annotation = config.model_fields["kind"].annotation
    values = typing.get_args(annotation)
    if typing.get_origin(annotation) is not typing.Literal or len(values) != 1 or not isinstance(values[0], str):
        raise ConfigError(f"{config.__name__}.kind must be declared as Literal['name'], got {annotation!r}")
    return values[0]


def register_kind(config: type[Layer], *, replace: bool = False) -> str:
    """Make a stage kind's config known to recipes; return its name."""
    if not (isinstance(config, type) and issubclass(config, Layer)):
        raise ConfigError(f"a stage config must be a subclass of moa.recipe.Layer, got {config!r}")
    name = kind_name(config)
    if name in _kinds and _kinds[name] is not config and not replace:
        raise ConfigError(f"a stage kind named {name!r} is already registered ({_kinds[name].__name__})")
    _kinds[name] = config
    for listener in _listeners:
        listener()
    return name


def kinds() -> dict[str, type[Layer]]:
    """Every registered kind and its config class."""
    return dict(_kinds)


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener`` whenever a kind is registered (the recipe model rebuilds itself)."""
    _listeners.append(listener)


def layer_union() -> Any:
    """The type of one layer: a union of every kind's config, told apart by ``kind``."""
    members = tuple(Annotated[config, Tag(name)] for name, config in _kinds.items())
    return Annotated[Union[members], Discriminator(kind_of)]  # noqa: UP007  (a runtime-built union)


def load_entry_points() -> list[str]:
    """Register the kinds installed packages declare (group ``moa.stages``), once; return their names.

    A package whose entry point fails is skipped with a warning (recipes that do not use its kind
    still load; one that does is told why its kind is unknown: ``failed()``).  ``MOA_NO_PLUGINS=1``
    loads none.
    """
    global _entry_points_loaded
    if _entry_points_loaded or os.environ.get("MOA_NO_PLUGINS") == "1":
        return []
    _entry_points_loaded = True
    loaded = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        # The entry point names a function that calls ``moa.register_stage`` (config and stage together).
        try:
            register = entry.load()
            register()
        except Exception as exc:
            why = f"the stage kind {entry.name!r} ({entry.value}) cannot be registered: {type(exc).__name__}: {exc}"
            _failed[entry.name] = why
            warnings.warn(f"moa: {why}; recipes using it will not load (MOA_NO_PLUGINS=1 skips plugins)",
                          RuntimeWarning, stacklevel=2)  # fmt: skip
            continue
        loaded.append(entry.name)
    return loaded


def failed() -> dict[str, str]:
    """Plugins whose entry point failed, and why."""
    return dict(_failed)
