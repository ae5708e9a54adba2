"""What the pools' integrity checks cost: row-block digests at write and while a stage streams the pool.

    .venv/bin/python benchmarks/bench_integrity.py [--cells 60000] [--genes 2000] [--nnz 400]

Builds a synthetic raw file in a temporary folder, writes a pool from it (a permutation of its rows)
with and without the row-block digests, then reads rows [0, N) of the pool in order at q = 1 and
q = 0.5 the way ``train_counts`` does (``thinning.mean_umis``), with and without the check, and times
a whole-file BLAKE2b (what a second read to verify the hash would cost instead). Best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def build_raw(path: Path, cells: int, genes: int, nnz: int, chunk: int = 10_000) -> None:
    import pandas as pd
    import scipy.sparse as sp

    from scaling_assets.data.h5ad_io import CsrWriter

    rng = np.random.default_rng(0)
    with CsrWriter(path, [f"g{j}" for j in range(genes)]) as writer:
        for start in range(0, cells, chunk):
            n = min(chunk, cells - start)
            gaps = rng.integers(1, 2 * genes // nnz, size=(n, nnz))
            cols = np.cumsum(gaps, axis=1)
            cols = np.where(cols < genes, cols, -1)
            rows = np.repeat(np.arange(n), nnz)
            keep = cols.ravel() >= 0
            X = sp.csr_matrix((rng.integers(1, 6, keep.sum()).astype(np.int32), (rows[keep], cols.ravel()[keep])),
                              shape=(n, genes))
            obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["a", "b"], n))},
                               index=[f"c{start + i}" for i in range(n)])
            writer.append(X, obs)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=60_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--nnz", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from scaling_assets.data.h5ad_io import CsrReader, write_rows
    from scaling_assets.data.integrity import fingerprint
    from scaling_assets.data.pools import POOL_FILE, CountsRange, write_pool
    from scaling_assets.data.thinning import mean_umis

    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
        tmp = Path(tmp)
        build_raw(tmp / "raw.h5ad", args.cells, args.genes, args.nnz)
        order = np.random.default_rng(1).permutation(args.cells)
        with CsrReader(tmp / "raw.h5ad") as raw:
            plain = best(lambda: write_rows(raw, order, tmp / "plain.h5ad"), args.repeat)
            digested = best(lambda: write_pool(raw, order, tmp / "pool"), args.repeat)
        size = (tmp / "pool" / POOL_FILE).stat().st_size
        print(f"pool: {args.cells:,} cells x {args.genes:,} genes, {size / 1e6:,.0f} MB")
        print(f"write: {plain:.2f} s without digests; {digested:.2f} s write_pool (digests + file BLAKE2b + raw_rows)")
        for q in (1.0, 0.5):
            def read(check: bool):
                with CountsRange(str(tmp / "pool"), args.cells, q, 42).open() as src:
                    if not check:
                        src.check = None
                    mean_umis(src, chunk_size=10_000)
                    return src.check
            off, on = best(lambda: read(False), args.repeat), best(lambda: read(True), args.repeat)
            print(f"read [0, N) at q={q}: {off:.2f} s unchecked, {on:.2f} s checked (+{100 * (on - off) / off:.0f}%)")
        whole = best(lambda: fingerprint(tmp / "pool" / POOL_FILE), args.repeat)
        print(f"whole-file BLAKE2b (a second read, page cache warm): {whole:.2f} s")


if __name__ == "__main__":
    main()
