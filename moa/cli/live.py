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
from moa.result import LayerResult

_STYLES = {
    "queued": "dim",
    "running": "yellow",
    "retrying": "magenta",
    "done": "green",
    "failed": "bold red",
    "not needed": "dim",
}


@dataclass
class _Row:
    """One agent sample's calls (or one step's, for stages whose steps are shown apart)."""

    label: str
    model: str
    state: str = "queued"
    detail: str = ""
    started: float | None = None
    seconds: float | None = None
    tokens: int = 0
    cost: float | None = 0.0
    planned: int = 1  # calls this row stands for (a judge's verdicts, an extractor's answers...)
    running: int = 0
    finished: int = 0
    failed: int = 0


@dataclass
class _Layer:
    title: str
    steps_apart: bool  # one row per step (aggregate_seq steps, debate rounds); else per agent sample
    rows: dict[tuple[int, int, int], _Row] = field(default_factory=dict)
    summary: str | None = None  # the stage's finding when it ends: votes, rank order, verdicts


class LiveView:
    """Feed it with ``on_event`` and ``on_token``; use as a context manager around the run."""

    def __init__(self, recipe: Recipe, console: Console, *, stream: bool = True) -> None:
        self.console = console
        self.stream = stream
        self.max_attempts = recipe.retry.max_attempts
        self.layers: list[_Layer] = []
        self.started = time.perf_counter()
        self.streaming = False
        self._recipe = recipe
        for layer_plan, layer in zip(plan(recipe), recipe.layers, strict=True):
            calls = f"{layer_plan.calls} call{'s' if layer_plan.calls != 1 else ''}"
            calls = f"at most {calls}" if layer.calls_vary else calls
            entry = _Layer(f"Layer {layer_plan.index} · {layer_plan.kind} · {calls}", layer.step_name is not None)
            agents = layer.call_agents()
            single = len(agents) == 1 and agents[0].n == 1
            for a, agent in enumerate(agents):
                for sample in range(agent.n):
                    label = agent.label if agent.n == 1 else f"{agent.label} #{sample + 1}"
                    if not entry.steps_apart:
                        # Calls made several times per agent (a judge's verdicts) share their agent's row.
                        entry.rows[(a, sample, 0)] = _Row(
                            label, agent.model, planned=max(1, layer_plan.calls) if single else 1
                        )
                    for step in range(1, (layer.planned_steps() or 0) + 1):
                        entry.rows[(a, sample, step)] = _Row(f"{label} {layer.step_name} {step}", agent.model)
            self.layers.append(entry)
        self._live = Live(self, console=console, refresh_per_second=8, transient=False)

    # -------------------------------------------------------------- events

    def on_event(self, event: Event) -> None:
        if event.kind == "layer_finished" and event.result is not None:
            self._finished(event.layer, event.result)
            return
        site = event.site
        if site is None:
            return
        layer = self.layers[site.layer - 1]
        step = event.step if layer.steps_apart else 0
        key = (site.agent, site.sample, step)
        row = layer.rows.get(key)
        if row is None:  # steps, repairs and escalations appear as they start
            config = self._recipe.layers[site.layer - 1]
            agents = config.call_agents()
            several = site.agent < len(agents) and agents[site.agent].n > 1
            label = f"{site.agent_name} #{site.sample + 1}" if several else site.agent_name
            label = f"{label} {config.step_name} {event.step}" if step and config.step_name else label
            row = layer.rows[key] = _Row(label, site.model, planned=0)
        if event.kind == "call_started":
            if event.attempt == 1 and event.tool_step <= 1:  # a tool loop's later steps are the same answer
                row.running += 1
                row.planned = max(row.planned, row.running + row.finished + row.failed)
            row.state = "running" if event.attempt == 1 else "retrying"
            row.detail = "" if event.attempt == 1 else f"{event.attempt}/{self.max_attempts}"
            if event.tool_step > 1:
                row.detail = f"step {event.tool_step}" + (f", {row.detail}" if row.detail else "")
            row.started = row.started or time.perf_counter()
        elif event.kind == "tool_finished" and event.tool is not None:
            row.detail = f"step {event.tool_step}: {event.tool.name}" + (" failed" if event.tool.error else "")
        elif event.kind == "call_retried":
            if self.streaming:
                self.console.print(Text("\n[the answer's stream broke off; retrying from the start]", style="dim"))
            row.state = "retrying"
            row.detail = f"{event.attempt + 1}/{self.max_attempts} in {event.delay_s:.1f} s"
        elif event.kind in ("call_finished", "call_failed") and event.output is not None:
            output = event.output
            row.running = max(0, row.running - 1)
            row.finished += output.ok
            row.failed += not output.ok
            row.tokens += output.usage.total_tokens
            row.seconds = (row.seconds or 0.0) + output.latency_s if row.planned > 1 else output.latency_s
            row.cost = None if row.cost is None or output.cost_usd is None else row.cost + output.cost_usd
            if row.running:
                row.state, row.detail = "running", ""
            elif output.ok or row.finished:
                row.state, row.detail = "done", ""
            else:
                row.state, row.detail = "failed", output.error.type if output.error else ""
            if row.planned > 1 or (row.failed and row.finished):
                row.detail = f"{row.finished}/{max(row.planned, row.finished + row.failed)}" + (
                    f", {row.failed} failed" if row.failed else ""
                )

    def _finished(self, index: int, result: LayerResult) -> None:
        from moa._stages import Outcome, stage_of

        layer = self._recipe.layers[index - 1]
        entry = self.layers[index - 1]
        for row in entry.rows.values():
            if row.state == "queued":  # a fallback or repair that was not needed
                row.state, row.planned = "not needed", 0
            elif row.planned > 1:  # the plan counted the most it could receive; these are the calls it made
                row.planned = row.finished + row.failed
                row.detail = f"{row.finished}/{row.planned}" + (f", {row.failed} failed" if row.failed else "")
        made = len(result.outputs)
        entry.title = f"{entry.title.rsplit(' · ', 1)[0]} · {made} call{'s' if made != 1 else ''}"
        self.layers[index - 1].summary = stage_of(layer).summary(
            Outcome(list(result.candidates), list(result.considered)), index
        )

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
            if layer.summary:
                branch.add(Text(visible(layer.summary), style="cyan"))
        return root

    def totals(self) -> Table:
        rows = [row for layer in self.layers for row in layer.rows.values()]
        costs = [r.cost for r in rows if r.finished]
        cost = None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)
        planned = sum(max(r.planned, r.finished + r.failed + r.running) for r in rows)
        table = Table.grid(padding=(0, 2))
        table.add_row(
            Text(f"calls {sum(r.finished for r in rows)}/{planned}", style="bold"),
            Text(f"failed {sum(r.failed for r in rows)}"),
            Text(f"tokens {sum(r.tokens for r in rows)}"),
            Text(_money(cost) if cost is None else f"cost {_money(cost)}"),
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
