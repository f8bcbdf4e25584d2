"""``route``: send each prompt to the agent or recipe that should answer it (RouteLLM's idea, any number of routes).

A router reads the prompt's last user message and picks one route: ``rules``
(the first route whose ``when`` holds: a regular expression, keywords, a length),
``classifier`` (a cheap model picks a route by name from the routes'
descriptions), or ``neighbours`` (the route that did best on the most similar
labelled examples, by embeddings, less ``cost_weight`` x its cost).  RouteLLM
(Ong et al. 2024) routed between a strong and a weak model at over 2x lower cost for 95 % of GPT-4's MT-Bench quality.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from .control import Answerer
from .layers import Layer, one_call
from .neighbours import NeighboursRouter
from .params import Agent, Pattern, _Strict


class RouteRule(_Strict):
    """When a prompt goes this way: every condition given must hold (none given: always)."""

    pattern: Pattern | None = Field(None, description="A regular expression searched in the last user message.")
    keywords: list[str] | None = Field(
        None, min_length=1, description="Words of which at least one must appear (whole words, any case)."
    )
    min_chars: int | None = Field(None, ge=0, description="The message has at least this many characters.")
    max_chars: int | None = Field(None, ge=0, description="The message has at most this many characters.")

    @model_validator(mode="after")
    def _can_hold(self) -> RouteRule:
        if self.keywords is not None and any(not k.strip() for k in self.keywords):
            raise ValueError("`keywords`: a blank keyword would match any prompt")
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise ValueError(f"`min_chars` ({self.min_chars}) is above `max_chars` ({self.max_chars}): it never holds")
        return self

    @property
    def empty(self) -> bool:
        """Whether it sets no condition (so it holds for every prompt)."""
        return all(getattr(self, name) is None for name in type(self).model_fields)


class Route(Answerer):
    """One route: who answers the prompts sent here, and when they are."""

    when: RouteRule | None = Field(None, description="`router: rules`: when a prompt goes this way.")
    description: str | None = Field(
        None, min_length=1, description="`router: classifier`: which prompts belong here, as the classifier reads it."
    )  # (`neighbours` reads the examples' scores by route name)


class RulesRouter(_Strict):
    """The first route (in order) whose `when` holds for the prompt."""

    type: Literal["rules"] = Field(..., description="`rules`.")


class ClassifierRouter(_Strict):
    """A (cheap) model reads the prompt and the routes' names and descriptions and names one route."""

    type: Literal["classifier"] = Field(..., description="`classifier`.")
    agent: Agent = Field(..., description="The classifier model (asked at temperature 0 for a few tokens).")
    instruction: str | None = Field(
        None, description="Its system prompt, instead of the built-in one (plain text; no template)."
    )


def _router_type(value: Any) -> str | None:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


Router = Annotated[
    Union[  # noqa: UP007
        Annotated[RulesRouter, Tag("rules")],
        Annotated[ClassifierRouter, Tag("classifier")],
        Annotated[NeighboursRouter, Tag("neighbours")],
    ],
    Discriminator(_router_type),
]

#: What the classifier is asked with: a few tokens at temperature 0.
CLASSIFIER_SETTINGS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 16}
#: An embedding writes no tokens: its worst case (for budgets and limits) is its input alone.
EMBEDDING_SETTINGS: dict[str, Any] = {"max_tokens": 1}


class RouteLayer(Layer):
    """``route``: a router picks one route for the prompt; that route's agent or recipe answers it.

    ``rules`` takes the first route whose ``when`` holds; ``classifier`` asks a
    model to name a route; ``neighbours`` embeds the prompt and takes the route
    with the best quality less ``cost_weight`` x cost on its nearest examples.
    When the router names none, the ``default`` route answers; without one, the
    run stops with ``RouteError`` (as it does when the chosen route fails).
    The choice is a ``moa.Decision`` in the trace.
    """

    kind: Literal["route"] = Field(..., description="`route`: send each prompt to the route that should answer it.")
    takes_candidates: ClassVar[bool] = False
    routes: list[Route] = Field(..., min_length=1, description="The routes (each an `agent` or a `recipe`).")
    router: Router = Field(..., description="How a route is chosen: `rules`, `classifier` or `neighbours`.")
    default: str | None = Field(
        None, description="The route (by name) that answers when the router chooses none; unset: that is an error."
    )

    @model_validator(mode="after")
    def _consistent(self) -> RouteLayer:
        names = self.names
        folded = [n.casefold() for n in names]
        for name in {n for n in names if folded.count(n.casefold()) > 1}:
            raise ValueError(f"two routes are called {name!r} (names are read in any case): give each a `name` of "
                             "its own")  # fmt: skip
        if self.default is not None and self.default not in names:
            raise ValueError(f"`default` is {self.default!r}, which is no route; routes: {', '.join(names)}")
        unread = {"rules": "description", "classifier": "when", "neighbours": "when"}[self.router.type]
        for index, route in enumerate(self.routes):
            if getattr(route, unread) is not None:
                raise ValueError(f"routes[{index}].{unread}: `router: {self.router.type}` does not read it")
        if self.router.type == "rules":
            for index, route in enumerate(self.routes[:-1]):
                if route.when is None or route.when.empty:
                    raise ValueError(f"routes[{index}] has no condition in `when`: it takes every prompt, so the "
                                     "routes after it are never reached (give it one, or move it last)")  # fmt: skip
        if isinstance(self.router, ClassifierRouter):
            one_call(self.router.agent, "router.agent")
        if isinstance(self.router, NeighboursRouter):
            _examples_match(self.router, names)
        return self

    @property
    def names(self) -> list[str]:
        return [route.label(f"route {i + 1}") for i, route in enumerate(self.routes)]

    def route_agents(self) -> list[Agent]:
        return [route.agent for route in self.routes if route.agent is not None]

    def call_agents(self) -> list[Agent]:
        return [*self.route_agents(), *self.router_agents()]

    def router_agents(self) -> list[Agent]:
        """The router's model: the classifier, or the embedding model (none for rules)."""
        if isinstance(self.router, ClassifierRouter):
            return [self.router.agent]
        return [self.router.embedding] if isinstance(self.router, NeighboursRouter) else []

    def fixed_settings(self, agent: int) -> dict[str, Any]:
        if agent < len(self.route_agents()) or not isinstance(self.router, ClassifierRouter):
            return {}  # (an embedding call is sent `EMBEDDING_SETTINGS` by the stage: no setting of its own)
        return dict(CLASSIFIER_SETTINGS)

    def answerers(self) -> list[tuple[str, Answerer]]:
        return [(f"routes[{i}]", route) for i, route in enumerate(self.routes)]

    def calls(self, inputs: int) -> int:
        return max(route.most_calls for route in self.routes) + len(self.router_agents())

    def outputs(self, inputs: int) -> int:
        return 1

    def fewest_outputs(self, inputs: int) -> int:
        return 1

    @property
    def calls_vary(self) -> bool:
        return len({route.most_calls for route in self.routes}) > 1 or super().calls_vary

    def describe(self, inputs: int) -> list[str]:
        if isinstance(self.router, ClassifierRouter):
            lines = [f"the classifier {self.router.agent.label} names the route for the prompt"]
        elif isinstance(self.router, NeighboursRouter):
            router = self.router
            cost = f" less {router.cost_weight:g} x its cost ({router.cost_unit})" if router.cost_weight else ""
            lines = [f"{router.embedding.label} embeds the prompt; the route with the best quality on its {router.k} "
                     f"nearest of {len(router.labelled)} labelled examples{cost} answers it"]  # fmt: skip
        else:
            lines = ["the first route whose rule holds for the last user message answers it"]
        for name, route in zip(self.names, self.routes, strict=True):
            about = _rule(route.when) if self.router.type == "rules" else route.description or ""
            lines.append(f"{name}: {about}" if about else name)
        lines.append(f"no route chosen: {self.default or 'an error (RouteError)'}")
        return lines


def _rule(when: RouteRule | None) -> str:
    if when is None:
        return "every prompt"
    parts = []
    if when.pattern is not None:
        parts.append(f"matches {when.pattern!r}")
    if when.keywords:
        parts.append("says " + " or ".join(repr(k) for k in when.keywords))
    if when.min_chars is not None:
        parts.append(f"at least {when.min_chars} characters")
    if when.max_chars is not None:
        parts.append(f"at most {when.max_chars} characters")
    return " and ".join(parts) or "every prompt"


def _examples_match(router: NeighboursRouter, names: list[str]) -> None:
    """Every route an example scores or prices is a route here, and every route is scored (and priced, when
    costs count) on at least one example: examples from other routes would route by someone else's data."""
    scored: set[str] = set()
    priced: set[str] = set()
    for number, example in enumerate(router.labelled, 1):
        for field, found in (("scores", example.scores), ("costs", example.costs)):
            strangers = [name for name in found if name not in names]
            if strangers:
                raise ValueError(
                    f"{router.source}: example {number} {field} {', '.join(repr(n) for n in strangers)}, which is no "
                    f"route here; routes: {', '.join(names)} (the examples were made for another recipe: calibrate "
                    "this one)"
                )
        scored |= set(example.scores)
        priced |= set(example.costs)
    missing = [name for name in names if name not in scored]
    if missing:
        raise ValueError(f"{router.source}: no example scores the route(s) {', '.join(missing)}: the router could "
                         "never tell how they do (calibrate with a run of every route)")  # fmt: skip
    unpriced = [name for name in names if name not in priced]
    if router.cost_weight and unpriced:
        raise ValueError(f"{router.source}: `cost_weight` is {router.cost_weight:g} but no example gives a cost for "
                         f"{', '.join(unpriced)}")  # fmt: skip
