"""``debate``: multi-agent debate (Du et al. 2023).

Round 1: every agent answers the conversation.  Each later round, every agent's
own conversation goes on with its previous answer (as the assistant) and a
user turn holding the other agents' latest answers, rendered by the layer's
template; it answers again.  The last round's answers go on, in agent order;
a ``vote`` or ``aggregate`` stage after the debate picks the final one.  An
agent whose call fails drops out of later rounds; each round needs the layer's
quorum (``min_success``, default every agent); when fewer than two agents are
left, the debate ends there.
"""

from __future__ import annotations

from moa._call import CallSpec
from moa._prompt import Message, build_messages
from moa.recipe import DebateLayer
from moa.result import Candidate

from .base import Estimate, EstimateContext, Outcome, Stage, StageContext, bind, quoted


class Debate(Stage):
    async def run(self, ctx: StageContext, inputs: list[Candidate]) -> Outcome:
        layer = ctx.layer
        assert isinstance(layer, DebateLayer)
        histories: dict[int, list[Message]] = {
            n: build_messages(ctx.conversation, system=layer.agents[spec.site.agent].system)
            for n, spec in enumerate(ctx.specs)
        }
        latest: dict[int, Candidate] = {}
        shown: dict[int, list[Candidate]] = {n: [] for n in histories}  # answers quoted in each agent's history
        for round_number in range(1, layer.rounds + 1):
            if round_number > 1 and len(latest) < 2:
                break  # a lone survivor has no one to debate with: its answer stands
            calls, debaters = [], []
            for n, spec in enumerate(ctx.specs):
                if n not in histories:
                    continue  # dropped out: its call failed in an earlier round
                others = [latest[m] for m in latest if m != n]
                messages = histories[n]
                if round_number > 1:
                    turn = layer.compiled_template.render(
                        responses=[c.text for c in others], layer=ctx.index + 1, step=round_number
                    )
                    messages = [
                        *messages,
                        {"role": "assistant", "content": latest[n].text},
                        {"role": "user", "content": turn},
                    ]
                    histories[n] = messages
                    shown[n] += [latest[n], *others]
                calls.append((spec, bind(ctx.call, spec, messages, step=round_number, embedded=quoted(shown[n]))))
                debaters.append(n)
            outputs = await ctx.fanout(
                calls, min_success=_quorum(layer, ctx.specs), where=f"debate round {round_number}"
            )
            latest = {n: Candidate.of(o) for n, o in zip(debaters, outputs, strict=True) if o.ok}
            for n, output in zip(debaters, outputs, strict=True):
                if not output.ok:
                    del histories[n]
        return Outcome([latest[n] for n in sorted(latest)])

    def estimate(self, ctx: EstimateContext, inputs: list[tuple[int, int]]) -> Estimate:
        layer = ctx.layer
        assert isinstance(layer, DebateLayer)
        longest = [0] * len(ctx.specs)  # each agent's longest answer, in tokens
        history_tokens = [0] * len(ctx.specs)  # its own earlier answers and the turns quoting the others
        for round_number in range(1, layer.rounds + 1):
            answers = []
            for n, spec in enumerate(ctx.specs):
                messages = build_messages(ctx.conversation, system=layer.agents[spec.site.agent].system)
                quoted_tokens: list[tuple[int, int]] = []
                if round_number > 1:
                    others = [tokens for m, tokens in enumerate(longest) if m != n]
                    turn = layer.compiled_template.render(
                        responses=[""] * len(others), layer=ctx.index + 1, step=round_number
                    )
                    history_tokens[n] += longest[n] + sum(others)
                    messages = [*messages, {"role": "user", "content": turn * (round_number - 1)}]
                    quoted_tokens = [(0, history_tokens[n])]
                answers.append(ctx.price(spec, messages, quoted_tokens))
            longest = answers
        return ctx.result([(0, tokens) for tokens in longest])


def _quorum(layer: DebateLayer, specs: list[CallSpec]) -> int:
    return layer.min_success or len(specs)
