"""The two LMI presets on the same embeddings: bits and time per estimate.

    .venv/bin/python benchmarks/investigations/bench_lmi_presets.py --study-root study_runs/default
    .venv/bin/python benchmarks/investigations/bench_lmi_presets.py --study-root /tmp/root --label-pairs 3000 --seeds 0 1

Cases:
- the default study's embeddings (materialised MI inputs under --study-root: for each dataset and
  algorithm the largest size at the highest quality and the smallest at the lowest, see lmi_cases.py),
  against every task signal, as the `mi_*` assets build them;
- a 256-d embedding against a 57-class one-hot label (a Gaussian mixture: class centroids in 256-d,
  isotropic noise, unequal class sizes), whose true MI is computed exactly from the class posteriors.

`fast` is the project's default; `reference` is the reference study's latentmi call (30% held back,
batch 512, up to 300 epochs, lr 1e-4, patience 30, networks 1024/512/256). Both run on one CPU thread.
The last lines print, per preset, the largest distance from the reference preset (and from the
truth where known).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # lmi_cases
from scaling_assets.metrics.lmi import PRESETS, estimate  # noqa: E402

PRESET_NAMES = ("fast", "reference")


def study_cases(root: Path, algorithms: list[str], max_cases: int) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """(name, x, y, truth=nan) for each signal of two settings per dataset and algorithm of a study root
    (lmi_cases.study_settings)."""
    from lmi_cases import study_settings

    cases = [(f"{s.name}/{signal}", x, y, np.nan)
             for s in study_settings(root, algorithms, per_algorithm=2) for signal, x, y in s.signals]
    return cases[:max_cases]


def mixture_case(n: int, classes: int = 57, dims: int = 256, noise: float = 1.0, seed: int = 0):
    """A 256-d embedding of a 57-class label; the true MI from the exact class posteriors."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(classes, 2.0))
    centroids = rng.standard_normal((classes, 8)) @ rng.standard_normal((8, dims)) / np.sqrt(8) * 1.2
    labels = rng.choice(classes, size=n, p=weights)
    x = centroids[labels] + noise * rng.standard_normal((n, dims))
    # I(X; L) = H(L) - E[H(L | X)], with p(l | x) from the known mixture (Monte Carlo over 20k draws)
    mc_labels = rng.choice(classes, size=20_000, p=weights)
    mc = centroids[mc_labels] + noise * rng.standard_normal((20_000, dims))
    d2 = (mc**2).sum(1)[:, None] - 2 * mc @ centroids.T + (centroids**2).sum(1)[None]
    logp = np.log(weights)[None] - d2 / (2 * noise**2)
    logpost = logp - logsumexp(logp, axis=1, keepdims=True)
    h_l = -(weights * np.log2(weights)).sum()
    h_l_given_x = -(np.exp(logpost) * logpost).sum(1).mean() / np.log(2)
    y = np.eye(classes)[labels]
    return f"mixture 256-d vs {classes}-class one-hot, {n} pairs", x, y, float(h_l - h_l_given_x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study-root", type=Path, help="a materialised study root (e.g. study_runs/default)")
    p.add_argument("--algorithms", nargs="+", default=["pca", "scvi"])
    p.add_argument("--max-study-cases", type=int, default=8)
    p.add_argument("--label-pairs", type=int, default=2000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args()

    cases = study_cases(args.study_root, args.algorithms, args.max_study_cases) if args.study_root else []
    cases.append(mixture_case(args.label_pairs))
    print(f"presets: { {k: v for k, v in PRESETS.items()} }")
    print(f"{'case':<58} {'pairs':>6} {'truth':>6} " + " ".join(f"{n + ' bits':>14} {n + ' s':>12}" for n in PRESET_NAMES))
    worst = {n: 0.0 for n in PRESET_NAMES}
    worst_truth = {n: 0.0 for n in PRESET_NAMES}
    for name, x, y, truth in cases:
        bits, secs = {}, {}
        for preset in PRESET_NAMES:
            values, times = [], []
            for seed in args.seeds:
                t0 = time.perf_counter()
                values.append(estimate(x, y, seed=seed, preset=preset, device="cpu"))
                times.append(time.perf_counter() - t0)
            bits[preset], secs[preset] = float(np.mean(values)), float(np.mean(times))
            if not np.isnan(truth):
                worst_truth[preset] = max(worst_truth[preset], abs(bits[preset] - truth))
        for preset in PRESET_NAMES:
            worst[preset] = max(worst[preset], abs(bits[preset] - bits["reference"]))
        print(f"{name:<58} {len(x):>6} {truth:>6.3f} "
              + " ".join(f"{bits[n]:>14.3f} {secs[n]:>12.1f}" for n in PRESET_NAMES), flush=True)
    for preset in PRESET_NAMES:
        print(f"{preset}: largest |bits - reference preset| = {worst[preset]:.3f}; "
              f"largest |bits - truth| (mixture) = {worst_truth[preset]:.3f}")


if __name__ == "__main__":
    main()
