"""What cascades and routers did over an eval: who answered, who ran, and what it cost against the costliest way.

Read from the traces' decisions (``LayerResult.decisions``): for each layer
that escalates or routes, the share of runs each tier or route answered, the
share in which it ran, its mean cost when it ran, and the cost saved against
always running the costliest of them alone (its mean cost when it ran: an
estimate from the same items, where it did run).  Costs are in USD when every
cost is known, else in tokens.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any


def control_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """{"layer N (kind)": findings} for each controlling layer of the traces; None when there is none."""
    found: dict[tuple[int, str], _Layer] = {}
    for record in records:
        for trace in record.get("traces") or []:
            for layer in trace.get("layers") or []:
                decisions = layer.get("decisions") or []
                if decisions:
                    found.setdefault((layer["index"], layer["kind"]), _Layer()).add(decisions)
    if not found:
        return None
    return {f"layer {index} ({kind})": stats.findings() for (index, kind), stats in sorted(found.items())}


class _Layer:
    def __init__(self) -> None:
        self.runs = 0
        self.answered: Counter[str] = Counter()
        self.ran: Counter[str] = Counter()
        self.usd: dict[str, list[float | None]] = defaultdict(list)
        self.tokens: dict[str, list[int]] = defaultdict(list)
        self.spent_usd: list[float | None] = []
        self.spent_tokens: list[int] = []

    def add(self, decisions: list[dict[str, Any]]) -> None:
        self.runs += 1
        chosen = [d["option"] for d in decisions if d.get("action") in ("accept", "route")]
        if chosen:
            self.answered[chosen[-1]] += 1
        spent: dict[str, tuple[float | None, int]] = {}
        for decision in decisions:
            if decision.get("tokens") is not None:
                spent[decision["option"]] = (decision.get("cost_usd"), int(decision["tokens"]))
        for option, (usd, tokens) in spent.items():
            self.ran[option] += 1
            self.usd[option].append(usd)
            self.tokens[option].append(tokens)
        costs = [usd for usd, _ in spent.values()]
        self.spent_usd.append(None if any(c is None for c in costs) else sum(c or 0.0 for c in costs))
        self.spent_tokens.append(sum(tokens for _, tokens in spent.values()))

    def findings(self) -> dict[str, Any]:
        priced = all(c is not None for c in self.spent_usd) and all(
            c is not None for costs in self.usd.values() for c in costs
        )
        unit = "usd" if priced else "tokens"
        per_item = _mean(self.spent_usd if priced else self.spent_tokens)
        if_always = {option: _mean(self.usd[option] if priced else self.tokens[option]) for option in sorted(self.ran)}
        costliest = max(if_always, key=lambda option: if_always[option] or 0.0) if if_always else None
        top = if_always.get(costliest) if costliest else None
        return {
            "runs": self.runs,
            "answered_by": {option: count / self.runs for option, count in self.answered.most_common()},
            "ran": {option: count / self.runs for option, count in self.ran.most_common()},
            "unit": unit,
            "cost_per_run": per_item,
            "cost_if_always": if_always,
            "costliest": costliest,
            "saved_vs_costliest": (1 - per_item / top) if top and per_item is not None else None,
        }


def _mean(values: Sequence[float | int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known and len(known) == len(values) else None


def control_lines(name: str, summary: Mapping[str, Any]) -> list[str]:
    """One line per controlling layer of an eval's summary (its ``control``), for the end of the eval."""
    lines = []
    for layer, found in (summary.get("control") or {}).items():
        shares = ", ".join(f"{option} {100 * share:.0f} %" for option, share in found["answered_by"].items())
        line = f"{name}: {layer} answered by {shares or 'none'}"
        saved, costliest = found.get("saved_vs_costliest"), found.get("costliest")
        if saved is not None and costliest:
            if found["unit"] == "usd":
                change = f"{100 * saved:.0f} % less cost" if saved >= 0 else f"{-100 * saved:.0f} % more cost"
            else:
                change = f"{100 * saved:.0f} % fewer tokens" if saved >= 0 else f"{-100 * saved:.0f} % more tokens"
            line += f"; {change} than always {costliest} (its mean where it ran)"
        lines.append(line)
    return lines
