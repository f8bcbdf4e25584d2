"""How a cascade tier or a route answers the conversation: its agent's one call, or a whole run of its recipe.

A recipe's calls become calls of the stage's layer, after the stage's own agents,
named ``<tier or route>: <call>``; its answer counts as one agent (for agreement).
What the answer cost (USD, None when a model is unpriced; tokens) goes with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from moa._call import CallSpec
from moa._errors import BudgetExceeded, CallbackError, DeadlineExceeded, MoAError
from moa._prompt import build_messages
from moa.recipe import Answerer
from moa.result import AgentOutput, Candidate

from .base import StageContext, bind


@dataclass
class Answer:
    """What asking one tier or route gave: its candidate (None when it failed, and why), and what it cost."""

    candidate: Candidate | None
    failure: str | None
    cost_usd: float | None
    tokens: int
    output: AgentOutput | None = None  # an agent's call (its logprobs)


class Answering:
    """Asks the tiers or routes of one stage; ``specs`` maps an agent answerer's index to its planned call."""

    def __init__(self, ctx: StageContext, specs: dict[int, CallSpec]) -> None:
        self.ctx = ctx
        self.specs = specs
        self.next_agent = len(ctx.specs)  # ids for a recipe's answer and calls, after the stage's own agents

    async def ask(self, index: int, answerer: Answerer, label: str, params: dict[str, object] | None = None) -> Answer:
        if answerer.agent is not None:
            return await self._agent(index, answerer, params)
        return await self._recipe(index, answerer, label)

    async def _agent(self, index: int, answerer: Answerer, params: dict[str, object] | None) -> Answer:
        assert answerer.agent is not None
        spec = self.specs[index]
        messages = build_messages(self.ctx.conversation, system=answerer.agent.system)
        call = bind(self.ctx.call, spec, messages, step=index + 1, params=params)
        (output,) = await self.ctx.fanout([(spec, call)], quorum=False)  # a failed call is returned, not raised
        cost, tokens = output.price_usd, output.usage.total_tokens  # (a cached answer at its price)
        if not output.ok:
            why = f"{output.error.type}: {output.error.message}" if output.error else "no answer"
            return Answer(None, f"its call failed ({why})", cost, tokens, output)
        return Answer(Candidate.of(output), None, cost, tokens, output)

    async def _recipe(self, index: int, answerer: Answerer, label: str) -> Answer:
        ctx = self.ctx
        if ctx.tools is None or ctx.tools.run_recipe is None:
            return Answer(None, "its recipe cannot run here (no engine runs this stage)", None, 0)
        mine = self.next_agent
        self.next_agent += 1
        try:
            result = await ctx.tools.run_recipe(answerer._loaded, ctx.conversation)
        except MoAError as exc:
            partial = getattr(exc, "partial", None)
            cost, tokens = self._record(index, label, list(partial.calls) if partial is not None else [])
            if isinstance(exc, BudgetExceeded | CallbackError | DeadlineExceeded):
                raise  # the run's limits, not the recipe's want of an answer: the run stops
            lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines() if line.strip()]
            why = " ".join(lines)[:300]  # its causes too (a QuorumError lists them on lines of their own)
            return Answer(None, f"its recipe failed ({type(exc).__name__}: {why})", cost, tokens)
        cost, tokens = self._record(index, label, list(result.calls))
        final = result.layers[-1].passed_on()[:1] if result.layers else []
        candidate = Candidate.model_construct(
            text=result.output, layer=ctx.index + 1, agent=mine, sample=0, step=index + 1,
            model=f"recipe:{answerer._loaded.name}", completion_tokens=final[0].completion_tokens if final else 0,
            finish_reason=final[0].finish_reason if final else None, answer=None, votes=None, score=None,
            verdicts=[], agreement=None, execution=None,
        )  # fmt: skip
        return Answer(candidate, None, cost, tokens)

    def _record(self, index: int, label: str, calls: list[AgentOutput]) -> tuple[float | None, int]:
        """A recipe's calls, as this layer's (named by the tier or route); what they cost."""
        for call in calls:
            update = {"layer": self.ctx.index + 1, "agent": self.next_agent, "step": index + 1,
                      "name": f"{label}: {call.name}"}  # fmt: skip
            self.next_agent += 1
            self.ctx.recorded.append(call.model_copy(update=update))
        costs = [call.price_usd for call in calls]
        cost = None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)
        return cost, sum(call.usage.total_tokens for call in calls)
