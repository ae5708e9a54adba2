"""Binomial thinning: statistics, nesting across qualities, consistency, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scaling_assets.data.counts import InMemoryCounts
from scaling_assets.data.thinning import mean_umis, thin_counts


def _counts(n=400, g=300, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    X = sp.random(n, g, density=0.3, format="csr", random_state=seed)
    X.data = rng.geometric(0.4, X.nnz).astype(np.int32)  # counts 1, 2, 3, ... (mean 2.5)
    X.data[::97] = rng.integers(50, 500, X.data[::97].size)  # a few deep entries
    return sp.csr_matrix(X, dtype=np.int32)


@pytest.mark.parametrize("q", [0.5, 0.1, 0.013])
def test_mean_and_variance_are_binomial(q):
    X = _counts()
    rows = np.arange(X.shape[0])
    total = X.sum()
    Y = thin_counts(X, rows, q, seed=42)
    assert Y.shape == X.shape and Y.dtype == X.dtype
    kept = Y.sum() / total
    sd = np.sqrt(q * (1 - q) / total)  # binomial sd of the kept fraction
    assert abs(kept - q) < 5 * sd
    # per-entry variance: entries with count c keep Binomial(c, q) molecules
    c = X.toarray().ravel()
    k = Y.toarray().ravel()
    for count in (1, 2, 3):
        sel = c == count
        assert abs(k[sel].mean() - count * q) < 5 * np.sqrt(count * q * (1 - q) / sel.sum())
        var = k[sel].var()
        expected = count * q * (1 - q)
        # sd of a sample variance ~ expected * sqrt(2 / n) for near-normal data; generous bound
        assert abs(var - expected) < 6 * np.sqrt((2 * expected**2 + count * q * (1 - q)) / sel.sum()) + 1e-3
    assert (Y > X).nnz == 0


def test_q_one_is_identity_and_q_zero_empties():
    X = _counts()
    assert thin_counts(X, np.arange(X.shape[0]), 1.0, seed=1) is X
    assert thin_counts(X, np.arange(X.shape[0]), 0.0, seed=1).nnz == 0


def test_nesting_across_qualities():
    X = _counts()
    rows = np.arange(X.shape[0])
    Y1 = thin_counts(X, rows, 0.6, seed=7)
    Y2 = thin_counts(X, rows, 0.2, seed=7)
    assert (Y2 > Y1).nnz == 0  # every molecule kept at 0.2 is kept at 0.6
    # conditional keep probability q2/q1 among molecules kept at q1
    ratio = Y2.sum() / Y1.sum()
    sd = np.sqrt((1 / 3) * (2 / 3) / Y1.sum())
    assert abs(ratio - 1 / 3) < 5 * sd


def test_consistent_across_chunkings_and_subsets():
    X = _counts()
    rows = np.arange(X.shape[0])
    whole = thin_counts(X, rows, 0.3, seed=5).toarray()
    chunks = [thin_counts(X[a : a + 37], rows[a : a + 37], 0.3, seed=5) for a in range(0, X.shape[0], 37)]
    np.testing.assert_array_equal(sp.vstack(chunks).toarray(), whole)
    subset = np.array([399, 3, 150, 77])
    np.testing.assert_array_equal(thin_counts(X[subset], subset, 0.3, seed=5).toarray(), whole[subset])


def test_determinism_and_seed_dependence():
    X = _counts()
    rows = np.arange(X.shape[0])
    a = thin_counts(X, rows, 0.3, seed=11)
    assert (a != thin_counts(X, rows, 0.3, seed=11)).nnz == 0
    assert (a != thin_counts(X, rows, 0.3, seed=12)).nnz > 0
    # the raw row index matters: same counts under another row id thin differently
    assert (a != thin_counts(X, rows + 1000, 0.3, seed=11)).nnz > 0


def test_float_counts_and_mean_umis():
    X = _counts()
    Xf = sp.csr_matrix(X, dtype=np.float32)
    rows = np.arange(X.shape[0])
    np.testing.assert_array_equal(thin_counts(Xf, rows, 0.4, 3).toarray(), thin_counts(X, rows, 0.4, 3).toarray())
    src = InMemoryCounts(X)
    assert mean_umis(src, chunk_size=33) == pytest.approx(X.sum() / X.shape[0])
    assert mean_umis(src, rows=np.array([0, 1])) == pytest.approx(X[:2].sum() / 2)
    with pytest.raises(ValueError, match="q must be in"):
        thin_counts(X, rows, 1.5, 0)


def test_rows_with_counts_keeps_the_cells_that_keep_a_umi():
    from scaling_assets.data.counts import InMemoryCounts
    from scaling_assets.data.thinning import rows_with_counts

    counts = sp.csr_matrix(np.array([[0, 0], [1, 0], [0, 40], [2, 1], [0, 0], [1, 1]]))
    src = InMemoryCounts(counts, var_names=["a", "b"])
    rows = np.array([0, 1, 2, 3, 5])
    assert list(rows_with_counts(src, rows, 1.0, seed=0)) == [1, 2, 3, 5]  # the empty cell only
    ones = sp.vstack([sp.csr_matrix(np.array([[0, 40]]))] + [sp.csr_matrix(np.array([[1, 0]]))] * 30, format="csr")
    src, rows = InMemoryCounts(ones, var_names=["a", "b"]), np.arange(31)
    kept = rows_with_counts(src, rows, 0.1, seed=7, chunk_size=4)
    thinned = thin_counts(ones, rows, q=0.1, seed=7)
    np.testing.assert_array_equal(kept, rows[np.asarray(thinned.sum(axis=1)).ravel() > 0])
    assert kept[0] == 0 and 1 <= len(kept) < 12  # 40 UMIs survive; most 1-UMI cells do not (~3 of 30 stay)
