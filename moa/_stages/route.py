"""``route``: a router picks one route for the prompt, and that route's agent or recipe answers it.

``rules`` takes the first route whose ``when`` holds for the last user message
(every condition given: a regular expression, a keyword as a whole word in any
case, a length).  ``classifier`` asks a model, at temperature 0, to name one
route from their names and descriptions; its reply is read as the name it
gives (the whole reply, else the first route name in it as a whole word).
``neighbours`` embeds the prompt and reads its nearest labelled examples
(``neighbours.py``).  No route chosen: the ``default`` route answers, else ``moa.RouteError``; a chosen
route that fails is a ``RouteError`` too.  The choice is a ``moa.Decision``.
"""

from __future__ import annotations

import re
from dataclasses import replace

from moa._errors import RouteError
from moa._prompt import Message, build_messages
from moa.recipe import ClassifierRouter, NeighboursRouter, RouteLayer, RouteRule
from moa.recipe.routing import CLASSIFIER_SETTINGS, EMBEDDING_SETTINGS
from moa.result import Candidate, Decision

from .answering import Answering
from .base import Estimate, EstimateContext, Outcome, Stage, StageContext, bind
from .neighbours import Choice, choose

CLASSIFY = (
    "You sort requests into categories. Reply with the name of one category, exactly as written, and nothing else."
)


def classifier_messages(router: ClassifierRouter, names: list[str], descriptions: list[str | None],
                        question: str) -> list[Message]:  # fmt: skip
    pairs = zip(names, descriptions, strict=True)
    categories = "\n".join(f"- {name}" + (f": {about}" if about else "") for name, about in pairs)
    return [
        {"role": "system", "content": router.instruction or CLASSIFY},
        {"role": "user", "content": f"Categories:\n{categories}\n\nRequest:\n{question}\n\nCategory:"},
    ]


def matches(rule: RouteRule | None, text: str) -> bool:
    """Whether every condition of ``rule`` holds for ``text`` (no rule: it always does)."""
    if rule is None:
        return True
    if rule.pattern is not None and re.search(rule.pattern, text) is None:
        return False
    if rule.keywords and not any(_word(k, text) for k in rule.keywords):
        return False
    if rule.min_chars is not None and len(text) < rule.min_chars:
        return False
    return rule.max_chars is None or len(text) <= rule.max_chars


def named(reply: str, names: list[str]) -> str | None:
    """The route a classifier's reply names: the whole reply (trimmed, any case), else the first name in it."""
    folded = reply.strip().strip(".:`'\"*").strip().casefold()
    exact = [name for name in names if name.casefold() == folded]
    if exact:
        return exact[0]
    found = [(m.start(), name) for name in names if (m := _word(name, reply))]
    return min(found)[1] if found else None


def _word(word: str, text: str) -> re.Match[str] | None:
    """``word`` in ``text`` as a whole word (or phrase), in any case."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE)


class Route(Stage):
    async def run(self, ctx: StageContext, inputs: list[Candidate]) -> Outcome:
        layer = ctx.layer
        assert isinstance(layer, RouteLayer)
        names = layer.names
        specs = iter(ctx.specs)
        answering = Answering(ctx, {i: next(specs) for i, route in enumerate(layer.routes) if route.agent})
        here = ctx.index + 1
        found: Choice | None = None
        if isinstance(layer.router, NeighboursRouter):
            picked = await choose(ctx, layer.router, names, next(specs))
            found = picked if isinstance(picked, Choice) else None
            chosen, why = (names[found.index], found.reason) if found else (None, str(picked))
        elif isinstance(layer.router, ClassifierRouter):
            spec = next(specs)
            messages = classifier_messages(layer.router, names, [r.description for r in layer.routes], ctx.question)
            call = bind(ctx.call, spec, messages, step=1, params=dict(CLASSIFIER_SETTINGS))
            (output,) = await ctx.fanout([(spec, call)], quorum=False)
            if output.ok:
                chosen = named(output.text or "", names)
                why = f"the classifier said {(output.text or '').strip()[:80]!r}"
            else:
                chosen = None
                error = output.error
                failed = f"{error.type}: {error.message[:80]}" if error else "no answer"
                why = f"the classifier gave no answer ({failed})"
        else:
            chosen = next((n for n, r in zip(names, layer.routes, strict=True) if matches(r.when, ctx.question)), None)
            taken = layer.routes[names.index(chosen)] if chosen else None
            unconditional = taken is not None and (taken.when is None or taken.when.empty)
            why = "no rule holds" if chosen is None else "its rule holds"
            if unconditional:
                why = "the last route takes every prompt"
        if chosen is None:
            if layer.default is None:
                raise RouteError(here, f"the router chose no route ({why}) and there is no `default`")
            chosen, why = layer.default, f"{why}; the default route"
        index = names.index(chosen)
        decision = Decision(option=chosen, index=index, action="route", reason=why)
        if found is not None and found.index == index:
            decision.score, decision.gain = found.quality, found.value
        answer = await answering.ask(index, layer.routes[index], chosen)
        decision.cost_usd, decision.tokens = answer.cost_usd, answer.tokens
        if answer.candidate is None:
            raise RouteError(here, f"the route {chosen} gave no answer: {answer.failure}", [decision])
        return Outcome([answer.candidate], [answer.candidate], [decision])

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        """The classifier's call, and the costliest route (any may be chosen)."""
        layer = ctx.layer
        assert isinstance(layer, RouteLayer)
        specs = iter(ctx.specs)
        worst: float | None = 0.0
        longest = 0
        for route in layer.routes:
            alone = replace(ctx, costs=[], unpriced=[])
            if route.agent is not None:
                messages = build_messages(ctx.conversation, system=route.agent.system)
                longest = max(longest, alone.price(next(specs), messages, ()))
            else:
                longest = max(longest, alone.price_recipe(route._loaded))
            ctx.unpriced += alone.unpriced
            worst = None if worst is None or alone.unpriced else max(worst, sum(alone.costs))
        if worst is not None:
            ctx.costs.append(worst)
        if isinstance(layer.router, ClassifierRouter):
            messages = classifier_messages(layer.router, layer.names, [r.description for r in layer.routes],
                                           ctx.question)  # fmt: skip
            ctx.price(next(specs), messages, (), dict(CLASSIFIER_SETTINGS))
        elif isinstance(layer.router, NeighboursRouter):  # the prompt's embedding (the examples' are paid once)
            ctx.price(next(specs), [{"role": "user", "content": ctx.question}], (), dict(EMBEDDING_SETTINGS))
        return ctx.result([(0, longest)])

    def summary(self, outcome: Outcome, layer: int) -> str | None:
        if not outcome.decisions:
            return None
        decision = outcome.decisions[0]
        return f"route: {decision.option} ({decision.reason})"
