"""What every stage kind shares: the context it runs in, the fan-out with quorums, and its protocol.

A stage receives the conversation and the previous stage's candidates (text
plus what earlier stages learned: scores, votes, verdicts) and returns the
candidates it passes on, best first; its calls are recorded as it makes them.
It never talks to a provider: every call goes through ``ctx.call`` (limits,
budget, retries, events and tracing are done there, in ``moa._call``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from moa._call import (
    Caller,
    CallFailed,
    CallRefused,
    CallSpec,
    Pricing,
    abandoned,
    embedded,
    output_tokens,
    prompt_tokens,
)
from moa._errors import BudgetExceeded, CallbackError, QuorumError
from moa._fanout import Abandoned, settle
from moa._prompt import Message
from moa._provider import TokenCallback
from moa._tools import RecipeCost, ToolRuntime, answer_worst_case, run_loop, tool_runtime
from moa.recipe import Layer, Recipe
from moa.result import AgentOutput, Candidate, Decision

Factory = Callable[[], Awaitable[AgentOutput]]
#: The worst case of one run of a recipe on a conversation, its unpriced models, and its longest answer in tokens.
AnswerCost = Callable[["Recipe", list[Message]], tuple[float | None, list[str], int]]


@dataclass(frozen=True)
class Writer:
    """The call that wrote an answer: its spec and its agent's system prompt."""

    spec: CallSpec
    system: str | None


@dataclass
class Outcome:
    """What a stage passes on (best first), and every candidate it looked at with its findings."""

    candidates: list[Candidate]
    considered: list[Candidate] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)  # a controlling stage's choices (cascade, route)


@dataclass
class StageContext:
    """One stage's view of the run: its config, its planned calls, and ``call()``."""

    index: int  # 0-based layer index
    layer: Layer
    conversation: list[Message]
    specs: list[CallSpec]  # one per agent sample of ``layer.call_agents()``, in order
    caller: Caller
    on_token: TokenCallback | None = None  # set for the final stage only: its answer streams
    recorded: list[AgentOutput] = field(default_factory=list)  # finished calls, for partial traces
    #: Every call site of this run so far, with the system prompt its agent has: who wrote a candidate
    #: (a repair goes back to it).  Shared by the run's stages; ``remember`` adds a new site.
    writers: dict[tuple[int, int, int], Writer] = field(default_factory=dict)
    #: What tool calls need from the run (its quiet caller, how to run a recipe); made on first use if unset.
    tools: ToolRuntime | None = None

    @property
    def question(self) -> str:
        """The last user message: what the candidates answer."""
        return _question(self.conversation)

    def writer_of(self, candidate: Candidate) -> Writer | None:
        """The call that wrote a candidate (model, settings, system prompt); None when this run did not make
        it (a reused layer's answer, when the recipe's agent there is another model)."""
        writer = self.writers.get((candidate.layer, candidate.agent, candidate.sample))
        return writer if writer is not None and writer.spec.model == candidate.model else None

    def remember(self, spec: CallSpec, system: str | None) -> None:
        """Make a new call site known (a repair's), so later stages can find who wrote its answer."""
        self.writers[(spec.site.layer, spec.site.agent, spec.site.sample)] = Writer(spec, system)

    async def call(
        self,
        spec: CallSpec,
        messages: list[Message],
        *,
        step: int = 0,
        stream: bool = False,
        embedded: Sequence[tuple[int, int]] = (),
        params: dict[str, Any] | None = None,
        embed: bool = False,
    ) -> AgentOutput:
        """One call through the pipeline (``stream``: send its text to the run's ``on_token``; ``params``
        override the spec's settings, e.g. a judge's one-token verdict).  An agent with tools answers in a tool
        loop (``moa._tools``): several model calls, one ``AgentOutput``; its answer reaches ``on_token`` whole.
        ``embed``: an embedding call of the messages' texts (``AgentOutput.embeddings``)."""
        if params:
            spec = replace(spec, params={**spec.params, **params})
        if spec.tools and not embed:
            if self.tools is None:
                self.tools = tool_runtime(self.caller)
            on_token = self.on_token if stream else None
            return await run_loop(
                self.caller, spec, messages, runtime=self.tools, step=step, embedded=embedded, on_token=on_token
            )
        return await self.caller.call(
            spec, messages, step=step, on_token=self.on_token if stream else None, embedded=embedded, embed=embed
        )

    async def fanout(
        self,
        calls: Sequence[tuple[CallSpec, Factory]],
        *,
        min_success: int | None = None,
        quorum: bool = True,
        where: str = "",
    ) -> list[AgentOutput]:
        """Run calls together under the layer's quorum and straggler cut-off; their outputs, in order.

        Raises ``BudgetExceeded`` when the budget refused a call, ``QuorumError``
        when fewer than ``min_success`` (default: the layer's) succeeded, calls
        still running then cancelled (``where`` says which part of the stage:
        "round 2"); a failing callback stops everything at once.
        ``quorum=False`` settles every call and raises nothing for failures (a
        judge's missing verdict counts as no information).
        """
        need = min_success if min_success is not None else getattr(self.layer, "min_success", None)
        outcomes = await settle(
            [factory for _, factory in calls],
            min_success=need if quorum else 0,
            straggler_s=getattr(self.layer, "straggler_s", None) if quorum else None,
            abandons=lambda exc: not isinstance(exc, CallRefused),  # calls in flight finish when money runs out
            fatal=lambda exc: isinstance(exc, CallbackError),
        )
        outputs = [_outcome(spec, outcome) for (spec, _), outcome in zip(calls, outcomes, strict=True)]
        # The trace lists these calls in the order they were planned, after the stage's earlier calls.
        these = {id(output) for output in outputs}
        self.recorded[:] = [output for output in self.recorded if id(output) not in these] + outputs
        refused = [o for o in outcomes if isinstance(o, CallRefused)]
        if refused:
            raise BudgetExceeded(f"layer {self.index + 1}: {refused[0]}; {len(refused)} call(s) not started")
        required = need or len(calls)
        succeeded = sum(output.ok for output in outputs)
        if quorum and succeeded < required:
            causes = [o.cause for o in outcomes if isinstance(o, CallFailed)]
            raise QuorumError(self.index + 1, required, succeeded, len(calls), causes, list(self.recorded), where)
        return outputs


def _outcome(spec: CallSpec, outcome: AgentOutput | Exception) -> AgentOutput:
    if isinstance(outcome, AgentOutput):
        return outcome
    if isinstance(outcome, CallFailed | CallRefused):
        return outcome.output
    if isinstance(outcome, Abandoned):
        return abandoned(spec, str(outcome))
    raise outcome  # the caller's callback failed, or a bug: let it surface


@dataclass(frozen=True)
class Estimate:
    """A stage's worst case: its cost (None when a model is unpriced) and the outputs it passes on."""

    cost: float | None
    unpriced: list[str]
    outputs: list[tuple[int, int]]  # (characters, tokens) of each output passed on, at its longest


@dataclass
class EstimateContext:
    """What a stage needs to price its calls before making them."""

    index: int
    layer: Layer
    conversation: list[Message]
    specs: list[CallSpec]
    pricing: Pricing
    earlier: list[Writer] = field(default_factory=list)  # every earlier stage's calls (who wrote the inputs)
    costs: list[float] = field(default_factory=list)
    unpriced: list[str] = field(default_factory=list)
    #: The worst case of a recipe an ``ask`` tool runs (the engine's planning gives it).
    recipe_cost: RecipeCost | None = None
    #: The worst case of a recipe run on a conversation, and its longest answer in tokens (a cascade tier's).
    answer_cost: AnswerCost | None = None

    @property
    def question(self) -> str:
        return _question(self.conversation)

    def price(
        self,
        spec: CallSpec,
        messages: list[Message],
        embedded: Sequence[tuple[int, int]],
        params: dict[str, Any] | None = None,
        times: int = 1,
    ) -> int:
        """Add a call's worst case (``times`` such calls); return the most tokens its answer can have.

        A call of an agent with tools counts its whole tool loop (``moa._tools.loop_worst_case``)."""
        settings = {**spec.params, **(params or {})}
        cost, unpriced = self._worst(replace(spec, params=settings), prompt_tokens(messages, embedded))
        if cost is None:
            self.unpriced += unpriced
        else:
            self.costs.append(cost * times)
        return output_tokens(self.pricing, spec.model, settings)

    def _worst(self, spec: CallSpec, tokens: int) -> tuple[float | None, list[str]]:
        return answer_worst_case(self.pricing, spec, tokens, self.recipe_cost)

    def price_costliest(
        self, specs: Sequence[CallSpec], messages: list[Message], embedded: Sequence[tuple[int, int]], times: int = 1
    ) -> int:
        """Add ``times`` calls each at the costliest of ``specs`` (any of them may be the one called); their
        longest answer."""
        worst: float | None = 0.0
        longest = 0
        for spec in specs:
            cost, unpriced = self._worst(spec, prompt_tokens(messages, embedded))
            if cost is None:
                self.unpriced += unpriced
            worst = None if cost is None or worst is None else max(worst, cost)
            longest = max(longest, output_tokens(self.pricing, spec.model, spec.params))
        if worst is not None and specs:
            self.costs.append(worst * times)
        return longest

    def price_recipe(self, recipe: Recipe, times: int = 1) -> int:
        """Add ``times`` runs of ``recipe`` on the conversation at their worst case; return the most tokens its
        answer can have (a recipe that answers in a stage: a cascade tier, a route)."""
        if self.answer_cost is None:
            self.unpriced.append(recipe.name)
            return 0
        cost, unpriced, longest = self.answer_cost(recipe, self.conversation)
        if cost is None:
            self.unpriced += unpriced or [recipe.name]
        else:
            self.costs.append(cost * times)
        return longest

    def result(self, outputs: list[tuple[int, int]]) -> Estimate:
        return Estimate(None if self.unpriced else sum(self.costs), sorted(set(self.unpriced)), outputs)


class Stage:
    """A stage kind's behaviour: subclass it, implement ``run``, and register it with ``moa.register_stage``.

    ``run`` makes the stage's calls through ``ctx.call`` / ``ctx.fanout`` and
    returns what it passes on, best first.  ``estimate`` gives its worst case
    for budgets and ``moa.plan``; the default assumes each of the config's
    ``calls(n)`` calls goes to the costliest of its agents with the whole
    conversation and every input quoted, and passes on ``outputs(n)``
    answers at the longest an input or an answer can be.  ``summary`` is the
    one-line finding the live view shows when the stage ends.
    """

    async def run(self, ctx: StageContext, inputs: list[Candidate]) -> Outcome:
        raise NotImplementedError(f"{type(self).__name__}.run")

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        calls = ctx.layer.calls(len(inputs))
        longest = max((tokens for _, tokens in inputs), default=0)
        if calls and ctx.specs:
            messages = [*ctx.conversation, {"role": "user", "content": ""}]
            longest = max(longest, ctx.price_costliest(ctx.specs, messages, list(inputs), times=calls))
        return ctx.result([(0, longest)] * ctx.layer.outputs(len(inputs)))

    def summary(self, outcome: Outcome, layer: int) -> str | None:
        """What the live view shows when the stage (1-based ``layer``) ends: its votes, ranks or verdicts."""
        return None


def writers_of(layers: Sequence[Layer], specs: Sequence[Sequence[CallSpec]]) -> dict[tuple[int, int, int], Writer]:
    """Every planned call site with its agent's system prompt (who wrote what a stage passes on)."""
    found = {}
    for layer, layer_specs in zip(layers, specs, strict=True):
        agents = layer.call_agents()
        for spec in layer_specs:
            site = spec.site
            found[(site.layer, site.agent, site.sample)] = Writer(spec, agents[site.agent].system)
    return found


def candidates(outputs: Sequence[AgentOutput]) -> list[Candidate]:
    """The candidates successful calls make, in order."""
    return [Candidate.of(output) for output in outputs if output.ok]


def quoted(inputs: Sequence[Candidate]) -> list[tuple[int, int]]:
    """(characters, tokens) of candidates quoted in a prompt, for its worst-case estimate."""
    return embedded((c.text, c.completion_tokens) for c in inputs)


def bind(call: Callable[..., Awaitable[AgentOutput]], *args: Any, **kwargs: Any) -> Factory:
    return lambda: call(*args, **kwargs)


def _question(conversation: Sequence[Message]) -> str:
    return next((str(m["content"]) for m in reversed(conversation) if m["role"] == "user"), "")
