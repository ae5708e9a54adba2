"""PCA's size effect on the embedded simulator, in-process: MI by training cells and the size law's verdict.

    .venv/bin/python benchmarks/investigations/bench_simulator_size_effect.py
    .venv/bin/python benchmarks/investigations/bench_simulator_size_effect.py --tasks cite --test-cells 3000 --set N_TYPES=24

What a study of PCA on one seed would measure, without Dagster: simulate each task (``data/simulate.py``,
its constants overridable with ``--set NAME=VALUE``), hold out ``--test-cells``, choose PCA's 750 HVGs on
the largest full-quality training set, then per quality (binomial thinning, the study's own
``thin_counts``) and size fit PCA (``models/pca.py``), embed the thinned test cells and estimate every
signal's MI with the study's LMI (``fast`` preset, 100 epochs, as the default study). Each (task, signal,
quality) series is fitted with the study's size law (reference rules) and printed with its verdict.

It answers which simulator and test-set size let the default study identify PCA's size law before a
whole study is run (a study takes ~11 minutes; one task here ~1-3). Printed: MI per size, the rise from
the smallest to the largest size, the fit's parameters, R^2 and reason, and the wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from scaling_assets.data import simulate as simulator  # noqa: E402
from scaling_assets.data.counts import InMemoryCounts  # noqa: E402
from scaling_assets.data.tasks import TASKS  # noqa: E402
from scaling_assets.data.thinning import thin_counts  # noqa: E402
from scaling_assets.metrics.laws import GOOD_R2, fit_noise_law, fit_size_law  # noqa: E402
from scaling_assets.metrics.lmi import estimate_pointwise  # noqa: E402
from scaling_assets.metrics.signals import build_signals  # noqa: E402
from scaling_assets.models.hvg import seurat_highly_variable  # noqa: E402
from scaling_assets.models.pca import N_HVG, PCAModel  # noqa: E402
from scaling_assets.models.scvi import SCVIModel  # noqa: E402


def simulate_in_memory(task: str, n_cells: int, n_genes: int, seed: int, type_spread=None):
    """The simulator's blocks, stacked in memory (the file ``simulate`` writes, without the file).
    ``type_spread`` (lo, hi): each type program's effects scaled by a log-uniform factor in [lo, hi]."""
    m = simulator._Model(task, n_genes, seed)
    if type_spread:
        T = simulator.N_TYPES
        factors = np.exp(np.linspace(np.log(type_spread[0]), np.log(type_spread[1]), T))
        m.W[:T] *= np.random.default_rng([seed, 7]).permutation(factors)[:, None].astype(np.float32)
    blocks = [simulator._block(task, m, seed, b, min(simulator.BLOCK, n_cells - b * simulator.BLOCK),
                               simulator.MEDIAN_UMIS)
              for b in range((n_cells + simulator.BLOCK - 1) // simulator.BLOCK)]
    X = sp.vstack([b[0] for b in blocks], format="csr")
    obs = pd.concat([b[1] for b in blocks])
    obsm = {k: np.concatenate([b[2][k] for b in blocks]) for k in blocks[0][2]}
    return X, obs, obsm


def thinned_test_set(X, obs, obsm, genes, test, q: float, seed: int):
    """The held-out cells thinned to quality ``q``, cells left with no UMIs dropped (as the study does):
    a CountSource and the cells' obsm."""
    test_X = thin_counts(X[test], test, q, seed)
    keep = np.asarray(test_X.sum(axis=1)).ravel() > 0
    return InMemoryCounts(test_X[keep], obs.iloc[test[keep]], genes), {k: v[test[keep]] for k, v in obsm.items()}


def mi_rows(task: str, test_src, test_obsm, emb, *, seed: int, quality: float, cells: int, umis: float,
            epochs: int, device: str | None = None) -> list[dict]:
    """Each of the task's signals against the embedding: the study's LMI estimate and its standard error."""
    rows = []
    for sig in build_signals(TASKS[task].signals, test_src.read_obs(), emb, test_obsm, seed):
        est = estimate_pointwise(sig.x, sig.y, seed=seed, epochs=epochs, device=device)
        se = float(np.std(est.pmi) / np.sqrt(max(len(est.pmi), 1)))
        rows.append(dict(task=task, signal=sig.signal, quality=quality, cells=cells, umis=umis,
                         mi=float(est.mi_bits), se=se))
    return rows


def run_task(task: str, args) -> list[dict]:
    X, obs, obsm = simulate_in_memory(task, args.cells, args.genes, args.data_seed, args.type_spread)
    genes = np.array([f"G{j}" for j in range(X.shape[1])], dtype=object)
    order = np.random.default_rng(args.seed).permutation(X.shape[0])
    test, pool = order[:args.test_cells], order[args.test_cells:]
    sizes = [n for n in args.sizes if n <= len(pool)]
    umis_full = float(X[test].sum()) / len(test)  # nominal UMIs per test cell at q = 1
    hvg = seurat_highly_variable(InMemoryCounts(X[pool[:max(sizes)]], var_names=genes), N_HVG)
    rows, fits = [], []
    for q in args.qualities:
        test_src, test_obsm = thinned_test_set(X, obs, obsm, genes, test, q, args.seed)
        for n in sizes:
            train = pool[:n]
            if args.algorithm == "pca":
                model = PCAModel(genes, seed=args.seed)
                model.use_genes(hvg, "largest full-quality training set")
            else:
                model = SCVIModel(genes, budget=args.budget, seed=args.seed)
            report = model.fit(InMemoryCounts(thin_counts(X[train], train, q, args.seed), var_names=genes))
            emb = model.embed(test_src)
            fits.append(dict(quality=q, cells=n, epochs=report.epochs, steps=report.steps, fit_s=round(report.wall_time_s, 1)))
            rows += mi_rows(task, test_src, test_obsm, emb, seed=args.seed, quality=q, cells=n,
                            umis=q * umis_full, epochs=args.lmi_epochs)
    if args.algorithm != "pca":
        print(pd.DataFrame(fits).to_string(index=False), flush=True)
    return rows


def report(rows: list[dict], algorithm: str) -> None:
    df = pd.DataFrame(rows)
    good = total = 0
    for (task, signal, q), g in df.groupby(["task", "signal", "quality"], sort=False):
        g = g.sort_values("cells")
        fit = fit_size_law(g.cells.to_numpy(float), g.mi.to_numpy(), algorithm=algorithm, mi_se=g.se.to_numpy())
        ok = fit.identified and fit.r2 >= GOOD_R2
        good, total = good + ok, total + 1
        p = fit.params or {}
        params = (f"I_inf {p.get('i_inf', np.nan):.2f} N0 {p.get('n0', np.nan):.3g} s {p.get('s', np.nan):.2f} "
                  f"R2 {fit.r2:.3f}" if fit.params else "")
        print(f"{task:12s} {signal:10s} q={q:<5g} " + " ".join(f"{v:5.2f}" for v in g.mi)
              + f"  rise {g.mi.iloc[-1] - g.mi.iloc[0]:+.2f}  {'IDENTIFIED' if ok else 'no'}  {params}  {fit.reason}")
    print(f"size law: identified with R2 >= {GOOD_R2:g}: {good} of {total}")
    good = total = 0
    for (task, signal, n), g in df.groupby(["task", "signal", "cells"], sort=False):
        fit = fit_noise_law(g.umis.to_numpy(), g.mi.to_numpy())
        ok = fit.identified and fit.r2 >= GOOD_R2
        good, total = good + ok, total + 1
        if not ok:
            print(f"  noise law not identified: {task} {signal} N={n}: R2 {fit.r2:.3f} {fit.reason}")
    print(f"noise law: identified with R2 >= {GOOD_R2:g}: {good} of {total}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["cite", "development"], choices=list(TASKS))
    ap.add_argument("--cells", type=int, default=5000, help="cells simulated per task")
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--test-cells", type=int, default=1000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200, 400, 800, 1600, 3200])
    ap.add_argument("--qualities", type=float, nargs="+", default=[1.0, 0.3, 0.1, 0.03])
    ap.add_argument("--seed", type=int, default=42, help="study seed: split, thinning, PCA, LMI")
    ap.add_argument("--data-seed", type=int, default=1)
    ap.add_argument("--algorithm", choices=["pca", "scvi"], default="pca")
    ap.add_argument("--budget", default="default", help="SCVI's training budget (models/budget.py)")
    ap.add_argument("--lmi-epochs", type=int, default=100)
    ap.add_argument("--type-spread", type=float, nargs=2, metavar=("LO", "HI"),
                    help="scale the type programs by factors log-spaced in [LO, HI] (in a seeded order)")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="simulator constants to override")
    args = ap.parse_args()
    for item in args.set:
        name, value = item.split("=", 1)
        if not hasattr(simulator, name):
            ap.error(f"--set: the simulator has no constant {name!r}")
        setattr(simulator, name, type(getattr(simulator, name))(float(value)))
    print(f"simulator {', '.join(args.set) or 'as committed'}, type spread {args.type_spread}; {args.cells} cells, {args.test_cells} test, "
          f"sizes {args.sizes}, qualities {args.qualities}")
    start = time.perf_counter()
    rows = [r for task in args.tasks for r in run_task(task, args)]
    report(rows, args.algorithm)
    print(f"wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
