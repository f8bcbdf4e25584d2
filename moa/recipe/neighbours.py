"""The ``neighbours`` router's config: an embedding model, and labelled examples of how each route did.

Each example is a prompt with each route's quality on it (0 to 1: 1 is a right
answer) and, optionally, what each route cost.  A prompt goes to the route
whose quality over its ``k`` most similar examples (cosine similarity of
embeddings, weighted by it), less ``cost_weight`` x its cost there, is highest.
``moa calibrate`` writes the examples (embeddings included) from eval runs of
each route.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from .params import Agent, _Strict


class Example(_Strict):
    """One labelled prompt: how well each route answered it, and what that cost."""

    prompt: str = Field(..., min_length=1, description="The prompt (its last user message).")
    scores: dict[str, float] = Field(
        ..., min_length=1, description="Each route's quality on it, by route name: 0 to 1 (1: a right answer)."
    )
    costs: dict[str, float] = Field(
        default_factory=dict, description="What each route cost on it, by route name, in the router's `cost_unit`."
    )
    embedding: list[float] | None = Field(
        None, min_length=1, description="The prompt's embedding (`moa calibrate` stores it), made by `embedded_with`."
    )
    embedded_with: str | None = Field(None, description="The embedding model that made `embedding`.")

    @model_validator(mode="after")
    def _numbers(self) -> Example:
        for name, value in self.scores.items():
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"scores[{name!r}] is {value}: a quality is from 0 to 1")
        for name, value in self.costs.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"costs[{name!r}] is {value}: a cost is a number of at least 0")
        if self.embedding is not None:
            if not all(math.isfinite(v) for v in self.embedding):
                raise ValueError("`embedding` holds a number that is not finite")
            if not self.embedded_with:
                raise ValueError("`embedding` needs `embedded_with`: the model that made it")
        return self


class NeighboursRouter(_Strict):
    """The route that did best on the prompt's nearest labelled examples (embeddings), less its cost."""

    type: Literal["neighbours"] = Field(..., description="`neighbours`.")
    embedding: Agent = Field(
        ..., description="The embedding model (litellm `aembedding`; e.g. `openai/text-embedding-3-small`)."
    )
    examples: str | list[Example] = Field(
        ...,
        description="The labelled examples: a JSON Lines file (a path relative to this recipe; one example per "
        "line) or a list. `moa calibrate` writes one.",
    )
    k: int = Field(5, ge=1, description="How many of the most similar examples are read.")
    cost_weight: float = Field(
        0.0, ge=0, description="lambda: a route's value is its expected quality minus this x its expected cost."
    )
    cost_unit: Literal["usd", "tokens", "calls", "seconds"] = Field(
        "usd", description="The unit of the examples' `costs` (what `cost_weight` multiplies)."
    )
    _examples: list[Example] = PrivateAttr(default_factory=list)
    #: The examples' vectors embedded at run time, by (embedding model, event loop): a task, shared by the prompts
    #: that need them (``moa._stages.neighbours``).
    _vectors: dict[tuple[str, int], Any] = PrivateAttr(default_factory=dict)

    @field_validator("examples")
    @classmethod
    def _resolved(cls, value: str | list[Example], info: ValidationInfo) -> str | list[Example]:
        if isinstance(value, list):
            if not value:
                raise ValueError("`examples` is empty: give at least one")
            return value
        path = Path(value).expanduser()
        base_dir = (info.context or {}).get("base_dir")
        return str(path if path.is_absolute() or base_dir is None else Path(base_dir) / path)

    @model_validator(mode="after")
    def _load(self) -> NeighboursRouter:
        if self.embedding.system is not None or self.embedding.tools:
            raise ValueError("`embedding` embeds the prompt as it is: it takes no `system` prompt and no `tools`")
        if self.embedding.n != 1:
            raise ValueError(f"`embedding` is called once per prompt: its `n` must be 1, got {self.embedding.n}")
        self._examples = self.examples if isinstance(self.examples, list) else read_examples(Path(self.examples))
        sizes: dict[str, set[int]] = {}
        for example in self._examples:
            if example.embedding is not None and example.embedded_with:
                sizes.setdefault(example.embedded_with, set()).add(len(example.embedding))
        for model, found in sizes.items():
            if len(found) > 1:
                shown = ", ".join(str(n) for n in sorted(found))
                raise ValueError(f"{self.source}: the embeddings made with {model} have different lengths ({shown}): "
                                 "they cannot all be its; embed the examples again (moa calibrate)")  # fmt: skip
        return self

    @property
    def labelled(self) -> list[Example]:
        """The examples, read (from the file, when `examples` names one)."""
        return self._examples

    @property
    def source(self) -> str:
        """Where the examples are, for messages."""
        return f"router.examples ({self.examples})" if isinstance(self.examples, str) else "router.examples"


def read_examples(path: Path) -> list[Example]:
    """The examples of a JSON Lines file, each line checked; a clear error naming the file and line if not."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"`examples`: no file {path} (write one with `moa calibrate`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"`examples`: cannot read {path}: {exc}") from None
    examples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            examples.append(Example.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"`examples`: {path} line {number} is not JSON ({exc.msg})") from None
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise ValueError(f"`examples`: {path} line {number}: {where + ': ' if where else ''}"
                             f"{problem['msg'].removeprefix('Value error, ')}") from None  # fmt: skip
    if not examples:
        raise ValueError(f"`examples`: {path} holds no example")
    return examples
