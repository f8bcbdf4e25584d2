"""What a run returns: the answer and a JSON-able trace of every call.

``MoAResult.model_dump()`` (or ``model_dump_json()``) is the whole trace:
every layer, every agent's messages, text or error, tokens, cost and latency.
API keys are never part of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, computed_field


class Usage(BaseModel):
    """Token counts, as reported by the provider."""

    # ``total_tokens`` is computed: ignore it when a dumped trace is read back.
    model_config = ConfigDict(extra="ignore")

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class CallError(BaseModel):
    """Why a call failed."""

    type: str = Field(description="moa error class, e.g. `RateLimitedError`.")
    message: str
    status_code: int | None = None
    transient: bool = False


class ToolCall(BaseModel):
    """One function call an agent's tool loop ran (or refused to run), and what the model was given back."""

    id: str = Field("", description="The call's id, as the model's answer gave it.")
    name: str = Field(description="The function the model called (as it spelled it: it may be unknown).")
    arguments: Any = Field(None, description="Its arguments: the parsed JSON, or the text when it was not JSON.")
    result: str = Field("", description="What the model was given back (cut to 4,000 characters, secrets masked).")
    error: str | None = Field(
        None, description="Why the tool gave no result: unknown tool, bad arguments, an exception, a limit."
    )
    wall_s: float = Field(0.0, description="Seconds the tool ran.")
    step: int = Field(0, description="1-based model call of the agent's tool loop that asked for it.")
    usage: Usage = Field(default_factory=Usage, description="Tokens of the model calls the tool made (`ask`).")
    cost_usd: float | None = Field(0.0, description="Their cost; None when a model's price is unknown.")
    calls: list[AgentOutput] = Field(
        default_factory=list,
        description="The model calls the tool made (`ask`: the agent's call, or every call of the recipe it ran); "
        "their usage and cost are counted in the agent's own.",
    )


class AgentOutput(BaseModel):
    """One call: who made it, what it was sent, and what came back (text or error)."""

    layer: int = Field(description="1-based layer number.")
    agent: int = Field(
        description="0-based index of the agent among those its layer calls (`Layer.call_agents()`); one past "
        "them for a `verify` repair made by the model that wrote the answer."
    )
    sample: int = Field(0, description="0-based sample of that agent (`n > 1`).")
    step: int = Field(
        0,
        description="1-based step of a stage that calls an agent several times (`aggregate_seq` steps, "
        "`debate` rounds, judge and repair calls), else 0.",
    )
    name: str
    model: str
    messages: list[dict[str, Any]] = Field(default_factory=list)
    text: str | None = None
    error: CallError | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = Field(None, description="None when the model's price is unknown.")
    latency_s: float = 0.0
    attempts: int = 0
    top_logprobs: dict[str, float] | None = Field(
        None, description="First token's top alternatives {token: logprob}, when requested."
    )
    mean_logprob: float | None = Field(
        None,
        description="The mean logprob of the answer's tokens, when requested and given (`cascade` with a "
        "`confidence` score): exp of it is the answer's confidence.",
    )
    finish_reason: str | None = Field(None, description="Why the provider stopped (`stop`, `length`...), if said.")
    cached: bool = Field(
        False, description="Answered from the call cache: nothing was paid (`cost_usd` 0.0); `usage` is the answer's."
    )
    cost_saved_usd: float | None = Field(
        None, description="A cached answer: what it cost when it was made (None: unknown, or not cached)."
    )
    tool_calls: list[ToolCall] = Field(
        default_factory=list, description="Every function call of the agent's tool loop, in order (agents with tools)."
    )
    tool_steps: int = Field(
        0,
        description="Model calls of its tool loop, a failed or refused last one included (0: an agent without "
        "tools). With tools, `usage`, `cost_usd`, "
        "`attempts` and `latency_s` cover all of them and the calls its tools made, and `messages` are the last "
        "call's: the conversation with every earlier step's function calls and results.",
    )

    #: An embedding call's vectors (one per text), kept in memory only: traces show how many, not the numbers.
    _embeddings: tuple[tuple[float, ...], ...] = PrivateAttr(default=())

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None

    @property
    def price_usd(self) -> float | None:
        """What this call costs in use: its cost, or for a cached answer what it cost when it was made (None:
        unknown).  Eval summaries, decisions and searches count this; ``cost_usd`` is what this run paid."""
        return self.cost_saved_usd if self.cached else self.cost_usd

    @property
    def embeddings(self) -> tuple[tuple[float, ...], ...]:
        """An embedding call's vectors, one per text embedded, in order (empty for any other call)."""
        return self._embeddings

    @property
    def model_calls(self) -> int:
        """Model calls this output stands for: each step of its tool loop and every call its tools made (1
        without tools)."""
        return max(1, self.tool_steps) + sum(call.model_calls for tool in self.tool_calls for call in tool.calls)


ToolCall.model_rebuild()


def unpriced_models(outputs: Iterable[AgentOutput]) -> set[str]:
    """The models whose price is unknown among these calls and the calls their tools made."""
    found: set[str] = set()
    for output in outputs:
        inner = unpriced_models(call for tool in output.tool_calls for call in tool.calls)
        # An agent's cost is unknown when its own model's is, or a model its tools called is.
        if output.cost_usd is None and not inner:
            found.add(output.model)
        found |= inner
    return found


class Verdict(BaseModel):
    """One check of a candidate: a validator's, a judge's or a vote's finding."""

    check: str = Field(description="What checked it, e.g. `regex`, `json_schema`, `llm`, `python`.")
    passed: bool
    message: str = Field("", description="Why it failed (cut to 300 characters, secrets masked).")
    layer: int = Field(0, description="The 1-based layer whose check it is.")


class Candidate(BaseModel):
    """An answer one stage passes to the next, with what the stages learned about it."""

    text: str
    layer: int = Field(description="1-based layer of the call that wrote it.")
    agent: int = 0
    sample: int = 0
    step: int = 0
    model: str = ""
    completion_tokens: int = Field(0, description="Its length in tokens, when known (budgets count it).")
    finish_reason: str | None = Field(None, description="`length` when it was cut by `max_tokens`.")
    answer: str | None = Field(None, description="The answer extracted from it (`vote`), if any.")
    votes: int | None = Field(None, description="How many candidates gave the same answer (`vote`).")
    score: float | None = Field(None, description="Its score (`rank`): higher is better.")
    verdicts: list[Verdict] = Field(default_factory=list, description="Every check it went through (`verify`).")
    agreement: int | None = Field(
        None, description="How many independent candidates gave its answer (`verify` with an `agree` check)."
    )
    execution: dict[str, Any] | None = Field(
        None,
        description="The run of its program (`execute`): code, exit status, output (cut), time, the limit hit, "
        "why it gave no answer, and the isolation in force.",
    )

    @classmethod
    def of(cls, output: AgentOutput) -> Candidate:
        """The candidate a successful call makes."""
        return cls.model_construct(
            text=output.text or "",
            layer=output.layer,
            agent=output.agent,
            sample=output.sample,
            step=output.step,
            model=output.model,
            completion_tokens=output.usage.completion_tokens,
            finish_reason=output.finish_reason,
            answer=None,
            votes=None,
            score=None,
            verdicts=[],
            agreement=None,
            execution=None,
        )


class Decision(BaseModel):
    """One choice a controlling stage made (`cascade`, `route`): what it chose, on what score, and why."""

    option: str = Field(description="The tier or route it is about (its `name`, else `tier N` / `route N`).")
    index: int = Field(description="0-based index of that tier or route in the stage's config.")
    action: Literal["accept", "escalate", "failed", "run", "route"] = Field(
        description="`accept`: this answer is the stage's; `escalate`: its score fell short, the next tier runs; "
        "`failed`: its call failed (the cascade goes on); `run`: cost-aware, this tier runs next; `route`: the "
        "router sent the prompt here."
    )
    score: float | None = Field(None, description="The score the choice read (None: none could be had).")
    threshold: float | None = Field(None, description="The bar it was held to, when there is one.")
    gain: float | None = Field(
        None, description="Cost-aware: expected quality gained minus `cost_weight` x expected cost, for `run`."
    )
    reason: str = Field("", description="Why, in words.")
    cost_usd: float | None = Field(
        None, description="What the tier or route it is about cost to answer (its scoring excluded), once it ran."
    )
    tokens: int | None = Field(None, description="The tokens that answer took, once it ran.")


class LayerResult(BaseModel):
    """One layer: all of its calls, failed ones included, in agent order, and the candidates it passed on."""

    index: int = Field(description="1-based layer number.")
    kind: str
    outputs: list[AgentOutput]
    latency_s: float = 0.0
    candidates: list[Candidate] = Field(
        default_factory=list,
        description="What the layer passed on to the next, best first, with scores, votes and verdicts "
        "(empty in traces written before stages kept them: see `passed_on()`).",
    )
    considered: list[Candidate] = Field(
        default_factory=list,
        description="Every candidate a selecting stage looked at, in order, with its findings (`vote`: "
        "answer and votes; `rank`: score; `verify`: verdicts, repairs and fallbacks included); empty for "
        "stages that write answers.",
    )

    decisions: list[Decision] = Field(
        default_factory=list,
        description="Every routing and escalation choice of the stage (`cascade`, `route`), in order.",
    )

    @property
    def answered_by(self) -> str | None:
        """The tier or route whose answer the stage passed on (None for stages that choose no such thing)."""
        chosen = [d.option for d in self.decisions if d.action in ("accept", "route")]
        return chosen[-1] if chosen else None

    def passed_on(self) -> list[Candidate]:
        """What the layer passed on: ``candidates``; for a trace written before stages kept them, the
        successful outputs (of a stepped layer, the last successful step's)."""
        if self.candidates:
            return list(self.candidates)
        succeeded = self.succeeded
        if any(output.step for output in succeeded):
            return [Candidate.of(max(succeeded, key=lambda output: output.step))]
        return [Candidate.of(output) for output in succeeded]

    @property
    def succeeded(self) -> list[AgentOutput]:
        return [output for output in self.outputs if output.ok]

    @property
    def failed(self) -> list[AgentOutput]:
        return [output for output in self.outputs if not output.ok]


class MoAResult(BaseModel):
    """A finished run."""

    recipe: str
    prompt: list[dict[str, Any]]
    output: str = Field(description="The final aggregator's answer.")
    layers: list[LayerResult]
    usage: Usage
    cost_usd: float | None = Field(description="Total USD cost; None when any successful call's model is unpriced.")
    unpriced_models: list[str] = Field(default_factory=list, description="Models whose cost is unknown in this run.")
    latency_s: float

    @property
    def calls(self) -> list[AgentOutput]:
        return [output for layer in self.layers for output in layer.outputs]

    @property
    def model_calls(self) -> int:
        """Model calls the run made, every step of every tool loop and every call its tools made included."""
        return sum(output.model_calls for output in self.calls)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def confidence(self) -> Literal["verified", "unverified"] | None:
        """`verified`: the answer passed every check it went through (a validator, an agreement of independent
        candidates); `unverified`: it went on without passing them (`if_none_pass: last`); None: nothing checked it."""
        final = self.layers[-1].candidates[:1] if self.layers else []
        if not final or not final[0].verdicts:
            return None
        return "verified" if all(v.passed for v in final[0].verdicts) else "unverified"
