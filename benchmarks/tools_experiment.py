"""Program-of-thought and agreement on a local coder model, against greedy chain-of-thought.

Serve Qwen2.5-Coder-0.5B on 127.0.0.1:8765 first (evals/README.md, "Programs and agreement"), then:
    OPENAI_API_KEY=any python benchmarks/tools_experiment.py [--out runs/tools] [--limit N]
Each recipe below (evals/recipes/) runs through `moa eval qa` on evals/arith-64.jsonl, scored on the final
answer (the output's last number; a reply cut by max_tokens is no answer); runs resume from their
checkpoints.  One table: accuracy, calls, tokens and wall time per question, flips against greedy
chain-of-thought with the exact McNemar p, and for recipes that check agreement how many answers were
verified and how many of those were right (the precision of the agreement signal).  A question whose run
failed (`pal`: no program gave an answer) counts as wrong; calls and tokens are per finished question.
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
RECIPES = ["qwen-cot", "qwen-pal", "qwen-pal-cot-agree", "qwen-orchestrator"]
BASELINE = "qwen-cot"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "tools")
    parser.add_argument("--data", type=Path, default=ROOT / "evals" / "arith-64.jsonl")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--only", nargs="*", default=RECIPES)
    parser.add_argument("--report-only", action="store_true", help="print the table from finished runs")
    args = parser.parse_args()
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY") or "sk-local"}
    names = [name for name in args.only if (ROOT / "evals" / "recipes" / f"{name}.yaml").exists()]
    if not args.report_only:
        for name in names:
            command = [
                sys.executable, "-m", "moa", "eval", "qa", "--recipe", str(ROOT / "evals" / "recipes" / f"{name}.yaml"),
                "--data", str(args.data), "--out", str(args.out / name),
            ]  # fmt: skip
            if args.limit:
                command += ["--limit", str(args.limit)]
            print(f"running {name} ...", file=sys.stderr, flush=True)
            done = subprocess.run(command, env=env, check=False)
            if done.returncode not in (0, 1):  # 1: some items failed, still reported
                print(f"{name}: moa eval exited {done.returncode}", file=sys.stderr)
    print(table(args.out, names))
    return 0


def items_of(run: Path) -> dict[str, dict[str, Any]]:
    """Each finished item: right or not (as the run scored it), calls, tokens, and the answer's confidence."""
    items = {}
    for line in (run / "items.jsonl").read_text().splitlines():
        item = json.loads(line)
        trace = item["traces"][-1] if item.get("traces") else {}
        items[str(item["id"])] = {
            "correct": bool(item.get("correct")),
            "calls": item.get("calls", 0),
            "tokens": item.get("tokens", 0),
            "confidence": trace.get("confidence"),
        }
    return items


def table(out: Path, names: list[str]) -> str:
    from moa.eval._stats import mcnemar_exact

    lines = [
        "| recipe | accuracy | calls / q | tokens / q | wall s / q | right->wrong | wrong->right | McNemar p "
        "| verified | right among verified |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = items_of(out / BASELINE) if (out / BASELINE / "items.jsonl").exists() else {}
    for name in names:
        path = out / name / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        total = summary.get("items", 0)
        if not total or summary.get("finished", 0) + summary.get("failed", 0) < total:
            lines.append(f"| {name} | not run (or not finished) | | | | | | | | |")
            continue
        items = items_of(out / name)
        failed = summary.get("failed", 0)  # every question was tried: a failed one (no answer) counts as wrong
        right = sum(i["correct"] for i in items.values())
        calls = sum(i["calls"] for i in items.values()) / max(1, len(items))
        tokens = sum(i["tokens"] for i in items.values()) / max(1, len(items))
        wall = summary["generation_wall_s"] / max(1, summary["finished"] + failed)
        flips = ["", "", ""]
        if name != BASELINE and base:
            lost = sum(base[q]["correct"] and not (q in items and items[q]["correct"]) for q in base)
            won = sum(q in items and items[q]["correct"] and not base[q]["correct"] for q in base)
            flips = [str(lost), str(won), f"{mcnemar_exact(lost, won):.3g}"]
        verified = [i for i in items.values() if i["confidence"] == "verified"]
        agreement = ["", ""]
        if any(i["confidence"] for i in items.values()):
            good = sum(i["correct"] for i in verified)
            agreement = [f"{len(verified)}/{total}", f"{good}/{len(verified)}" if verified else "-"]
        shown = f"{right}/{total} ({100 * right / total:.1f} %)" + (f"; {failed} failed" if failed else "")
        lines.append(
            f"| {name} | {shown} | {calls:.2f} | {tokens:.0f} | {wall:.1f} | "
            f"{' | '.join(flips)} | {' | '.join(agreement)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
