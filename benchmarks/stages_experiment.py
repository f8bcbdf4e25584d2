"""Every stage kind on two local models, against the best single model: accuracy, calls, wall time, flips.

Serve Qwen2.5-Coder-0.5B on 127.0.0.1:8765 first (evals/README.md, "Stages on two local models"),
then:  OPENAI_API_KEY=any python benchmarks/stages_experiment.py [--out runs/stages] [--limit N]
Each recipe of evals/recipes/ runs through `moa eval qa` with `--baseline qwen-single`; runs resume
from their checkpoints, so the script can be stopped and started again.  It prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = [
    "qwen-single", "smol-single", "qwen-moa", "qwen-self-moa", "qwen-self-consistency",
    "qwen-blender", "qwen-rank", "qwen-debate", "qwen-verify-escalate",
]  # fmt: skip


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
            if name != "qwen-single":
                command += ["--baseline", str(ROOT / "evals" / "recipes" / "qwen-single.yaml")]
            if args.limit:
                command += ["--limit", str(args.limit)]
            print(f"running {name} ...", file=sys.stderr, flush=True)
            done = subprocess.run(command, env=env, check=False)
            if done.returncode not in (0, 1):  # 1: some items failed, still reported
                print(f"{name}: moa eval exited {done.returncode}", file=sys.stderr)
    print(table(args.out, args.only, args.data))
    return 0


def oracle(run: Path, data: Path) -> str:
    """How often at least one first-stage answer was right: what a perfect selector could reach."""
    from moa.eval.qa import is_correct, read_questions

    rows = {str(row["id"]): row for row in read_questions(data)}
    hits = total = 0
    for line in (run / "items.jsonl").read_text().splitlines():
        item = json.loads(line)
        first = item["traces"][-1]["layers"][0]["outputs"] if item.get("traces") else []
        texts = [call["text"] for call in first if call.get("text") and not call.get("error")]
        total += 1
        hits += any(is_correct(text, rows[str(item["id"])]) for text in texts)
    return f"{hits}/{total}"


def table(out: Path, names: list[str], data: Path) -> str:
    rows = ["| recipe | accuracy | any first-stage answer right | calls / question | wall s / question | "
            "right->wrong | wrong->right | McNemar p |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in names:
        path = out / name / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        if "generation_wall_s" not in summary or "score" not in summary:
            rows.append(f"| {name} | not run (or not finished) | | | | | | |")
            continue
        comparison = summary.get("comparison") or {}
        wall = summary["generation_wall_s"] / max(1, summary["finished"])
        flips = [len(comparison[k]) if k in comparison else "" for k in ("right_to_wrong", "wrong_to_right")]
        p = comparison.get("mcnemar_p")
        rows.append(
            f"| {name} | {summary['correct']}/{summary['attempted']} ({summary['score']:.1f} %) | "
            f"{oracle(out / name, data)} | {summary['calls_per_item']:.2f} | {wall:.1f} | {flips[0]} | {flips[1]} | "
            f"{'' if p is None else f'{p:.3g}'} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
