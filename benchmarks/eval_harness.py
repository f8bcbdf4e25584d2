"""Wall time and calls of `moa eval` with a 3-proposer recipe against the loopback server.

    python benchmarks/eval_harness.py [--latency 0.5] [--limit 20] [--data DIR] [--out DIR]

`--data` is a folder with the official files (AlpacaEval's gpt4_1106_preview outputs and
alpaca_eval_clf.txt; FastChat's question.jsonl and judge_prompts.jsonl); without it the
tests' small fixtures are used. Every call, judge included, goes through real litellm to a
loopback server that waits `--latency` seconds per request. Writes an HTML report too.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from moa.cli import main as moa
from moa.testing import LoopbackServer

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "evals"


def reply(body: dict[str, Any], index: int) -> str:
    messages = body["messages"]
    text = " ".join(str(m.get("content", "")) for m in messages)
    if "model_identifier" in text or "Answer M:" in text:
        return "m"
    if "[[rating]]" in text:
        return "A reasonable answer. Rating: [[6]]"
    return f"{body['model']} answer {index}: " + "lorem ipsum " * 20


def logprobs(body: dict[str, Any], text: str) -> dict[str, float]:
    return {"m": math.log(0.6), "M": math.log(0.4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--data", type=Path, help="folder with the official benchmark files (shared/data)")
    parser.add_argument("--out", type=Path, help="where runs and the report go (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="moa-eval-bench-"))
    if args.data:
        alpaca_data = args.data / "alpaca_eval/gpt4_1106_preview.model_outputs.json"
        alpaca_prompt = args.data / "alpaca_eval/judge_prompts/alpaca_eval_clf.txt"
        questions = args.data / "mt_bench/question.jsonl"
        judge_prompts = args.data / "mt_bench/judge_prompts.jsonl"
    else:
        alpaca_data, alpaca_prompt = FIXTURES / "alpaca_eval_set.json", FIXTURES / "alpaca_judge_prompt.txt"
        questions, judge_prompts = FIXTURES / "mt_bench_questions.jsonl", FIXTURES / "mt_bench_judge_prompts.jsonl"

    with LoopbackServer(latency_s=args.latency, responder=reply, logprobs=logprobs) as server:
        recipe = {
            "name": "moa-3x-loopback",
            "description": "3 proposers + 1 aggregator on the loopback server",
            "defaults": {"api_base": server.base_url, "max_tokens": 256},
            "layers": [
                {"kind": "propose", "agents": [{"model": f"openai/proposer-{i}"} for i in range(3)]},
                {"kind": "aggregate", "agents": [{"model": "openai/gpt-4o-mini"}]},
            ],
        }
        recipe_path = out / "recipe.yaml"
        recipe_path.parent.mkdir(parents=True, exist_ok=True)
        recipe_path.write_text(yaml.safe_dump(recipe))
        qa_path = out / "qa.jsonl"
        qa_path.write_text("".join(
            json.dumps({"id": f"q{i}", "prompt": f"What is {i} plus {i}?", "answers": [str(2 * i)]}) + "\n"
            for i in range(args.limit)
        ))  # fmt: skip
        judge = ["--judge", "openai/gpt-4o", "--judge-set", f"api_base={server.base_url}"]
        common = ["--recipe", str(recipe_path), "--limit", str(args.limit), "--concurrency", "8"]
        runs = {
            "alpacaeval": ["eval", "alpacaeval", *common, "--data", str(alpaca_data), "--out", str(out / "alpaca"),
                           *judge, "--judge-prompt", str(alpaca_prompt)],
            "mt-bench": ["eval", "mt-bench", *common, "--questions", str(questions), "--out", str(out / "mt"),
                         *judge, "--judge-prompts", str(judge_prompts)],
            "qa": ["eval", "qa", *common, "--data", str(qa_path), "--out", str(out / "qa")],
        }  # fmt: skip
        print(f"latency {args.latency * 1000:.0f} ms per request, --limit {args.limit}, concurrency 8")
        for name, argv in runs.items():
            before = len(server.completions())
            start = time.perf_counter()
            code = moa(argv)
            wall = time.perf_counter() - start
            calls = len(server.completions()) - before
            summary = json.loads((Path(argv[argv.index("--out") + 1]) / "summary.json").read_text())
            print(f"{name:<11} exit {code}  {wall:6.1f} s wall  {calls:4d} calls  "
                  f"({summary['finished']} items, {summary['calls_per_item']:.1f} generation calls/item)")  # fmt: skip
        moa(
            [
                "eval",
                "report",
                str(out / "alpaca"),
                str(out / "mt"),
                str(out / "qa"),
                "--html",
                str(out / "report.html"),
            ]
        )
    print(f"report: {out / 'report.html'}")


if __name__ == "__main__":
    main()
