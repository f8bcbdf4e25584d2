"""Run identity: what produced the records in an ``--out`` folder, so a resume can never mix two runs.

An eval folder holds two parts, each with its own identity:

- **generation**: the benchmark, the recipe (every field, and the text of every
  template it uses), the call settings given with ``--set``, and the run whose
  layers are reused (``--reaggregate-from``);
- **judge**: the judge model and its settings (``--judge-set``, logprobs), the
  judge prompt file's text, the reference answers, and the generation it judged.

Each record of ``items.jsonl`` / ``judgments.jsonl`` carries its part's digest
(``"run"``), and ``summary.json`` records every component (``"identity"``), so
that a changed component is named in one line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moa.recipe import CallParams, Recipe


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Identity:
    """One part's identity: named components (shown to the user) and their digest (stored on every record)."""

    part: str  # "generation" or "judge"
    components: Mapping[str, str]

    @property
    def digest(self) -> str:
        return _digest({"part": self.part, **self.components})

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "components": dict(self.components)}

    def changes_from(self, stored: Mapping[str, Any]) -> str:
        """What differs from a stored identity, as ``name (was X, now Y); ...``."""
        old = stored.get("components") or {}
        names = sorted(set(old) | set(self.components))
        changed = [
            f"{name} (was {old.get(name, 'not set')}, now {self.components.get(name, 'not set')})"
            for name in names
            if old.get(name) != self.components.get(name)
        ]
        return "; ".join(changed) or "its identity"


def recipe_fingerprint(recipe: Recipe) -> str:
    """A digest of everything that decides a recipe's answers: every field and every template's text."""
    templates = [(source, _file_digest(Path(source))) for layer in recipe.layers for source in layer.template_sources()]
    return _digest({"recipe": recipe.model_dump(mode="json"), "templates": templates})


def settings_text(settings: CallParams | None) -> str:
    """The call settings given as overrides, canonical (``none`` when there are none)."""
    if settings is None or not settings.model_fields_set:
        return "none"
    return json.dumps(settings.model_dump(mode="json", include=settings.model_fields_set), sort_keys=True)


def generation_identity(
    benchmark: str, recipe: Recipe, settings: CallParams | None, reused: str | None = None
) -> Identity:
    return Identity(
        "generation",
        {
            "benchmark": benchmark,
            "recipe": f"{recipe.name!r} #{recipe_fingerprint(recipe)}",
            "--set call settings": settings_text(settings),
            "reused layers": reused or "none",
        },
    )


def judge_identity(
    judge_recipe: Recipe,
    settings: CallParams | None,
    prompt_file: Path,
    references: str,
    generation: Identity,
) -> Identity:
    return Identity(
        "judge",
        {
            "judge": f"{judge_recipe.name!r} #{recipe_fingerprint(judge_recipe)}",
            "--judge-set settings": settings_text(settings),
            "judge prompt": f"{prompt_file.name} #{_file_digest(prompt_file)}",
            "references": references,
            "judged generation": f"#{generation.digest}",
        },
    )


def file_identity(path: Path | None) -> str:
    """``name #digest`` of an input file (``none`` when not given)."""
    return "none" if path is None else f"{path.name} #{_file_digest(path)}"


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return "unreadable"
