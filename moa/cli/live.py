"""The CLI's live view: a tree of layers and agents with their state, then the streamed answer.

It only consumes ``Event``s and tokens, so it works for any provider and is
tested with a recording console.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from moa._engine import plan
from moa.cli._common import visible
from moa.events import Event
from moa.recipe import Recipe

_STYLES = {
    "queued": "dim",
    "running": "yellow",
    "retrying": "magenta",
    "done": "green",
    "failed": "bold red",
}


@dataclass
class _Row:
    label: str
    model: str
    state: str = "queued"
    detail: str = ""
    started: float | None = None
    seconds: float | None = None
    tokens: int = 0
    cost: float | None = None


@dataclass
class _Layer:
    title: str
    rows: dict[tuple[int, int, int], _Row] = field(default_factory=dict)


class LiveView:
    """Feed it with ``on_event`` and ``on_token``; use as a context manager around the run."""

    def __init__(self, recipe: Recipe, console: Console, *, stream: bool = True) -> None:
        self.console = console
        self.stream = stream
        self.max_attempts = recipe.retry.max_attempts
        self.layers: list[_Layer] = []
        self.started = time.perf_counter()
        self.streaming = False
        for layer_plan, layer in zip(plan(recipe), recipe.layers, strict=True):
            calls = f"{layer_plan.calls} call{'s' if layer_plan.calls != 1 else ''}"
            entry = _Layer(f"Layer {layer_plan.index} · {layer_plan.kind} · {calls}")
            if layer.kind != "aggregate_seq":
                for a, agent in enumerate(layer.agents):
                    for s in range(agent.n):
                        label = agent.label if agent.n == 1 else f"{agent.label} #{s + 1}"
                        entry.rows[(a, s, 0)] = _Row(label, agent.model)
            self.layers.append(entry)
        self._live = Live(self, console=console, refresh_per_second=8, transient=False)

    # -------------------------------------------------------------- events

    def on_event(self, event: Event) -> None:
        site = event.site
        if site is None:
            return
        layer = self.layers[site.layer - 1]
        key = (site.agent, site.sample, event.step)
        row = layer.rows.get(key)
        if row is None:  # aggregate_seq steps appear as they start
            row = layer.rows[key] = _Row(f"{site.agent_name} step {event.step}", site.model)
        if event.kind == "call_started":
            row.state = "running" if event.attempt == 1 else "retrying"
            row.detail = "" if event.attempt == 1 else f"{event.attempt}/{self.max_attempts}"
            row.started = row.started or time.perf_counter()
        elif event.kind == "call_retried":
            if self.streaming:
                self.console.print(Text("\n[the answer's stream broke off; retrying from the start]", style="dim"))
            row.state = "retrying"
            row.detail = f"{event.attempt + 1}/{self.max_attempts} in {event.delay_s:.1f} s"
        elif event.kind in ("call_finished", "call_failed") and event.output is not None:
            output = event.output
            row.state = "done" if output.ok else "failed"
            row.detail = "" if output.ok else (output.error.type if output.error else "")
            row.seconds = output.latency_s
            row.tokens = output.usage.total_tokens
            row.cost = output.cost_usd

    def on_token(self, text: str) -> None:
        if not self.stream:
            return
        if not self.streaming:
            self.streaming = True
            self._live.stop()  # the answer scrolls normally below the final tree
            self.console.print(Text("Answer", style="bold"))
        self.console.file.write(visible(text))  # a model's escape sequences never reach the terminal raw
        self.console.file.flush()

    # ------------------------------------------------------------- drawing

    def __rich__(self) -> RenderableType:
        return Group(self.tree(), self.totals())

    def tree(self) -> Tree:
        root = Tree(Text("moa", style="bold"), guide_style="dim")
        now = time.perf_counter()
        for layer in self.layers:
            branch = root.add(Text(layer.title, style="bold cyan"))
            for row in layer.rows.values():
                seconds = row.seconds if row.seconds is not None else (now - row.started if row.started else None)
                line = Text()
                line.append(f"{visible(row.label):<18}", style="bold")
                line.append(f" {visible(row.model):<28}", style="dim")
                state = f"{row.state} {row.detail}".strip()
                line.append(f" {state:<22}", style=_STYLES.get(row.state, ""))
                line.append(f" {seconds:6.1f} s" if seconds is not None else " " * 9)
                line.append(f" {row.tokens:6d} tok" if row.tokens else " " * 11)
                line.append(f"  {_money(row.cost)}" if row.state == "done" else "")
                branch.add(line)
        return root

    def totals(self) -> Table:
        rows = [row for layer in self.layers for row in layer.rows.values()]
        done = [r for r in rows if r.state == "done"]
        costs = [r.cost for r in done]
        cost = None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)
        table = Table.grid(padding=(0, 2))
        table.add_row(
            Text(f"calls {len(done)}/{len(rows)}", style="bold"),
            Text(f"failed {sum(r.state == 'failed' for r in rows)}"),
            Text(f"tokens {sum(r.tokens for r in rows)}"),
            Text(f"cost {_money(cost)}"),
            Text(f"elapsed {time.perf_counter() - self.started:.1f} s"),
        )
        return table

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.streaming:
            self.console.file.write("\n")
            self.console.print(self.totals())
        else:
            self._live.stop()


def _money(cost: float | None) -> str:
    return "cost unknown" if cost is None else f"${cost:.4f}"
