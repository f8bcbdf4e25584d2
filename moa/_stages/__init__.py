"""Stage kinds: each layer of a recipe runs as the stage of its ``kind``.

A stage kind is a config class (``moa.recipe.Layer``: its fields, call counts
and shape) and a ``Stage`` (``run``, ``estimate``, ``summary``), one module
each.  The engine only runs stages in order and knows no kind.
"""

from __future__ import annotations

from moa._errors import ConfigError
from moa.recipe import Layer, registry

from .aggregate import Aggregate
from .aggregate_seq import AggregateSeq
from .base import Estimate, EstimateContext, Outcome, Stage, StageContext, Writer, writers_of
from .cascade import Cascade
from .debate import Debate
from .execute import Execute
from .propose import Propose
from .rank import Rank
from .route import Route
from .verify import Verify
from .vote import Vote

STAGES: dict[str, Stage] = {
    "propose": Propose(),
    "aggregate": Aggregate(),
    "aggregate_seq": AggregateSeq(),
    "vote": Vote(),
    "rank": Rank(),
    "verify": Verify(),
    "debate": Debate(),
    "execute": Execute(),
    "cascade": Cascade(),
    "route": Route(),
}


def register_stage(config: type[Layer], stage: Stage, *, replace: bool = False) -> str:
    """Add a stage kind: its config class (a ``moa.Layer`` subclass whose ``kind`` is ``Literal["name"]``)
    and its ``moa.Stage``; return its name.  Recipes can use it at once (its fields validate like a
    built-in kind's).  ``replace=True`` lets a kind be registered again (tests, reloading)."""
    if not (isinstance(config, type) and issubclass(config, Layer)):
        raise ConfigError(f"a stage config must be a subclass of moa.Layer, got {config!r}")
    if not isinstance(stage, Stage):
        raise ConfigError(f"a stage must be an instance of a moa.Stage subclass, got {stage!r}")
    name = registry.kind_name(config)
    same = registry.kinds().get(name) is config and STAGES.get(name) is stage
    if name in STAGES and not replace and not same:
        raise ConfigError(f"a stage kind named {name!r} is already registered (replace=True replaces it)")
    registry.register_kind(config, replace=True)
    STAGES[name] = stage
    return name


def stage_of(layer: Layer) -> Stage:
    """The stage that runs a layer of this kind."""
    try:
        return STAGES[layer.kind]
    except KeyError:
        raise ConfigError(f"no stage is registered for the kind {layer.kind!r}") from None


__all__ = [
    "STAGES",
    "Estimate",
    "EstimateContext",
    "Outcome",
    "Stage",
    "StageContext",
    "Writer",
    "register_stage",
    "stage_of",
    "writers_of",
]
