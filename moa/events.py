"""Progress events, delivered to the optional ``on_event`` callback of ``moa.run``.

The callback is called synchronously from the event loop: keep it quick (the
CLI's live view only updates its state there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from moa._errors import CallSite, ProviderError
from moa.result import AgentOutput, LayerResult, ToolCall

EventKind = Literal[
    "layer_started", "call_started", "call_retried", "tool_finished", "call_finished", "call_failed", "layer_finished"
]


@dataclass(frozen=True)
class Event:
    """Something happened to a layer or call.

    - ``layer_started``: ``layer`` is set (1-based);
    - ``layer_finished``: ``layer``, and ``result``: the layer's calls and the candidates it passed on,
      with their votes, scores or verdicts;
    - ``call_started``: ``site``, ``attempt``;
    - ``call_retried``: ``site``, ``attempt`` (the one that failed), ``error``, ``delay_s``;
    - ``call_finished`` / ``call_failed``: ``site``, ``output`` (with text or error);
    - ``tool_finished``: ``site``, ``tool`` (the function call an agent's tool loop ran, with its result).

    An agent with tools makes several model calls for one answer: each attempt of each sends
    ``call_started`` (``tool_step`` says which call of the loop: 1, 2, ...), and the answer ends with one
    ``call_finished`` or ``call_failed`` whose ``output`` covers the whole loop.
    """

    kind: EventKind
    layer: int
    site: CallSite | None = None
    step: int = 0  # 1-based step of a stage that calls an agent several times (see `AgentOutput.step`), else 0
    attempt: int = 0
    error: ProviderError | None = None
    delay_s: float = 0.0
    output: AgentOutput | None = None
    result: LayerResult | None = None
    tool_step: int = 0  # 1-based model call of an agent's tool loop; 0 for an agent without tools
    tool: ToolCall | None = None


EventCallback = Callable[[Event], None]
