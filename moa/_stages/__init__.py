"""Stage kinds: each layer of a recipe runs as the stage of its ``kind``.

A stage kind is one module with one class (``run``, ``passed_on``,
``estimate``); the engine only runs stages in order and knows no kind.
"""

from .aggregate import Aggregate
from .aggregate_seq import AggregateSeq
from .base import Estimate, EstimateContext, Stage, StageContext
from .propose import Propose

STAGES: dict[str, Stage] = {"propose": Propose(), "aggregate": Aggregate(), "aggregate_seq": AggregateSeq()}

__all__ = ["STAGES", "Estimate", "EstimateContext", "Stage", "StageContext"]
