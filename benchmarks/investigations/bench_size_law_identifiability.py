"""How often the size law's parameters come out identified, for known laws and a known MI noise.

    .venv/bin/python benchmarks/investigations/bench_size_law_identifiability.py
    .venv/bin/python benchmarks/investigations/bench_size_law_identifiability.py --noise 0.08 0.046 --sizes 100 200 400 800 1600

For each true law I(N) = I_inf - (N/N_0)^(-s) on a grid of sizes (default: the default study's PCA
sizes, 25-3,200), draws one estimate per size with Gaussian noise of the given sd (one seed), fits it
with the study's code (`fit_size_law`, reference rules, PCA's bounds unless --algorithm) and counts the
draws whose fit is identified with R^2 >= 0.9. The default noise, 0.08 bits, is the scatter of one
seed's MI estimate in the default study; 0.046 is that of a mean over three seeds.

It answers what a study must look like for its size laws to be identifiable: how large the rise over
the grid, where its knee, how many seeds. No timing: the fits take milliseconds.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from scaling_assets.metrics.laws import GOOD_R2, fit_size_law, size_law  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[25, 50, 100, 200, 400, 800, 1600, 3200])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.08, 0.046], help="sd of one estimate (bits)")
    ap.add_argument("--algorithm", default="pca", help="whose reference bounds: pca (linear) or scvi (learned)")
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--i-inf", type=float, default=3.0)
    ap.add_argument("--n0", type=float, nargs="+", default=[10, 30, 100, 300])
    ap.add_argument("--s", type=float, nargs="+", default=[0.3, 0.5, 1.0])
    args = ap.parse_args()
    sizes = np.array(args.sizes, dtype=float)
    rng = np.random.default_rng(0)
    print(f"{args.algorithm} size law on sizes {[int(n) for n in sizes]}, I_inf {args.i_inf:g}, {args.draws} draws each")
    print(f"{'noise':>6} {'N_0':>5} {'s':>4} {'rise':>6} {'gap at max N':>12} {'identified, R2>=0.9':>20}  most common reasons")
    for sigma in args.noise:
        for n0, s in itertools.product(args.n0, args.s):
            true = size_law(sizes, args.i_inf, n0, s)
            good, reasons = 0, Counter()
            for _ in range(args.draws):
                fit = fit_size_law(sizes, true + rng.normal(0.0, sigma, len(sizes)), algorithm=args.algorithm,
                                   mi_se=np.full(len(sizes), sigma))
                if fit.identified and fit.r2 >= GOOD_R2:
                    good += 1
                else:  # the first parameter named, or the R^2
                    reasons[fit.reason.split(" ")[0] if fit.reason else f"R2 < {GOOD_R2:g}"] += 1
            top = ", ".join(f"{k} {v}" for k, v in reasons.most_common(2))
            print(f"{sigma:6.3f} {n0:5g} {s:4.1f} {true[-1] - true[0]:6.2f} {args.i_inf - true[-1]:12.3f} "
                  f"{good:>13}/{args.draws:<6}  {top}")


if __name__ == "__main__":
    main()
