"""How close moa's length-controlled win rate is to AlpacaEval's call and to the converged fit.

    python benchmarks/lc_agreement.py [--seeds 12] [--n 805]

For each seed, AlpacaEval-shaped synthetic judgments (a length-biased judge, two gamed
baselines, some draws and missing judgments; the generator of tests/test_lc.py) are fitted
by moa (``moa.eval._lc``) and by the independent rebuild of AlpacaEval's ``length_controlled_v1``
in tests/test_lc.py, whose scikit-learn ``LogisticRegressionCV`` call is AlpacaEval's: once
with liblinear's default tolerance (1e-4, what AlpacaEval runs) and once converged (1e-12).
Prints the LC win rates, the differences, the chosen C, and the wall time of each fit.
Needs the eval extra (scikit-learn) and scipy (a scikit-learn dependency).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_lc import sklearn_lc, synthetic

from moa.eval import _lc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--n", type=int, default=805, help="judged pairs per run (AlpacaEval has 805)")
    args = parser.parse_args()
    worst_default = worst_tight = 0.0
    same_c = same_c_tight = 0
    ours_s = theirs_s = 0.0
    print(f"{args.n} judged pairs + {2 * args.n} gamed-baseline rows per run")
    for seed in range(args.seeds):
        data = synthetic(seed, args.n)
        lc_data = _lc.LCData("synthetic", dict(enumerate(data["difficulty"])), tuple(data["gamed"]))
        start = time.perf_counter()
        ours = _lc.length_controlled_win_rate(
            data["preferences"], data["model_lengths"], data["reference_lengths"], range(args.n), lc_data
        )
        ours_t = time.perf_counter() - start
        fit_args = (data["preferences"], data["model_lengths"], data["reference_lengths"], data["difficulty"])
        start = time.perf_counter()
        default, c, _ = sklearn_lc(*fit_args, data["gamed"])
        theirs_t = time.perf_counter() - start
        tight, c_tight, _ = sklearn_lc(*fit_args, data["gamed"], tight=True)
        assert ours is not None
        worst_default = max(worst_default, abs(ours.win_rate - default))
        worst_tight = max(worst_tight, abs(ours.win_rate - tight))
        same_c += c == ours.C
        same_c_tight += c_tight == ours.C
        ours_s += ours_t
        theirs_s += theirs_t
        print(
            f"seed {seed:2d}: moa {ours.win_rate:8.4f} (C={ours.C:<7.3g} {ours_t:4.2f} s)  "
            f"scikit-learn tol 1e-4 {default:8.4f} (C={c:<7.3g}) diff {ours.win_rate - default:+.1e}  "
            f"tol 1e-12 (C={c_tight:<7.3g}) diff {ours.win_rate - tight:+.1e}"
        )
    print(
        f"largest |difference|: {worst_default:.4f} points against AlpacaEval's call (same C {same_c}/{args.seeds}), "
        f"{worst_tight:.1e} against the converged fit (same C {same_c_tight}/{args.seeds}); "
        f"mean fit time moa {ours_s / args.seeds:.2f} s, scikit-learn {theirs_s / args.seeds:.2f} s"
    )


if __name__ == "__main__":
    main()
