"""Thinning throughput (input UMIs/s, one core): thin_counts vs scanpy.pp.downsample_counts.

    .venv/bin/python benchmarks/bench_thinning.py [--cells 20000] [--genes 2000]

Counts come from the embedded simulator (cite task, ~3,000 UMIs per cell), cached under
benchmarks/_data/. scanpy is given the same expected depth per cell (counts_per_cell = q x total).
"""

from __future__ import annotations

import os

# one core for every library, set before numpy / numba load
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

DATA = Path(__file__).resolve().parent / "_data"


def best_of(fn, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--genes", type=int, default=2_000)
    args = ap.parse_args()
    import anndata as ad
    import scanpy as sc

    from scaling_assets.data.h5ad_io import CsrReader
    from scaling_assets.data.simulate import simulate
    from scaling_assets.data.thinning import thin_counts

    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"thin_cite_{args.cells}x{args.genes}.h5ad"
    if not path.exists():
        simulate("cite", args.cells, args.genes, seed=0, out_path=path)
    with CsrReader(path) as r:
        X = r.read_rows(0, r.n_obs)
    rows = np.arange(X.shape[0])
    umis = float(X.sum())
    totals = np.asarray(X.sum(1)).ravel()
    print(f"{X.shape[0]:,} cells x {X.shape[1]:,} genes, {umis / 1e6:.1f}M UMIs, {X.nnz / 1e6:.1f}M nonzeros, "
          f"{umis / X.nnz:.2f} UMIs per nonzero; one core; best of 3\n")
    warm = ad.AnnData(X[:100].astype(np.float32))
    sc.pp.downsample_counts(warm, counts_per_cell=10, random_state=0)  # numba compile outside the clock
    print(f"{'q':>6}{'thin_counts M UMIs/s':>24}{'scanpy downsample M UMIs/s':>30}{'speed-up':>10}")
    for q in (0.5, 0.1, 0.01):
        t_ours = best_of(lambda: thin_counts(X, rows, q, seed=0))
        target = np.maximum(np.round(totals * q), 0).astype(int)

        def scanpy_run():
            a = ad.AnnData(X.copy())
            sc.pp.downsample_counts(a, counts_per_cell=target, random_state=0, replace=False)

        t_sc = best_of(scanpy_run)
        print(f"{q:>6}{umis / t_ours / 1e6:>24.1f}{umis / t_sc / 1e6:>30.1f}{t_sc / t_ours:>9.1f}x")


if __name__ == "__main__":
    main()
