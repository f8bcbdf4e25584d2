"""Audit of ``arith-64.jsonl``: every answer worked out again as arithmetic, next to its difficulty.

Run ``python evals/check_arith.py``: it exits 0 and prints the spread when every answer in the file
equals its expression below, and names each one that does not.  The helpers refuse a division or a
percentage that is not exact, so an answer can never hide a rounded step (the word problems promise
whole numbers at every step, apart from the ones whose trap is a remainder or a rounding up).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DATA = Path(__file__).with_name("arith-64.jsonl")


def div(a: int, b: int) -> int:
    """``a / b``, which must come out whole."""
    assert a % b == 0, f"{a} / {b} is not whole"
    return a // b


def pct(percent: int, of: int) -> int:
    """``percent`` % of ``of``, which must come out whole."""
    return div(percent * of, 100)


def ceil_div(a: int, b: int) -> int:
    """``a / b`` rounded up (the packs or trips needed to hold ``a``)."""
    return -(-a // b)


HOUR = 60  # minutes
EASY, MEDIUM, HARD = "easy (2 steps)", "medium (3-4 steps)", "hard (5 steps or a trap)"

# id: (difficulty, the answer worked out from the prompt's numbers)
CHECKS: dict[str, tuple[str, int]] = {
    "wp-01": (EASY, div(24 + 18, 6)),
    "wp-02": (EASY, 20 - 3 * 4),
    "wp-03": (EASY, 52 - (37 + 9)),
    "wp-04": (EASY, 7 * 12 - 15),
    "wp-05": (EASY, 25 * (2 * 7)),
    "wp-06": (EASY, 480 - 16 * 12),
    "wp-07": (EASY, div(8 * 36, 12)),
    "wp-08": (EASY, 15 * (6 + 5)),
    "wp-09": (EASY, div(2 * 1000, 250)),
    "wp-10": (EASY, 2 * 12 + 3 * 7),
    "wp-11": (EASY, 100 - 8 * 7),
    "wp-12": (EASY, 45 - div(45, 3)),
    "wp-13": (EASY, (6 - 1) * 85),
    "wp-14": (EASY, 35 * (3 * 12)),
    "wp-15": (EASY, div(156, 12) * 4),
    "wp-16": (EASY, div(6 * 1000, 400)),
    "wp-17": (EASY, 2 * HOUR + 35),
    "wp-18": (EASY, 64 - div(64, 4)),
    "wp-19": (EASY, div(27, 3) * 2),
    "wp-20": (EASY, 18 * div(HOUR, 4)),
    "wp-21": (MEDIUM, div(2 * 250 * 6, 100) * 2),
    "wp-22": (MEDIUM, (20 - pct(15, 20)) * 4),
    "wp-23": (MEDIUM, (125 - 45) - div(125 - 45, 2)),
    "wp-24": (MEDIUM, div((36 + 28 + 16) * 25, 1000)),
    "wp-25": (MEDIUM, 240 * 8 * 5 * 4),
    "wp-26": (MEDIUM, div(2 * 14 + 8, 3)),
    "wp-27": (MEDIUM, 4 - 3 * (17 - 12)),
    "wp-28": (MEDIUM, 18 * 24 - div(3 * 18 * 24, 4)),
    "wp-29": (MEDIUM, 50 - (5 * 3 + 2 * 9)),
    "wp-30": (MEDIUM, (13 * HOUR + 15) - (9 * HOUR + 40)),
    "wp-31": (MEDIUM, div(18 * 40, 24)),
    "wp-32": (MEDIUM, 18 * 2 + div(12 * 90, HOUR)),
    "wp-33": (MEDIUM, div(pct(35, 240), 6)),
    "wp-34": (MEDIUM, 2 * (85 * 4 + 30)),
    "wp-35": (MEDIUM, next(3 * son for son in range(1, 100) if 3 * son + 12 == 2 * (son + 12))),
    "wp-36": (MEDIUM, 2 * (14 + 9) * 6),
    "wp-37": (MEDIUM, div(600, 50) * div(400, 50)),
    "wp-38": (MEDIUM, pct(18, 1250) - 75),
    "wp-39": (MEDIUM, div(3 * 1000, 250) - 7),
    "wp-40": (MEDIUM, 25 + 2 * (17 - 10)),
    "wp-41": (MEDIUM, div(3 * (5 * 12), 2)),
    "wp-42": (MEDIUM, div(4 * 36 + 2 * 48, 8)),
    "wp-43": (MEDIUM, 3 + 2 * ((12 + 5 - 8) - 1)),
    "wp-44": (MEDIUM, 86 * 4 - (78 + 85 + 92)),
    "wp-45": (MEDIUM, div(420 + 9 * 35, 35)),
    "wp-46": (MEDIUM, (40 + pct(25, 40)) - pct(20, 40 + pct(25, 40))),
    "wp-47": (MEDIUM, 1000 - div(300, 4) * 10),
    "wp-48": (MEDIUM, sum(8 + 3 * week for week in range(5))),
    "wp-49": (MEDIUM, 3 * 14 + (6 if 3 * 14 < 50 else 0)),
    "wp-50": (MEDIUM, min(96 // 8, 55 // 5)),
    "wp-51": (HARD, ceil_div(28 * 3, 10)),
    "wp-52": (HARD, div((8 - 6) * HOUR, 12) + 1),
    "wp-53": (HARD, (100 - 3 * 12 - 2 * 12) - div(100 - 3 * 12 - 2 * 12, 4)),
    "wp-54": (HARD, (3 * 47 - 20) - 47),
    "wp-55": (HARD, ceil_div(31, 700 // 45)),
    "wp-56": (HARD, 65 * 10 + 15 * div(10, 2) - 80 * 4),
    "wp-57": (HARD, 1200 + (40 - 25) * ((9 * HOUR + 30) - 7 * HOUR)),
    "wp-58": (HARD, min(10 * boxes + 2 * (20 - 6 * boxes) for boxes in range(20 // 6 + 1))),
    "wp-59": (HARD, div(3 * HOUR, 4) - (20 + div(3 * HOUR, 12))),
    "wp-60": (HARD, (8 * 36) % 25),
    "wp-61": (HARD, div((800 - pct(15, 800)) * 110, 100) - 28),
    "wp-62": (HARD, next(cows for cows in range(31) if 4 * cows + 2 * (30 - cows) == 74)),
    "wp-63": (HARD, (360 - div(360, 4)) - div(360 - div(360, 4), 3) - 40),
    "wp-64": (HARD, (50 + 30 * 12) - 400),
}
SPREAD = {EASY: 20, MEDIUM: 30, HARD: 14}


def problems() -> list[str]:
    """Every mismatch between the data file and ``CHECKS`` (empty when all agree)."""
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    found = [f"{DATA.name} has {len(rows)} questions, CHECKS {len(CHECKS)}"] if len(rows) != len(CHECKS) else []
    for row in rows:
        answers = row.get("answers")
        if row["id"] not in CHECKS:
            found.append(f"{row['id']}: no check")
        elif not (isinstance(answers, list) and len(answers) == 1 and type(answers[0]) is int):
            found.append(f"{row['id']}: `answers` must be one integer, got {answers!r}")
        elif answers[0] != CHECKS[row["id"]][1]:
            found.append(f"{row['id']}: the file says {answers[0]}, the arithmetic gives {CHECKS[row['id']][1]}")
        if "just the number" in row.get("prompt", ""):
            found.append(f"{row['id']}: the recipe, not the question, says how to answer")
    counts = {level: sum(1 for lv, _ in CHECKS.values() if lv == level) for level in SPREAD}
    if counts != SPREAD:
        found.append(f"difficulty spread {counts}, expected {SPREAD}")
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(problem, file=sys.stderr)
    if not found:
        print(f"{len(CHECKS)} answers check out: " + ", ".join(f"{n} {level}" for level, n in SPREAD.items()))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
