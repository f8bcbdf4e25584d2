"""A calibrated cascade of two local models against the best single model and against always escalating.

Serve Qwen2.5-Coder-0.5B on 127.0.0.1:8765 first (evals/README.md), then:
    OPENAI_API_KEY=any python benchmarks/cascade_experiment.py [--out runs/cascade] [--holdout 0.3]
1. ``moa eval qa`` of evals/recipes/local-cascade-always.yaml (SmolLM2-135M, then Qwen, both on every question,
   each answer scored by its confidence) on evals/short-answer-48.jsonl;
2. ``moa calibrate`` fits SmolLM2's threshold on the training split for Qwen's accuracy at least cost, and
   reports the fit on the held-out split (replayed from the recorded answers: both tiers answered every question);
3. ``moa eval qa`` of the fitted cascade, live, with ``--baseline`` qwen-single (flips and McNemar p).
Runs resume from their checkpoints.  The table: accuracy, calls and tokens per question.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def moa(*args: str) -> int:
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY") or "sk-local"}
    print("$ moa " + " ".join(args), file=sys.stderr, flush=True)
    return subprocess.run([sys.executable, "-m", "moa", *args], env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "cascade")
    parser.add_argument("--data", type=Path, default=ROOT / "evals" / "short-answer-48.jsonl")
    parser.add_argument("--holdout", default="0.3")
    parser.add_argument("--seed", default="0")
    args = parser.parse_args()
    recipe = ROOT / "evals" / "recipes" / "local-cascade-always.yaml"
    always, fitted, live = args.out / "always", args.out / "fitted.yaml", args.out / "fitted"
    if moa("eval", "qa", "-r", str(recipe), "--data", str(args.data), "--out", str(always)) not in (0, 1):
        return 1
    if moa("calibrate", "-r", str(recipe), "--run", str(always), "--data", str(args.data), "--out", str(fitted),
           "--holdout", args.holdout, "--seed", args.seed) != 0:  # fmt: skip
        return 1
    baseline = ROOT / "evals" / "recipes" / "qwen-single.yaml"
    moa("eval", "qa", "-r", str(fitted), "--data", str(args.data), "--out", str(live), "--baseline", str(baseline))
    print(table(always, live, args.data))
    return 0


def table(always: Path, live: Path, data: Path) -> str:
    from moa.eval._scoring import is_correct
    from moa.eval.qa import read_questions

    questions = {str(row["id"]): row for row in read_questions(data)}
    items = [json.loads(line) for line in (always / "items.jsonl").read_text().splitlines()]
    n = len(items)
    rows = ["| run | accuracy | calls / q | tokens / q |", "|---|---|---|---|"]
    for tier in (0, 1):
        right = tokens = 0
        for item in items:
            (layer,) = item["traces"][-1]["layers"]
            decision = layer["decisions"][tier]
            tokens += decision.get("tokens") or 0
            answer = next((c for c in layer["considered"] if c["step"] == tier + 1), None)
            right += bool(answer and is_correct(answer["text"], questions[str(item["id"])]))
        name = ["SmolLM2-135M alone (tier 1 of the always run)", "Qwen alone (tier 2 of the always run)"][tier]
        rows.append(f"| {name} | {right}/{n} ({100 * right / n:.1f} %) | 1.00 | {tokens / n:.0f} |")
    for label, folder in (("always escalate (both, Qwen answers)", always), ("calibrated cascade, live", live),
                          ("qwen-single, live (--baseline)", live / "baseline")):  # fmt: skip
        summary = json.loads((folder / "summary.json").read_text())
        finished = max(1, summary["finished"])
        rows.append(f"| {label} | {summary['correct']}/{summary['attempted']} ({summary['score']:.1f} %) | "
                    f"{summary['calls_per_item']:.2f} | {summary['tokens'] / finished:.0f} |")  # fmt: skip
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
