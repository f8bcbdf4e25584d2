"""A search space: recipes to compare, written as one recipe whose values may be ``{choose: [...]}``.

```yaml
name: qwen-space
defaults: {api_base: http://127.0.0.1:8765/v1, max_tokens: 256}   # every candidate's (as in a recipe)
limits: {openai: {max_concurrency: 1}}
constraints: {max_calls: 8, max_cost_usd: 0.01}                     # per query, at its worst case
candidates: [evals/recipes/qwen-cot.yaml]                          # recipes compared as they are
search:                                                            # every combination of the choices
  layers:
    - kind: propose
      agents: [{model: openai/qwen, n: {choose: [1, 3, 5]}, temperature: 0.7}]
    - choose:
        - {kind: vote}
        - {kind: aggregate, agents: [{model: openai/qwen}]}
```

Any value of ``search`` (a model, a sample count, a whole layer, the list of
layers) may be ``{choose: [a, b, ...]}``, nested too; each combination is one
candidate recipe (with the space's ``defaults``, ``limits``, ``retry`` and
``local_models``: the last is checked once, with its paths read beside the
space file).  A combination that is no valid recipe, or breaks a constraint,
is left out and counted.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa._errors import ConfigError, RecipeError
from moa._loader import load_recipe, local_models_problems
from moa.recipe import Recipe
from moa.recipe.local_models import absolute

#: More candidates than this is a space to narrow, not to search.
MAX_CANDIDATES = 5000
_SPACE_KEYS = {"name", "description", "defaults", "limits", "retry", "local_models", "constraints", "candidates",
               "search"}  # fmt: skip
_CONSTRAINTS = {"max_calls", "max_cost_usd"}


@dataclass(frozen=True)
class Candidate:
    """One recipe of the space: its id (a digest of what it is), a label saying what was chosen, the recipe."""

    id: str
    label: str
    recipe: Recipe
    source: dict[str, Any] = field(compare=False, repr=False)  # the mapping it was built from (for its YAML)


@dataclass
class Space:
    name: str
    candidates: list[Candidate]
    left_out: dict[str, int]  # why -> how many combinations were left out
    examples: dict[str, str]  # why -> one combination's label, for the message


def read_space(path: Path, *, price: Any = None) -> Space:
    """The space's candidates, each a loaded recipe; ``price(recipe)`` gives a recipe's worst-case cost per query
    (for ``max_cost_usd``; None when unpriced)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the search space: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a search space is a mapping (name, search, candidates ...)")
    unknown = sorted(set(data) - _SPACE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; a space has {', '.join(sorted(_SPACE_KEYS))}")
    if "search" not in data and "candidates" not in data:
        raise ConfigError(f"{path}: give `search` (a recipe with choices) or `candidates` (recipes), or both")
    constraints = data.get("constraints") or {}
    if not isinstance(constraints, dict) or set(constraints) - _CONSTRAINTS:
        raise ConfigError(f"{path}: `constraints` takes {', '.join(sorted(_CONSTRAINTS))}")
    calls, usd = constraints.get("max_calls"), constraints.get("max_cost_usd")
    if calls is not None and (isinstance(calls, bool) or not isinstance(calls, int) or calls < 1):
        raise ConfigError(f"{path}: `constraints.max_calls` is a whole number of calls of at least 1, got {calls!r}")
    if usd is not None and (isinstance(usd, bool) or not isinstance(usd, int | float) or not usd >= 0):
        raise ConfigError(f"{path}: `constraints.max_cost_usd` is a number of USD of at least 0, got {usd!r}")
    if not isinstance(data.get("candidates") or [], list):
        raise ConfigError(f"{path}: `candidates` is a list of recipes (names or paths), got {data['candidates']!r}")
    name = str(data.get("name") or path.stem)
    shared = {key: data[key] for key in ("defaults", "limits", "retry", "local_models") if key in data}
    if "local_models" in shared:  # checked once here, not as a reason every combination is left out
        problems = local_models_problems(shared["local_models"], path.parent)
        if problems:
            raise ConfigError(f"{path}: " + "; ".join(f"{where}: {message}" for where, message in problems))
    space = Space(name, [], {}, {})
    seen: set[str] = set()
    sources = [(f"candidates[{i}]", ref) for i, ref in enumerate(data.get("candidates") or [])]
    for where, reference in sources:
        if not isinstance(reference, str):
            raise ConfigError(f"{path}: {where} is a recipe name or path, got {reference!r}")
        beside = path.parent / reference  # a path is read from the space's folder; else a built-in name
        try:
            recipe = load_recipe(beside if beside.is_file() else reference)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {where}: {exc}") from None
        _admit(space, seen, recipe.name, recipe, recipe.model_dump(mode="json", exclude_defaults=True),
               constraints, price)  # fmt: skip
    if "search" in data:
        template = data["search"]
        if not isinstance(template, dict):
            raise ConfigError(f"{path}: `search` is a recipe (a mapping with `layers`) whose values may choose")
        try:
            total = count(template, ())
            combos = list(expand(template, ())) if total <= MAX_CANDIDATES else []
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if total > MAX_CANDIDATES:
            raise ConfigError(f"{path}: `search` has {total} combinations, over {MAX_CANDIDATES}; narrow its choices")
        labels = [", ".join(f"{where}={_short(choice)}" for where, choice in picks) or name for _, picks in combos]
        for (value, _), label in zip(combos, labels, strict=True):
            if labels.count(label) > 1:  # two choices that look alike: the recipe's digest tells them apart
                label = f"{label} #{_digest(value)[:6]}"
            # `local_models` paths made absolute: a frontier recipe is written to OUT/recipes/, its files stay found.
            mapping = {**absolute(_merged(shared, value), path.parent), "name": f"{name}-{_digest(value)[:6]}",
                       "description": label}  # fmt: skip
            try:
                recipe = load_recipe(mapping, label=f"{path} ({label})", base_dir=path.parent)
            except RecipeError as exc:
                _leave_out(space, "not a valid recipe", f"{label}: {exc.problems[0][1] if exc.problems else exc}")
                continue
            _admit(space, seen, label, recipe, mapping, constraints, price)
    if not space.candidates:
        reasons = "; ".join(f"{n} {why} (e.g. {space.examples[why]})" for why, n in space.left_out.items())
        raise ConfigError(f"{path}: no candidate is left to search{': ' + reasons if reasons else ''}")
    return space


def _merged(shared: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """The candidate's mapping: the space's `defaults`, `limits` and `retry` under its own (its keys win)."""
    merged = {**shared, **value}
    for key in shared:
        if isinstance(shared[key], dict) and isinstance(value.get(key), dict):
            merged[key] = {**shared[key], **value[key]}
    return merged


def count(value: Any, where: tuple[str, ...]) -> int:
    """How many combinations ``value`` has (without making them)."""
    if isinstance(value, dict) and set(value) == {"choose"}:
        options = value["choose"]
        if not isinstance(options, list) or not options:
            raise ConfigError(f"search.{_path(where)}: `choose` takes a non-empty list of values")
        return sum(count(option, where) for option in options)
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    total = 1
    for key, item in items:
        total *= count(item, (*where, f"[{key}]" if isinstance(key, int) else str(key)))
        if total > 10 * MAX_CANDIDATES:
            return total  # enough to refuse
    return total


def _admit(space: Space, seen: set[str], label: str, recipe: Recipe, source: dict[str, Any],
           constraints: dict[str, Any], price: Any) -> None:  # fmt: skip
    limit = constraints.get("max_calls")
    if limit is not None and recipe.calls_per_query > limit:
        _leave_out(space, f"above max_calls {limit}", f"{label} ({recipe.calls_per_query} calls)")
        return
    most = constraints.get("max_cost_usd")
    if most is not None and price is not None:
        worst = price(recipe)
        if worst is None or worst > most:
            shown = "unpriced" if worst is None else f"${worst:.4g}"
            _leave_out(space, f"above max_cost_usd {most}", f"{label} ({shown} per query at worst)")
            return
    ident = recipe_id(recipe)
    if ident in seen:
        _leave_out(space, "the same recipe as another", label)
        return
    seen.add(ident)
    space.candidates.append(Candidate(ident, label, recipe, source))


def recipe_id(recipe: Recipe) -> str:
    """What a recipe is, as a short digest: two recipes that differ only in name or description are one."""
    return _digest(recipe.model_dump(mode="json", exclude={"name", "description"}))[:10]


def _leave_out(space: Space, why: str, example: str) -> None:
    space.left_out[why] = space.left_out.get(why, 0) + 1
    space.examples.setdefault(why, example)


def expand(value: Any, where: tuple[str, ...]) -> Iterator[tuple[Any, list[tuple[str, Any]]]]:
    """Every concrete value of ``value`` with the choices made for it: (value, [(path, chosen), ...])."""
    if isinstance(value, dict) and set(value) == {"choose"}:
        options = value["choose"]
        if not isinstance(options, list) or not options:
            raise ConfigError(f"search.{_path(where)}: `choose` takes a non-empty list of values")
        for option in options:
            for concrete, picks in expand(option, where):
                yield concrete, [(_path(where), option), *picks] if len(options) > 1 else picks
        return
    if isinstance(value, dict):
        keys = list(value)
        parts = [list(expand(value[k], (*where, str(k)))) for k in keys]
        for combo in itertools.product(*parts):
            yield dict(zip(keys, (c for c, _ in combo), strict=True)), [p for _, picks in combo for p in picks]
        return
    if isinstance(value, list):
        parts = [list(expand(item, (*where, f"[{i}]"))) for i, item in enumerate(value)]
        for combo in itertools.product(*parts):
            yield [c for c, _ in combo], [p for _, picks in combo for p in picks]
        return
    yield value, []


def _path(where: tuple[str, ...]) -> str:
    return "".join(part if part.startswith("[") else f".{part}" for part in where).lstrip(".") or "search"


def _short(choice: Any) -> str:
    """A choice as a label shows it: a layer by its kind, agents by their models, a value as it is."""
    if isinstance(choice, dict) and "kind" in choice:
        agents = choice.get("agents")
        shown = _short(agents) if isinstance(agents, list) and agents else ""
        return f"{choice['kind']}({shown})" if shown else str(choice["kind"])
    if isinstance(choice, dict) and "model" in choice:
        count = choice.get("n", 1)
        return str(choice["model"]).rsplit("/", 1)[-1] + (f"x{count}" if isinstance(count, int) and count > 1 else "")
    if isinstance(choice, list) and choice and all(isinstance(c, dict) and ("model" in c or "kind" in c)
                                                   for c in choice):  # fmt: skip
        return "+".join(_short(c) for c in choice)
    if isinstance(choice, dict | list):
        return _digest(choice)[:6]
    return str(choice)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
