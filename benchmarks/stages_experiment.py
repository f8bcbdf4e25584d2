"""Every stage kind on two local models, against the best single model: accuracy, calls, wall time, flips.

Serve Qwen2.5-Coder-0.5B on 127.0.0.1:8765 first (evals/README.md, "Stages on two local models"),
then:  OPENAI_API_KEY=any python benchmarks/stages_experiment.py [--out runs/stages] [--limit N]
Each recipe of evals/recipes/ runs through `moa eval qa` (qwen-rank re-uses qwen-blender's proposals);
runs resume from their checkpoints, so the script can be stopped and started again.  It prints one
table, scored from the runs' outputs with the current QA rule, against qwen-single (the best single
model): accuracy, how often a perfect selector could have been right, calls, wall time, flips, McNemar.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECIPES = [
    "qwen-single", "smol-single", "qwen-moa", "qwen-self-moa", "qwen-self-consistency",
    "qwen-blender", "qwen-rank", "qwen-debate", "qwen-verify-escalate",
]  # fmt: skip
#: Runs that re-use another run's first stage (`--reaggregate-from`): the same proposals, judged differently.
REUSE = {"qwen-rank": "qwen-blender"}
BASELINE = "qwen-single"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "stages")
    parser.add_argument("--data", type=Path, default=ROOT / "evals" / "short-answer-48.jsonl")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--only", nargs="*", default=RECIPES)
    parser.add_argument("--report-only", action="store_true", help="print the table from finished runs")
    args = parser.parse_args()
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY") or "sk-local"}
    if not args.report_only:
        for name in args.only:
            command = [
                sys.executable, "-m", "moa", "eval", "qa", "--recipe", str(ROOT / "evals" / "recipes" / f"{name}.yaml"),
                "--data", str(args.data), "--out", str(args.out / name),
            ]  # fmt: skip
            if name in REUSE:
                command += ["--reaggregate-from", str(args.out / REUSE[name])]
            if args.limit:
                command += ["--limit", str(args.limit)]
            print(f"running {name} ...", file=sys.stderr, flush=True)
            done = subprocess.run(command, env=env, check=False)
            if done.returncode not in (0, 1):  # 1: some items failed, still reported
                print(f"{name}: moa eval exited {done.returncode}", file=sys.stderr)
    print(table(args.out, args.only, args.data))
    return 0


def scored(run: Path, rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each finished item of a run, scored now (the current rule, the data file as it is)."""
    from moa.eval.qa import is_correct

    items = {}
    for line in (run / "items.jsonl").read_text().splitlines():
        item = json.loads(line)
        row = rows[str(item["id"])]
        first = item["traces"][-1]["layers"][0]["outputs"] if item.get("traces") else []
        texts = [call["text"] for call in first if call.get("text") and not call.get("error")]
        items[str(item["id"])] = {
            "correct": item.get("output") is not None and is_correct(item["output"], row),
            "oracle": any(is_correct(text, row) for text in texts),
            "calls": item.get("calls", 0),
        }
    return items


def table(out: Path, names: list[str], data: Path) -> str:
    from moa.eval._stats import mcnemar_exact
    from moa.eval.qa import read_questions

    rows = {str(row["id"]): row for row in read_questions(data)}
    lines = ["| recipe | accuracy | any first-stage answer right | calls / question | wall s / question | "
             "right->wrong | wrong->right | McNemar p |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    base = scored(out / BASELINE, rows) if (out / BASELINE / "items.jsonl").exists() else {}
    for name in names:
        path = out / name / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        if not summary.get("complete"):
            lines.append(f"| {name} | not run (or not finished) | | | | | | |")
            continue
        items = scored(out / name, rows)
        right = sum(i["correct"] for i in items.values())
        oracle = sum(i["oracle"] for i in items.values())
        calls = sum(i["calls"] for i in items.values()) / len(items)
        wall = summary["generation_wall_s"] / max(1, summary["finished"])
        flips = ["", "", ""]
        if name != BASELINE and base:
            shared = [q for q in items if q in base]
            lost = sum(base[q]["correct"] and not items[q]["correct"] for q in shared)
            won = sum(items[q]["correct"] and not base[q]["correct"] for q in shared)
            flips = [str(lost), str(won), f"{mcnemar_exact(lost, won):.3g}"]
        lines.append(
            f"| {name} | {right}/{len(items)} ({100 * right / len(items):.1f} %) | {oracle}/{len(items)} | "
            f"{calls:.2f} | {wall:.1f} | {' | '.join(flips)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
