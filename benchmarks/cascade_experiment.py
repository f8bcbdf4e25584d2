"""A calibrated cascade on local models against the best single model and against always escalating.

Serve Qwen2.5-Coder-0.5B on 127.0.0.1:8765 first (evals/README.md), then:
    OPENAI_API_KEY=any python benchmarks/cascade_experiment.py [--out runs/cascade] [--holdout 0.3]
1. ``moa eval qa`` of the always-escalate cascade (default evals/recipes/qwen-direct-cot-always.yaml: Qwen answers
   with the number alone, then thinks step by step; every answer scored by its confidence) on the questions
   (default evals/arith-64.jsonl);
2. ``moa calibrate`` fits the first tier's threshold on the training split for the best tier's accuracy at least
   cost, and reports the fit on the held-out split (replayed from the recorded answers: every tier answered
   every question);
3. ``moa eval qa`` of the fitted cascade, live, with ``--baseline`` the best single model (default
   evals/recipes/qwen-cot.yaml: flips and McNemar p).
Runs resume from their checkpoints.  The table: accuracy, calls and tokens per question.  The earlier experiment
(SmolLM2-135M, then Qwen, on short answers): ``--recipe evals/recipes/local-cascade-always.yaml --data
evals/short-answer-48.jsonl --baseline evals/recipes/qwen-single.yaml``.
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
    parser.add_argument("--recipe", type=Path, default=ROOT / "evals" / "recipes" / "qwen-direct-cot-always.yaml")
    parser.add_argument("--data", type=Path, default=ROOT / "evals" / "arith-64.jsonl")
    parser.add_argument("--baseline", type=Path, default=ROOT / "evals" / "recipes" / "qwen-cot.yaml")
    parser.add_argument("--score", default="last-number", help="as `moa eval qa --score`")
    parser.add_argument("--holdout", default="0.3")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--report-only", action="store_true", help="print the table of finished runs")
    args = parser.parse_args()
    recipe, score = args.recipe, ["--score", args.score]
    always, fitted, live = args.out / "always", args.out / "fitted.yaml", args.out / "fitted"
    if args.report_only:
        print(table(always, live, args.data, args.score))
        return 0
    if moa("eval", "qa", "-r", str(recipe), "--data", str(args.data), "--out", str(always), *score) not in (0, 1):
        return 1
    if moa("calibrate", "-r", str(recipe), "--run", str(always), "--data", str(args.data), "--out", str(fitted),
           "--holdout", args.holdout, "--seed", args.seed, *score) != 0:  # fmt: skip
        return 1
    moa("eval", "qa", "-r", str(fitted), "--data", str(args.data), "--out", str(live), "--baseline",
        str(args.baseline), *score)  # fmt: skip
    print(table(always, live, args.data, args.score))
    return 0


def table(always: Path, live: Path, data: Path, score: str) -> str:
    from moa.eval._scoring import Scoring, is_correct
    from moa.eval.qa import read_questions

    scoring = Scoring.parse(score)
    questions = {str(row["id"]): row for row in read_questions(data)}
    items = [json.loads(line) for line in (always / "items.jsonl").read_text().splitlines()]
    n = len(items)
    rows = ["| run | accuracy | calls / q | tokens / q |", "|---|---|---|---|"]
    names = [d["option"] for d in items[0]["traces"][-1]["layers"][0]["decisions"]] if items else []
    for tier, tier_name in enumerate(names):
        right = tokens = 0
        for item in items:
            (layer,) = item["traces"][-1]["layers"]
            decision = layer["decisions"][tier]
            tokens += decision.get("tokens") or 0
            answer = next((c for c in layer["considered"] if c["step"] == tier + 1), None)
            cut = answer is not None and answer.get("finish_reason") == "length"
            right += bool(answer and not cut and is_correct(answer["text"], questions[str(item["id"])], scoring))
        name = f"{tier_name} alone (tier {tier + 1} of the always run)"
        rows.append(f"| {name} | {right}/{n} ({100 * right / n:.1f} %) | 1.00 | {tokens / n:.0f} |")
    for label, folder in (("always escalate (every tier; the last answers)", always),
                          ("calibrated cascade, live", live), ("best single model, live (--baseline)",
                                                               live / "baseline")):  # fmt: skip
        if not (folder / "summary.json").is_file():
            continue
        if "finished" not in json.loads((folder / "summary.json").read_text()):
            continue  # still running
        summary = json.loads((folder / "summary.json").read_text())
        finished = max(1, summary["finished"])
        rows.append(f"| {label} | {summary['correct']}/{summary['attempted']} ({summary['score']:.1f} %) | "
                    f"{summary['calls_per_item']:.2f} | {summary['tokens'] / finished:.0f} |")  # fmt: skip
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
