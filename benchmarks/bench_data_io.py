"""Row-range and random-subset reads: project CsrReader vs anndata backed mode vs full read_h5ad.

    .venv/bin/python benchmarks/bench_data_io.py [--cells 1000000] [--genes 20000] [--nnz 1000]

Builds (or reuses) ``benchmarks/_data/bench_<cells>x<genes>.h5ad`` with a fast synthetic generator,
then runs each reader in its own subprocess and reports cells/s and peak RSS (ru_maxrss) side by
side. The full ``anndata.read_h5ad`` runs on a smaller prefix file (``--full-cells``) because the
whole 1M-cell file in memory would not fit next to the other work on a small machine.
Every timed pass stops after ``--budget`` seconds and reports the rate over the cells it read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "_data"


def build(path: Path, n_cells: int, n_genes: int, nnz: int, chunk: int = 10_000) -> None:
    """Strictly increasing random gene indices per row (cumsum of random gaps): no sort needed."""
    import pandas as pd
    import scipy.sparse as sp

    from scaling_assets.data.h5ad_io import CsrWriter

    rng = np.random.default_rng(0)
    mean_gap = n_genes / nnz
    t0 = time.time()
    with CsrWriter(path, [f"G{j:05d}" for j in range(n_genes)], uns={"task": "bench"}) as w:
        for start in range(0, n_cells, chunk):
            n = min(chunk, n_cells - start)
            gaps = rng.integers(1, int(2 * mean_gap), size=(n, nnz), dtype=np.int32)
            idx = np.cumsum(gaps, axis=1, dtype=np.int32) - 1
            keep = idx < n_genes
            indptr = np.concatenate([[0], np.cumsum(keep.sum(1))])
            data = rng.geometric(0.5, size=int(indptr[-1])).astype(np.int32)
            X = sp.csr_matrix((data, idx[keep], indptr), shape=(n, n_genes))
            obs = pd.DataFrame({"batch": pd.Categorical(np.where(np.arange(n) % 2, "a", "b"))},
                               index=[f"c{i:09d}" for i in range(start, start + n)])
            w.append(X, obs)
            if (start // chunk) % 10 == 0:
                print(f"  built {start + n:,} cells in {time.time() - t0:.0f}s", flush=True)


# ------------------------------------------------------------------------------------------------
# Workers (run in a fresh subprocess each, so ru_maxrss is that reader's peak)


def _worker(mode: str, path: str, chunk: int, budget: float, subset: int, seed: int) -> dict:
    import resource

    # import the reader's library before the clock starts
    if mode.endswith("+malloc"):  # same glibc tuning for either library
        from scaling_assets.data.h5ad_io import tune_allocator

        tune_allocator()
        mode = mode.removesuffix("+malloc")
    if mode.startswith("project"):
        from scaling_assets.data.h5ad_io import CsrReader
    else:
        import anndata
    rng = np.random.default_rng(seed)
    cells = nnz = 0
    t0 = time.perf_counter()
    if mode == "project-range":
        with CsrReader(path) as r:
            for rows, X in r.iter_chunks(chunk):
                cells += rows.size  # always the full pass: its peak RSS is a target
                nnz += X.nnz
    elif mode == "anndata-backed-range":
        a = anndata.read_h5ad(path, backed="r")
        for start in range(0, a.n_obs, chunk):
            X = a.X[start : start + chunk]
            cells += X.shape[0]
            nnz += X.nnz
            if time.perf_counter() - t0 > budget:
                break
    elif mode in ("project-subset", "anndata-backed-subset"):
        if mode == "project-subset":
            reader = CsrReader(path)
            n_obs, read = reader.n_obs, reader.read_subset
        else:
            a = anndata.read_h5ad(path, backed="r")
            n_obs, read = a.n_obs, (lambda rows: a.X[rows])
        while time.perf_counter() - t0 < budget:
            rows = np.sort(rng.choice(n_obs, size=subset, replace=False))
            X = read(rows)
            cells += X.shape[0]
            nnz += X.nnz
    elif mode == "anndata-full":
        # anndata has no chunked full read: this is the whole file in memory
        a = anndata.read_h5ad(path)
        cells, nnz = a.n_obs, a.X.nnz
    elif mode == "project-full-pass":
        with CsrReader(path) as r:
            for rows, X in r.iter_chunks(chunk):
                cells += rows.size
                nnz += X.nnz
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"cells": cells, "nnz": nnz, "seconds": seconds, "cells_per_s": cells / seconds,
            "peak_rss_mb": rss_mb}


def warm_cache(path: Path) -> None:
    """Read the file once so every reader is measured against the OS page cache, not the disk."""
    with open(path, "rb", buffering=0) as fh:
        while fh.read(64 << 20):
            pass


def run(mode: str, path: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--path", str(path), "--chunk", str(args.chunk),
           "--budget", str(args.budget), "--subset", str(args.subset)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--nnz", type=int, default=1_000, help="nonzeros per cell (about)")
    ap.add_argument("--full-cells", type=int, default=200_000, help="cells in the file read fully by anndata")
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--subset", type=int, default=10_000, help="rows per random-subset read")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per timed pass")
    ap.add_argument("--worker")
    ap.add_argument("--path")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.path, args.chunk, args.budget, args.subset, 0)))
        return

    DATA.mkdir(parents=True, exist_ok=True)
    big = DATA / f"bench_{args.cells}x{args.genes}.h5ad"
    if not big.exists():
        print(f"building {big} ...", flush=True)
        build(big, args.cells, args.genes, args.nnz)
    small = DATA / f"bench_{args.full_cells}x{args.genes}.h5ad"
    if not small.exists():
        from scaling_assets.data.h5ad_io import CsrReader, write_rows

        with CsrReader(big) as r:
            write_rows(r, np.arange(min(args.full_cells, r.n_obs)), small)
    print(f"file: {big} ({big.stat().st_size / 1e9:.1f} GB); chunk {args.chunk:,} rows; "
          f"random subsets of {args.subset:,} sorted rows; {args.budget:.0f}s budget per pass; "
          f"file pre-read into the OS page cache for every reader")
    warm_cache(big)
    warm_cache(small)
    rows = []
    for mode in ("project-range", "anndata-backed-range", "project-range+malloc", "anndata-backed-range+malloc",
                 "project-subset", "anndata-backed-subset"):
        rows.append((mode, big.name, run(mode, big, args)))
        print(f"  done {mode}", flush=True)
    for mode in ("project-full-pass", "project-full-pass+malloc", "anndata-full"):
        rows.append((mode, small.name, run(mode, small, args)))
        print(f"  done {mode}", flush=True)
    print(f"\n{'reader':<26}{'file':<30}{'cells read':>12}{'cells/s':>12}{'MB/s (nnz*8)':>14}{'peak RSS MB':>13}")
    for mode, name, r in rows:
        mbs = r["nnz"] * 8 / r["seconds"] / 1e6
        print(f"{mode:<26}{name:<30}{r['cells']:>12,}{r['cells_per_s']:>12,.0f}{mbs:>14,.0f}{r['peak_rss_mb']:>13,.0f}")
    res = {m: r for m, _, r in rows}
    print(f"\ncontiguous speed-up vs anndata backed: "
          f"{res['project-range']['cells_per_s'] / res['anndata-backed-range']['cells_per_s']:.1f}x "
          f"(project with tune_allocator vs anndata default: "
          f"{res['project-range+malloc']['cells_per_s'] / res['anndata-backed-range']['cells_per_s']:.1f}x; "
          f"both tuned: "
          f"{res['project-range+malloc']['cells_per_s'] / res['anndata-backed-range+malloc']['cells_per_s']:.1f}x); "
          f"random subsets: {res['project-subset']['cells_per_s'] / res['anndata-backed-subset']['cells_per_s']:.1f}x")


if __name__ == "__main__":
    main()
