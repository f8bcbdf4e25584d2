"""``local_models:``: short names for a recipe's own GGUF files, so that its agents say ``local/<name>``.

```yaml
local_models:
  qwen: ~/models/qwen2.5-0.5b-q4_k_m.gguf     # a path (relative to this recipe's folder, absolute, or ~/...)
  tiny: {path: weights/tiny.gguf}             # the same, as a mapping
layers:
  - kind: propose
    agents: [{model: local/qwen}, {model: local/tiny}, {model: local/smollm2-135m}]
```

Every file is checked when the recipe loads (it exists, it is GGUF, it fits in
the free memory), and every agent's ``local/<name>`` becomes ``local:<the
file's resolved path>`` then: the file, not the short name, is what names the
model from there on (its server, the call cache, the traces), so two recipes
that give one name to different files never share a model, and two names (or a
``local:`` path) for one file share its server.  The agent keeps the name as its
label, and a dump of the recipe writes it back, with the map.

The map is read before the recipe's other fields and held in a context
variable while they are validated (``in_scope``): an agent anywhere in the
recipe (a layer's, a judge, a tool's, a router's embedding model) is resolved
by the one validator every agent passes through.  Outside a recipe (an
``Agent`` validated on its own) nothing is resolved.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from moa._errors import ConfigError
from moa._gguf import FILE_PREFIX, MODELS, PREFIX, check_file

#: A short name: letters, digits, `.`, `_`, `-` (it follows `local/` in a model string).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: The names of the recipe being validated and their files (resolved paths); None outside a recipe, and while a
#: recipe whose map is wrong is validated (the map's own error says what is wrong, not every agent naming it).
_known: ContextVar[dict[str, str] | None] = ContextVar("moa_local_models", default=None)


def _short_name(name: str) -> str:
    if not NAME.match(name):
        raise ValueError(f"{name!r} is not a short name: 1-64 letters, digits, `.`, `_` or `-`, the first a letter "
                         "or digit (agents write it after `local/`)")  # fmt: skip
    if name in MODELS:
        raise ValueError(f"{name!r} is already the bundled model {PREFIX}{name}; give your file another name")
    return name


Name = Annotated[str, AfterValidator(_short_name)]


class LocalModel(BaseModel):
    """A GGUF file of your own, named in `local_models` (written as its path, or as a mapping)."""

    # As ``params._Strict`` (which imports this module, for its agents): unknown keys refused, frozen.
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        ...,
        min_length=1,
        description="The GGUF file: a path relative to this recipe's folder (the working directory for a recipe "
        "given as a dict or text), absolute, or `~/...`. Checked when the recipe loads: it exists, it is GGUF, "
        "and it fits in the free memory (its size and a fifth).",
    )

    @model_validator(mode="before")
    @classmethod
    def _checked(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, str):
            data = {"path": data}
        elif not isinstance(data, Mapping | LocalModel):
            raise ValueError(f"a GGUF file's path, or a mapping {{path: ...}}; got {_shown(data)}")
        if not isinstance(data, Mapping) or not isinstance(data.get("path"), str) or not data["path"]:
            return data  # the field's own validation reports a missing or non-text path
        written = data["path"]
        path = Path(written).expanduser()
        base_dir = (info.context or {}).get("base_dir")
        resolved = (path if path.is_absolute() or base_dir is None else Path(base_dir) / path).resolve()
        shown = repr(written) if str(resolved) == written else f"{written!r} ({resolved})"
        try:
            check_file(resolved, shown)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return {**data, "path": str(resolved)}


def _a_mapping(value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise ValueError(f"a mapping of short names to GGUF files (`qwen: ~/models/qwen.gguf`); got {_shown(value)}")
    return value


LocalModels = Annotated[dict[Name, LocalModel], BeforeValidator(_a_mapping)]
_MAP: TypeAdapter[LocalModels] = TypeAdapter(LocalModels)


def check_map(raw: Any, base_dir: Path | None) -> dict[str, LocalModel]:
    """A ``local_models`` map given apart from a recipe, checked; raises pydantic's ``ValidationError``."""
    return _MAP.validate_python(raw, context={"base_dir": base_dir})


@contextmanager
def in_scope(data: Any, context: Mapping[str, Any] | None) -> Iterator[Any]:
    """Validate a recipe's ``local_models`` first and make its names known while the rest is validated.

    Yields the data to validate, its map already checked (so the files are not checked twice).
    """
    known: dict[str, str] | None = {}
    if isinstance(data, Mapping) and "local_models" in data:
        try:
            checked = _MAP.validate_python(data["local_models"], context=context)
        except ValidationError:
            known = None  # the field reports it, with its path
        else:
            known = {name: entry.path for name, entry in checked.items()}
            data = {**data, "local_models": checked}
    token = _known.set(known)
    try:
        yield data
    finally:
        _known.reset(token)


def resolve(model: str) -> str:
    """An agent's model string: ``local/<name>`` of the recipe's map becomes ``local:<its file>``; an unknown
    ``local/<name>`` is refused, naming the known ones.  Anything else, and anything outside a recipe, is kept."""
    known = _known.get()
    if known is None or not model.startswith(PREFIX):
        return model
    name = model.removeprefix(PREFIX)
    if name in known:
        return FILE_PREFIX + known[name]
    if name in MODELS:
        return model
    bundled = ", ".join(PREFIX + m for m in MODELS)
    mapped = ", ".join(PREFIX + m for m in known)
    listed = f"{bundled} (bundled); {mapped} (this recipe's `local_models`)" if mapped else f"{bundled} (bundled)"
    raise ValueError(f"unknown local model {model!r}; known: {listed}. Name a GGUF file of yours in the recipe's "
                     f"`local_models`, or write {FILE_PREFIX}/path/to/model.gguf")  # fmt: skip


def written(data: Any, model: str) -> str | None:
    """The ``local/<name>`` an agent's mapping said, when ``resolve`` made its model a file's ``local:`` path."""
    said = data.get("model") if isinstance(data, Mapping) else None
    return said if isinstance(said, str) and said.startswith(PREFIX) and said != model else None


def absolute(data: Any, base: Path) -> Any:
    """A recipe mapping's ``local_models`` with every relative path made absolute from ``base`` (for a recipe that
    is written somewhere else: a fitted one, a search's frontier); anything not understood is left to validation."""
    if not isinstance(data, Mapping) or not isinstance(data.get("local_models"), Mapping):
        return data
    fixed: dict[Any, Any] = {}
    for name, entry in data["local_models"].items():
        given = entry.get("path") if isinstance(entry, Mapping) else entry
        if isinstance(given, str) and given and not Path(given).expanduser().is_absolute():
            path = str((base / given).resolve())
            entry = {**entry, "path": path} if isinstance(entry, Mapping) else path
        fixed[name] = entry
    return {**data, "local_models": fixed}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
