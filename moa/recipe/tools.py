"""The tools an agent may call: the built-in ``python`` and ``ask``, and functions a user or a package registers.

A registered function has a name (what the model calls it by), a JSON schema
of its parameters (an object schema; built from the signature when none is
given) and a description.  Recipes name tools; the names are checked when a
recipe loads, so register functions before loading the recipes that use them.
Installed packages add functions through the entry point group ``moa.tools``
(the entry's name is the tool's name, its value the function), loaded the
first time a recipe names a tool.
"""

from __future__ import annotations

import inspect
import os
import re
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from moa._errors import ConfigError

ENTRY_POINT_GROUP = "moa.tools"
#: The built-in tools: ``python`` runs code in the sandbox, ``ask`` asks another agent or a whole recipe.
BUILTIN = ("python", "ask")
#: What a function's name may be (OpenAI's rule for function names; other providers accept it too).
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


@dataclass(frozen=True)
class FunctionTool:
    """A registered function: its name, the JSON schema of its parameters, and what it does (for the model)."""

    name: str
    function: Callable[..., Any]
    schema: dict[str, Any]
    description: str


_registered: dict[str, FunctionTool] = {}
_entry_points_loaded = False
_failed: dict[str, str] = {}


def register_tool(
    name: str,
    function: Callable[..., Any],
    schema: dict[str, Any] | None = None,
    description: str | None = None,
    *,
    replace: bool = False,
) -> FunctionTool:
    """Make ``function`` a tool agents can call by ``name`` (sync or async; called with keyword arguments).

    ``schema`` is the JSON schema of its parameters (``{"type": "object", "properties": ...}``); when it is
    omitted, it is built from the signature (parameters annotated ``str``, ``int``, ``float``, ``bool``,
    ``list[...]`` or ``dict``, or their ``| None``; those without a default are required).  The model's
    arguments are checked against it before the function runs.  ``description`` tells the model what the
    tool does (default: the docstring's first paragraph).  Raises ``ConfigError`` for a bad name, schema or
    signature, or a name already taken (``replace=True`` replaces a registered function).
    """
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"a tool's name is 1-64 letters, digits, `_` or `-` (what the model calls), got {name!r}")
    if name in BUILTIN:
        raise ConfigError(f"{name!r} is a built-in tool; give your function another name")
    if name in _registered and not replace:
        raise ConfigError(f"a tool named {name!r} is already registered (replace=True replaces it)")
    if not callable(function):
        raise ConfigError(f"tool {name!r}: expected a function, got {type(function).__name__}")
    schema = check_schema(name, schema) if schema is not None else schema_of(name, function)
    if description is not None and not isinstance(description, str):
        raise ConfigError(f"tool {name!r}: description must be a string")
    text = description or _first_paragraph(inspect.getdoc(function)) or f"Calls {name}."
    tool = FunctionTool(name, function, schema, text)
    _registered[name] = tool
    return tool


def check_schema(name: str, schema: Any) -> dict[str, Any]:
    """``schema`` if it is a valid JSON schema of an object (a function's parameters); else ``ConfigError``."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise ConfigError(f'tool {name!r}: the schema must be a JSON schema with "type": "object" (the arguments)')
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise ConfigError(f"tool {name!r}: the schema is not a valid JSON schema: {exc.message}") from None
    return schema


def schema_of(name: str, function: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema of a function's parameters, from its signature and type hints (simple types only)."""
    try:
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function)
    except (TypeError, ValueError, NameError) as exc:
        raise ConfigError(f"tool {name!r}: cannot read its signature ({exc}); give a schema") from None
    properties: dict[str, Any] = {}
    required = []
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY):
            raise ConfigError(
                f"tool {name!r}: parameter {parameter.name!r} cannot be given by name (*args, **kwargs or "
                "positional-only); give a schema"
            )
        if parameter.name not in hints:
            raise ConfigError(f"tool {name!r}: parameter {parameter.name!r} has no type annotation; give a schema")
        properties[parameter.name] = _json_type(name, parameter.name, hints[parameter.name])
        if parameter.default is parameter.empty:
            required.append(parameter.name)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _json_type(tool: str, parameter: str, hint: Any) -> dict[str, Any]:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if origin in (typing.Union, types.UnionType) and type(None) in arguments and len(arguments) == 2:
        inner = _json_type(tool, parameter, next(a for a in arguments if a is not type(None)))
        return {"anyOf": [inner, {"type": "null"}]}
    if origin is list or hint is list:
        return {"type": "array", "items": _json_type(tool, parameter, arguments[0])} if arguments else {"type": "array"}
    if origin is dict or hint is dict:
        return {"type": "object"}
    raise ConfigError(
        f"tool {tool!r}: parameter {parameter!r} is annotated {hint!r}: only str, int, float, bool, list, dict "
        "and their `| None` are turned into a schema; give a schema"
    )


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def registered() -> dict[str, FunctionTool]:
    """Every registered function, by name (entry points loaded first)."""
    load_entry_points()
    return dict(_registered)


def known_tools() -> list[str]:
    """Every name a recipe may use: the built-in tools, then the registered functions."""
    return [*BUILTIN, *sorted(registered())]


def failed() -> dict[str, str]:
    """Entry points that could not be registered, and why."""
    return dict(_failed)


def load_entry_points() -> list[str]:
    """Register the functions installed packages declare (group ``moa.tools``), once; their names.

    A broken entry point is skipped with a warning; a recipe naming it is told why it is unknown.
    ``MOA_NO_PLUGINS=1`` loads none.
    """
    global _entry_points_loaded
    if _entry_points_loaded or os.environ.get("MOA_NO_PLUGINS") == "1":
        return []
    _entry_points_loaded = True
    loaded = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            function = entry.load()
            register_tool(entry.name, function, getattr(function, "moa_schema", None))
        except Exception as exc:
            why = f"the tool {entry.name!r} ({entry.value}) cannot be registered: {type(exc).__name__}: {exc}"
            _failed[entry.name] = why
            warnings.warn(f"moa: {why}; recipes using it will not load (MOA_NO_PLUGINS=1 skips plugins)",
                          RuntimeWarning, stacklevel=2)  # fmt: skip
            continue
        loaded.append(entry.name)
    return loaded
