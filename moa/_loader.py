"""``load_recipe``: built-in names, YAML files, YAML text and dicts become a checked ``Recipe``.

YAML and pydantic errors are translated into ``RecipeError`` here and nowhere
else; every message names the source and the field path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import pydantic
import yaml

from moa._errors import RecipeError
from moa._resources import builtin_names, data_dir
from moa._secrets import is_secret_name
from moa.recipe import Agent, Recipe, registry
from moa.recipe import tools as tool_registry
from moa.recipe.layers import agent_path
from moa.recipe.local_models import check_map

RECIPE_SUFFIXES = (".yaml", ".yml")
MAX_RECIPE_BYTES = 1_000_000
MAX_RECIPE_NODES = 100_000

RecipeSource = Recipe | Mapping[str, Any] | str | Path
#: The recipe files being loaded, outermost first: a recipe that an `ask` tool runs is loaded with the recipe
#: that names it, and one that comes back to a file already on this stack asks itself.
_loading: ContextVar[tuple[str, ...]] = ContextVar("moa_recipes_loading", default=())


def builtin_recipes() -> list[str]:
    """Names of the recipes bundled with moa."""
    return builtin_names("recipes", ".yaml")


def load_recipe(source: RecipeSource, *, label: str | None = None, base_dir: Path | None = None) -> Recipe:
    """Load and validate a recipe.

    ``source`` is a ``Recipe`` (returned as is), a dict, a built-in name such
    as ``"moa-lite"``, a path to a YAML file, or YAML text.  Templates are
    compiled and checked here, so a recipe that loads will not fail mid-run on
    its configuration.  Raises ``RecipeError`` naming the source (``label``
    replaces ``<dict>`` or ``<yaml text>`` in messages) and field.  ``base_dir``: where the relative paths
    of a dict's templates and recipes are read from (a file's are read beside it).
    """
    if isinstance(source, Recipe):
        return source
    if isinstance(source, Mapping):
        return _validate(dict(source), label or "<dict>", base_dir=base_dir)
    if isinstance(source, Path):
        return _load_file(source)
    if not isinstance(source, str):
        raise RecipeError(
            "<argument>",
            [("", f"expected a recipe, name, path, YAML text or dict, got {type(source).__name__}")],
        )
    if "\n" not in source and not source.lstrip().startswith("{"):
        if source in builtin_recipes():
            return _load_file(data_dir("recipes") / f"{source}.yaml", label=f"<built-in {source}>")
        path = Path(source).expanduser()
        if path.suffix in RECIPE_SUFFIXES or path.exists() or "/" in source:
            return _load_file(path)
        raise RecipeError(
            repr(source),
            [("", f"no built-in recipe or file named {source!r}; built-in: {', '.join(builtin_recipes())}")],
        )
    label = label or "<yaml text>"
    return _validate(_parse_yaml(source, label), label, base_dir=None)


def _load_file(path: Path, label: str | None = None) -> Recipe:
    label = label or str(path)
    with _entered(path, label):
        return _read_file(path, label)


@contextmanager
def _entered(path: Path, label: str) -> Iterator[None]:
    identity = str(path.expanduser().resolve())
    stack = _loading.get()
    if identity in stack:
        chain = " -> ".join([*stack[stack.index(identity) :], identity])
        raise RecipeError(label, [("", f"the recipe runs itself, in a loop (an `ask` tool, a cascade tier): {chain}")])
    token = _loading.set((*stack, identity))
    try:
        yield
    finally:
        _loading.reset(token)


def _read_file(path: Path, label: str) -> Recipe:
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(label, [("", f"file is larger than {MAX_RECIPE_BYTES} bytes")])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise RecipeError(label, [("", "file not found")]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(label, [("", f"cannot read file: {exc}")]) from exc
    return _validate(_parse_yaml(text, label), label, base_dir=path.resolve().parent)


def _parse_yaml(text: str, label: str) -> dict[str, Any]:
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(label, [("", f"recipe text is larger than {MAX_RECIPE_BYTES} bytes")])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        # Not chained: YAML's own message quotes the recipe text, which may hold a pasted key.
        raise RecipeError(label, [("", f"malformed YAML: {where}{problem}")]) from None
    if not isinstance(data, dict):
        found = "nothing" if data is None else f"a {type(data).__name__}"
        raise RecipeError(label, [("", f"a recipe is a YAML mapping (name:, layers:, ...), found {found}")])
    _check_size(data, label)
    return data


def _check_size(data: Any, label: str) -> None:
    """Reject cyclic aliases and alias bombs before pydantic walks them."""
    budget = MAX_RECIPE_NODES
    stack: list[tuple[Any, frozenset[int]]] = [(data, frozenset())]
    while stack:
        node, ancestors = stack.pop()
        budget -= 1
        if budget < 0:
            raise RecipeError(label, [("", f"recipe expands to more than {MAX_RECIPE_NODES} values (alias bomb?)")])
        if isinstance(node, dict | list):
            if id(node) in ancestors:
                raise RecipeError(label, [("", "recipe contains a cyclic YAML alias")])
            inner = ancestors | {id(node)}
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, inner) for child in children)


def _validate(data: dict[str, Any], label: str, base_dir: Path | None) -> Recipe:
    registry.load_entry_points()  # kinds from installed packages, before the first recipe is validated
    tool_registry.load_entry_points()  # and tools
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": base_dir})
    except pydantic.ValidationError as exc:
        # Not chained: pydantic's message quotes every input value, secrets included.
        raise RecipeError(label, error_lines(exc)) from None
    for index, layer in enumerate(recipe.layers):
        for agent in layer.call_agents():
            _load_asked(agent, f"layers[{index}].{agent_path(layer, agent)}", label)
        for where, answerer in layer.answerers():
            if answerer.agent is not None:
                _load_asked(answerer.agent, f"layers[{index}].{where}.agent", label)
            if answerer.recipe is not None:
                answerer._loaded = _load_named(answerer.recipe, f"layers[{index}].{where}.recipe", label)
    return recipe


def _load_asked(agent: Agent, path: str, label: str) -> None:
    """Load the recipes the agent's `ask` tools run (and those of the agents they ask), now: a recipe that
    does not load, or asks itself in a loop, fails with the recipe that names it, before any call."""
    for number, tool in enumerate(agent.tools):
        where = f"{path}.tools[{number}]"
        if tool.agent is not None:
            _load_asked(tool.agent, f"{where}.agent", label)
        if tool.recipe is not None:
            tool._loaded = _load_named(tool.recipe, f"{where}.recipe", label)


def _load_named(reference: str, where: str, label: str) -> Any:
    """A recipe another one names (an `ask` tool's, a cascade tier's), loaded now: its problems are the naming
    recipe's, at the field that names it."""
    try:
        return load_recipe(reference)
    except RecipeError as exc:
        problems = "; ".join(f"{inner}: {message}" if inner else message for inner, message in exc.problems)
        raise RecipeError(label, [(where, f"{exc.source} does not load: {problems}")]) from None


def local_models_problems(raw: Any, base_dir: Path) -> list[tuple[str, str]]:
    """What is wrong with a ``local_models`` map given apart from a recipe (a search space's, shared by its
    candidates): (``local_models.<name>``, message) for each problem; none when it is right."""
    try:
        check_map(raw, base_dir)
    except pydantic.ValidationError as exc:
        return [(f"local_models.{path}" if path else "local_models", message) for path, message in error_lines(exc)]
    return []


def error_lines(exc: pydantic.ValidationError) -> list[tuple[str, str]]:
    """(field path, message) for each problem, values shown only where they cannot be secrets."""
    return [(_field_path(e["loc"]) + _tag_field(e), _message(e)) for e in exc.errors()]


def _tag_field(error: Any) -> str:
    """``.kind`` (or ``.type``) for an unknown tag: the path names the field that is wrong."""
    if error["type"] != "union_tag_invalid":
        return ""
    return "." + _TAG_NAMES.get(str(error.get("ctx", {}).get("discriminator", "")).strip("'()"), "kind")


_TAGGED = ("layers", "checks")
_TAG_NAMES = {
    "kind_of": "kind",
    "_check_type": "type",
    "_score_type": "type",
    "_router_type": "type",
}  # lists of a union told apart by a tag (`kind`, `type`) pydantic puts in paths


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for position, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in part or part.startswith("function-"):
            continue  # pydantic's internal validator labels
        elif position >= 2 and isinstance(loc[position - 1], int) and loc[position - 2] in _TAGGED:
            continue  # the union member's tag: `layers.0.vote.pattern` is `layers[0].pattern`
        else:
            path += f".{part}" if path else part
    return path


def _message(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown key (check its spelling; `moa schema` lists every field)"
    if error["type"] == "missing":
        return "required field is missing"
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        ctx = error.get("ctx", {})
        tag = _TAG_NAMES.get(str(ctx.get("discriminator", "")).strip("'()"), "kind")
        expected = str(ctx.get("expected_tags", "")).replace("'", "")
        got = ctx.get("tag")
        if got is not None:
            broken = "".join(f"; {why}" for why in registry.failed().values()) if tag == "kind" else ""
            return f"unknown {tag} {got!r}; known: {expected}{broken}"
        return f"`{tag}` is missing: every entry says which one it is"
    value = error.get("input")
    private = any(isinstance(part, str) and (part == "extra" or is_secret_name(part)) for part in error["loc"])
    if not private and error["type"] not in {"value_error", "assertion_error"} and isinstance(value, str | int | float):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return f"{message} (got {shown})"
    return message
