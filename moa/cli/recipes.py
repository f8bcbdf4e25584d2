"""``moa recipes list | show | validate`` and ``moa schema``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moa.cli._common import EXIT_FAILED, EXIT_OK, print_columns, visible

if TYPE_CHECKING:
    from moa.recipe import Agent, Layer


def add_parser(commands: Any) -> None:
    recipes = commands.add_parser("recipes", help="list, show and validate recipes")
    recipe_commands = recipes.add_subparsers(dest="recipes_command", metavar="ACTION", required=True)
    listing = recipe_commands.add_parser("list", help="built-in recipes and those in ./recipes/")
    listing.set_defaults(handler=list_command)
    show = recipe_commands.add_parser("show", help="the plan of a recipe: who gets which prompt")
    show.add_argument("name", metavar="NAME", help="built-in name or YAML path")
    show.set_defaults(handler=show_command)
    validate = recipe_commands.add_parser("validate", help="check a recipe file (exit 1 if invalid)")
    validate.add_argument("path", metavar="PATH")
    validate.set_defaults(handler=validate_command)

    schema = commands.add_parser("schema", help="print the JSON schema of recipes (for editors)")
    schema.set_defaults(handler=schema_command)


def list_command(args: argparse.Namespace) -> int:
    from moa._errors import ConfigError, RecipeError
    from moa._loader import builtin_recipes, load_recipe
    from moa.recipe.verification import without_imports

    sources: list[tuple[str, str]] = [(name, "built-in") for name in builtin_recipes()]
    local_dir = Path.cwd() / "recipes"
    if local_dir.is_dir() and local_dir.resolve() != _builtin_dir():
        sources += [(str(p), str(p.relative_to(Path.cwd()))) for p in sorted(local_dir.glob("*.y*ml"))]
    rows = [("recipe", "layers", "calls/query", "models", "source")]
    for source, origin in sources:
        try:
            with without_imports():  # listing runs no code a recipe names (its `python` checks' modules)
                recipe = load_recipe(source)
        except ConfigError as exc:  # one bad file (recipe or template) is listed as such, not fatal
            reason = exc.problems[0][1] if isinstance(exc, RecipeError) else str(exc)
            rows.append((Path(source).stem, "-", "-", f"invalid: {reason.splitlines()[0]}", origin))
            continue
        models = _short_models(recipe.models)
        calls = str(recipe.calls_per_query)
        calls = f"up to {calls}" if any(layer.calls_vary for layer in recipe.layers) else calls
        rows.append((recipe.name, str(len(recipe.layers)), calls, models, origin))
    print_columns(rows)
    return EXIT_OK


def _builtin_dir() -> Path:
    from moa._resources import data_dir

    return data_dir("recipes").resolve()


def _short_models(models: Sequence[str], limit: int = 2) -> str:
    shown = [m.rsplit("/", 1)[-1] for m in models[:limit]]
    return ", ".join(shown) + (f" +{len(models) - limit} more" if len(models) > limit else "")


def show_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from moa._engine import plan
    from moa._loader import load_recipe
    from moa.recipe import AgentLayer

    recipe = load_recipe(args.name)
    console = Console(highlight=False)
    # Names, descriptions, models and prompts are the user's text: escaped, never read as markup.
    console.print(f"[bold]{escape(visible(recipe.name))}[/bold]: {escape(visible(recipe.description))}")
    most = "at most " if any(layer.calls_vary for layer in recipe.layers) else ""
    console.print(f"{len(recipe.layers)} layers, {most}{recipe.calls_per_query} calls per query\n")
    previous = 0
    for layer_plan, layer in zip(plan(recipe), recipe.layers, strict=True):
        quorum = layer.min_success if isinstance(layer, AgentLayer) else None
        console.print(
            f"[bold cyan]Layer {layer_plan.index}[/bold cyan] · {layer.kind} · {_calls(layer_plan.calls, layer)}"
            + (f" · quorum {quorum}" if quorum else "")
        )
        for number, agent in enumerate(layer.call_agents()):
            settings = {
                **recipe.defaults.model_dump(exclude_none=True, exclude={"extra"}),
                **agent.model_dump(exclude_none=True, exclude={"model", "name", "system", "n", "extra", *_TOOL_FIELDS}),
                **layer.fixed_settings(number),  # what its calls really get (a judge's one-token verdicts)
            }
            shown = " ".join(f"{k}={v}" for k, v in settings.items() if k != "api_key_env")
            times = f" x {agent.n}" if agent.n > 1 else ""
            model = f"{agent.model}  " if agent.label != agent.model else ""
            label, rest = escape(visible(agent.label)), escape(visible(model + shown))
            console.print(f"  - {label}{times}  [dim]{rest}[/dim]", soft_wrap=True)
            if agent.system:
                console.print(f"    system prompt: {escape(visible(repr(agent.system)))}")
            if agent.tools:
                console.print(f"    {escape(visible(_tools(agent)))}", soft_wrap=True)
        for line in layer.describe(previous):
            console.print(f"  {escape(visible(line))}", soft_wrap=True)
        previous = layer.outputs(previous)
        console.print()
    return EXIT_OK


_TOOL_FIELDS = ("tools", "max_steps", "max_tool_calls")


def _tools(agent: Agent) -> str:
    """An agent's tools in a line: each by the name the model calls it, what it asks, and the loop's limits."""
    names = []
    for tool in agent.tools:
        asked = tool.agent.label if tool.agent is not None else tool.recipe
        names.append(tool.called + (f" ({tool.name} {asked})" if asked else ""))
    return (
        f"tools: {', '.join(names)}; at most {agent.steps} model calls and {agent.tool_call_limit} tool calls "
        "per answer (the last call answers)"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _calls(calls: int, layer: Layer) -> str:
    """Its call count; "at most" when repairs, escalations or extractions may not all happen."""
    words = f"{calls} call{'s' if calls != 1 else ''}"
    return f"at most {words}" if layer.calls_vary else words


def validate_command(args: argparse.Namespace) -> int:
    from moa._errors import RecipeError
    from moa._loader import load_recipe

    try:
        recipe = load_recipe(Path(args.path))
    except RecipeError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    most = "at most " if any(layer.calls_vary for layer in recipe.layers) else ""
    shape = f"{_count(len(recipe.layers), 'layer')}, {most}{_count(recipe.calls_per_query, 'call')}"
    print(f"ok: {args.path}: recipe {recipe.name!r}, {shape}")
    return EXIT_OK


def schema_command(args: argparse.Namespace) -> int:
    import json

    from moa.recipe import Recipe, registry

    registry.load_entry_points()  # kinds from installed packages are part of the schema
    print(json.dumps(Recipe.model_json_schema(), indent=2))
    return EXIT_OK
