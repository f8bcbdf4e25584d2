"""The ``neighbours`` router at run time: embed the prompt, read its nearest labelled examples, pick a route.

The examples' vectors are those stored in the file when they were made by the
router's embedding model, else embedded once per process (one call, recorded
in the trace of the prompt that needed them; prompts routed meanwhile wait for
it).  Each route's expected quality is the similarity-weighted mean of its
scores over the ``k`` nearest examples that score it (over every example that
does, when none of those does); its expected cost likewise.  The route with
the highest quality minus ``cost_weight`` x cost answers; a tie goes to the
route listed first.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

from moa._call import CallSpec
from moa._errors import RouteError
from moa.recipe import Example, NeighboursRouter
from moa.recipe.routing import EMBEDDING_SETTINGS
from moa.result import AgentOutput

from .base import StageContext

Vector = tuple[float, ...]


@dataclass(frozen=True)
class Choice:
    """What the router found: the route, its expected quality and value, and why."""

    index: int
    quality: float
    value: float
    reason: str


async def choose(ctx: StageContext, router: NeighboursRouter, names: list[str], spec: CallSpec) -> Choice | str:
    """The route for ``ctx.question``; or why none could be chosen (the embedding call failed)."""
    here = ctx.index + 1
    known = await _example_vectors(ctx, router, spec)
    if isinstance(known, str):
        return known
    if len({len(v) for v in known}) > 1:
        raise RouteError(here, f"{router.source}: the examples' embeddings by {spec.model} are not all of one "
                         "length: embed the examples again (moa calibrate)")  # fmt: skip
    output = await _embed(ctx, spec, [ctx.question])
    if not output.ok or not output.embeddings:
        error = output.error
        return f"the prompt's embedding failed ({error.type}: {error.message[:80]})" if error else "no embedding"
    query = output.embeddings[0]
    if len(query) != len(known[0]):
        raise RouteError(here, f"{router.source}: the examples' embeddings have {len(known[0])} numbers but "
                         f"{spec.model} gave the prompt {len(query)}: embed both with one model "
                         "(calibrate again)")  # fmt: skip
    return pick(router, names, query, known)


def pick(
    router: NeighboursRouter, names: list[str], query: Sequence[float], vectors: Sequence[Sequence[float]]
) -> Choice:
    """The route with the best expected quality less ``cost_weight`` x expected cost over the nearest examples."""
    return decide(router.labelled, names, similarities(query, vectors)[: router.k], router.cost_weight)


def similarities(query: Sequence[float], vectors: Sequence[Sequence[float]]) -> list[tuple[float, int]]:
    """(cosine similarity, index) of every vector, most similar first (ties: the earlier example)."""
    return sorted(((cosine(query, v), i) for i, v in enumerate(vectors)), key=lambda pair: (-pair[0], pair[1]))


def decide(
    examples: Sequence[Example], names: list[str], nearest: list[tuple[float, int]], cost_weight: float
) -> Choice:
    """The route whose similarity-weighted quality over ``nearest`` (``(similarity, example index)``), less
    ``cost_weight`` x its cost there, is highest (a tie: the route listed first)."""
    values = []
    for name in names:
        quality = _mean(nearest, [examples[i].scores.get(name) for _, i in nearest], examples, "scores", name)
        cost = _mean(nearest, [examples[i].costs.get(name) for _, i in nearest], examples, "costs", name)
        values.append((quality, quality - cost_weight * cost, cost))
    index = max(range(len(names)), key=lambda i: (values[i][1], -i))
    lows, highs = nearest[-1][0], nearest[0][0]
    shown = ", ".join(
        f"{name} {q:.2f}" + (f" - {cost_weight:g} x {c:.4g}" if cost_weight else "")
        for name, (q, _, c) in zip(names, values, strict=True)
    )
    reason = f"its {len(nearest)} nearest examples (similarity {highs:.2f} to {lows:.2f}): {shown}"
    return Choice(index, values[index][0], values[index][1], reason)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity (0 when either vector is all zeros)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return dot / norm if norm else 0.0


def _mean(nearest: list[tuple[float, int]], found: list[float | None], examples: Sequence[object], field: str,
          name: str) -> float:  # fmt: skip
    """The similarity-weighted mean of the values the nearest examples give (weights below 0 count as 0, all 0 as
    equal); when none gives one, the mean over every example that does (0 when none does)."""
    pairs = [(max(0.0, sim), value) for (sim, _), value in zip(nearest, found, strict=True) if value is not None]
    if pairs:
        weight = sum(w for w, _ in pairs)
        if weight > 0:
            return sum(w * v for w, v in pairs) / weight
        return sum(v for _, v in pairs) / len(pairs)
    every = [value for example in examples if (value := getattr(example, field).get(name)) is not None]
    return sum(every) / len(every) if every else 0.0


async def _embed(ctx: StageContext, spec: CallSpec, texts: list[str]) -> AgentOutput:
    messages = [{"role": "user", "content": text} for text in texts]
    (output,) = await ctx.fanout(
        [(spec, lambda: ctx.call(spec, messages, step=1, embed=True, params=dict(EMBEDDING_SETTINGS)))], quorum=False
    )
    return output


async def _example_vectors(ctx: StageContext, router: NeighboursRouter, spec: CallSpec) -> list[Vector] | str:
    """Every example's vector by the router's model: stored ones, the rest embedded once (shared by the prompts
    of this event loop that need them meanwhile)."""
    examples = router.labelled
    stored = [tuple(e.embedding) if e.embedding and e.embedded_with == spec.model else None for e in examples]
    if all(v is not None for v in stored):
        return [v for v in stored if v is not None]
    cache = router._vectors
    key = (spec.model, id(asyncio.get_running_loop()))
    task = cache.get(key)
    if task is None:
        missing = [i for i, v in enumerate(stored) if v is None]

        async def embed_missing() -> list[Vector] | str:
            output = await _embed(ctx, spec, [examples[i].prompt for i in missing])
            if not output.ok or len(output.embeddings) != len(missing):
                cache.pop(key, None)  # the next prompt tries again
                error = output.error
                failed = f"{error.type}: {error.message[:80]}" if error else "no embeddings"
                return f"the examples' embeddings failed ({failed})"
            filled = list(stored)
            for i, vector in zip(missing, output.embeddings, strict=True):
                filled[i] = vector
            return [v for v in filled if v is not None]

        task = cache[key] = asyncio.ensure_future(embed_missing())
    result: list[Vector] | str = await asyncio.shield(task)
    return result
