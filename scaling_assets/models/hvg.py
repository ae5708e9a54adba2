"""Highly variable genes, Seurat flavour (as ``scanpy.pp.highly_variable_genes(flavor="seurat")`` on
log-normalised data), streamed: one pass of per-gene sums and sums of squares, bounded memory.

On log-normalised data scanpy undoes the log (expm1), so the statistics are those of the counts
scaled to 10,000 per cell: mean m and variance v (ddof = 1) per gene, dispersion log(v / m) (NaN for
v = 0; m = 0 counts as 1e-12), genes binned into 20 equal-width bins of log1p(m); the normalised
dispersion is the dispersion's z-score within its bin (a bin holding one gene: avg 0, dev = that
gene's dispersion, as scanpy). Selected: the genes whose normalised dispersion is at least the
n_top-th highest (ties included, as scanpy).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scaling_assets.errors import InputError

N_BINS = 20
TARGET_SUM = 1e4


def seurat_highly_variable(source, n_top: int, rows: np.ndarray | None = None, chunk_size: int = 10_000,
                           n_bins: int = N_BINS) -> np.ndarray:
    """Sorted indices of the highly variable genes of ``rows`` of a CountSource (all rows when None)."""
    import scipy.sparse as sp

    n_genes = source.n_vars
    s1, s2, n = np.zeros(n_genes), np.zeros(n_genes), 0
    for _, X in source.iter_chunks(chunk_size, rows):
        X = sp.csr_matrix(X, dtype=np.float64, copy=True)
        totals = np.asarray(X.sum(axis=1)).ravel()
        X.data *= np.repeat(np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0),
                            np.diff(X.indptr))
        s1 += np.asarray(X.sum(axis=0)).ravel()
        s2 += np.asarray(X.multiply(X).sum(axis=0)).ravel()
        n += X.shape[0]
    if n < 2:
        raise InputError(f"highly variable genes: need at least 2 cells, got {n}")
    mean = s1 / n
    var = (s2 / n - mean**2) * (n / (n - 1))
    return select_seurat(mean, var, n_top, n_bins)


def select_seurat(mean: np.ndarray, var: np.ndarray, n_top: int, n_bins: int = N_BINS) -> np.ndarray:
    """The Seurat-flavour selection from per-gene means and variances of normalised counts."""
    mean = np.where(mean == 0, 1e-12, mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = var / mean
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
    df = pd.DataFrame({"means": np.log1p(mean), "dispersions": dispersion})
    df["mean_bin"] = pd.cut(df["means"], bins=n_bins)
    stats = df.groupby("mean_bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
    single = stats["dev"].isnull()  # one gene in the bin
    stats.loc[single, "dev"] = stats.loc[single, "avg"]
    stats.loc[single, "avg"] = 0
    per_gene = stats.loc[df["mean_bin"]].set_index(df.index)
    norm = ((df["dispersions"] - per_gene["avg"]) / per_gene["dev"]).to_numpy()
    finite = np.sort(norm[~np.isnan(norm)])[::-1]
    if len(finite) == 0:
        raise InputError("highly variable genes: no gene varies across the cells")
    cutoff = finite[min(n_top, len(finite)) - 1]
    return np.flatnonzero(np.nan_to_num(norm, nan=-np.inf) >= cutoff)
