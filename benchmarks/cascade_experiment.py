"""A calibrated cascade on local models against the best single model and against always escalating.

Serve Qwen2.5-Coder-0.5B on 127.0.0.1:8765 first (evals/README.md), then:
    OPENAI_API_KEY=any python benchmarks/cascade_experiment.py [--out runs/cascade] [--holdout 0.3]
1. ``moa eval qa`` of the always-escalate cascade (default evals/recipes/qwen-direct-cot-always.yaml: Qwen answers
   with the number alone, then thinks step by step; every answer scored by its confidence) on the questions
   (default evals/arith-64.jsonl);
2. ``moa calibrate`` fits the first tier's threshold on the training split for the best tier's accuracy at least
   cost, and reports the fit on the held-out split (replayed from the recorded answers: every tier answered
   every question);
3. the fitted thresholds replayed on every item against the last tier alone (the best single model here): flips
   and McNemar's p; with ``--live``, the fitted cascade also runs live (every call it makes is one the always run
   made: a hit in the shared call cache, OUT/calls.sqlite).
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
    parser.add_argument("--baseline", type=Path, help="also run this recipe live beside the fitted cascade (--live)")
    parser.add_argument("--live", action="store_true",
                        help="also run the fitted cascade live (its calls are cache hits)")  # fmt: skip
    parser.add_argument("--score", default="last-number", help="as `moa eval qa --score`")
    parser.add_argument("--holdout", default="0.3")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--report-only", action="store_true", help="print the table of finished runs")
    args = parser.parse_args()
    recipe, score = args.recipe, ["--score", args.score]
    cache = ["--cache", str(args.out / "calls.sqlite")]  # one call cache for the evals
    always, fitted, live = args.out / "always", args.out / "fitted.yaml", args.out / "fitted"
    if args.report_only:
        print(table(always, live, args.data, args.score))
        return 0
    if moa("eval", "qa", "-r", str(recipe), "--data", str(args.data), "--out", str(always), *score,
           *cache) not in (0, 1):  # fmt: skip
        return 1
    if moa("calibrate", "-r", str(recipe), "--run", str(always), "--data", str(args.data), "--out", str(fitted),
           "--holdout", args.holdout, "--seed", args.seed, *score) != 0:  # fmt: skip
        return 1
    if args.live:
        baseline = ["--baseline", str(args.baseline)] if args.baseline else []
        moa("eval", "qa", "-r", str(fitted), "--data", str(args.data), "--out", str(live), *baseline, *score, *cache)
    print(table(always, live, args.data, args.score))
    print(replayed(always, fitted, args.data, args.score))
    return 0


def replayed(always: Path, fitted: Path, data: Path, score: str) -> str:
    """The fitted thresholds replayed on every item of the always run, against the last tier alone: accuracy,
    tokens, flips and McNemar's exact p (the held-out split is in the calibrate report above)."""
    import moa
    from moa.eval._scoring import Scoring, is_correct
    from moa.eval._stats import mcnemar_exact
    from moa.eval.qa import read_questions

    scoring = Scoring.parse(score)
    questions = {str(row["id"]): row for row in read_questions(data)}
    layer = moa.load_recipe(fitted).layers[0]
    accepts = [tier.accept for tier in layer.tiers[:-1]]
    cascade, last, tokens = [], [], 0
    for line in (always / "items.jsonl").read_text().splitlines():
        item = json.loads(line)
        (traced,) = item["traces"][-1]["layers"]
        answers = {c["step"]: c for c in traced["considered"]}
        right = []
        for step in range(1, len(traced["decisions"]) + 1):
            answer = answers.get(step)
            cut = answer is None or answer.get("finish_reason") == "length"
            right.append(not cut and is_correct(answer["text"], questions[str(item["id"])], scoring))
        chosen = len(right) - 1
        for index, accept in enumerate(accepts):
            tokens += traced["decisions"][index].get("tokens") or 0
            found = answers.get(index + 1, {}).get("score")
            if accept != "never" and found is not None and found >= accept:
                chosen = index
                break
        else:
            tokens += traced["decisions"][-1].get("tokens") or 0
        cascade.append(right[chosen])
        last.append(right[-1])
    n = len(cascade)
    lost = sum(b and not c for c, b in zip(cascade, last, strict=True))
    won = sum(c and not b for c, b in zip(cascade, last, strict=True))
    return (
        f"fitted thresholds replayed on all {n} items: {sum(cascade)}/{n} right at {tokens / n:.0f} tokens/q; "
        f"the last tier alone {sum(last)}/{n}; right->wrong {lost}, wrong->right {won}, McNemar p = "
        f"{mcnemar_exact(lost, won):.3g}"
    )


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
