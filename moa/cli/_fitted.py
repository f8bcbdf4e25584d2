"""Writing a fitted recipe (``moa calibrate``): paths made absolute, checked to load before it is in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def absolute_paths(data: Any, base: Path) -> Any:
    """The recipe's mapping with every relative `recipe`, `template` and `local_models` path made absolute (the
    fitted recipe may be written elsewhere); built-in names stay names."""
    from moa._loader import builtin_recipes
    from moa._resources import builtin_names
    from moa.recipe.local_models import absolute

    builtin = {*builtin_recipes(), *builtin_names("prompts", ".j2")}
    if isinstance(data, list):
        return [absolute_paths(item, base) for item in data]
    if not isinstance(data, dict):
        return data
    data = absolute(data, base)
    fixed = {}
    for key, value in data.items():
        if key in ("recipe", "template", "examples") and isinstance(value, str) and value not in builtin:
            path = Path(value).expanduser()
            fixed[key] = value if path.is_absolute() else str((base / path).resolve())
        else:
            fixed[key] = absolute_paths(value, base)
    return fixed


def write_recipe(out: Path, data: dict[str, Any], name: str, report: list[str]) -> None:
    """Write the fitted recipe (named ``<name>-calibrated``, the report as its header) if it loads; print the report."""
    import yaml

    from moa._errors import ConfigError
    from moa._loader import load_recipe

    data["name"] = f"{data.get('name', name)}-calibrated"
    header = "".join(f"# {line}\n" for line in report)
    written = out.with_name(f".{out.name}.partial")
    written.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    try:
        load_recipe(written)  # what is written loads, or nothing is
    except ConfigError:
        written.unlink()
        raise
    written.replace(out)
    for line in report:
        print(line)
    print(f"wrote {out}")
