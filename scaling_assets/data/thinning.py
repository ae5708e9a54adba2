"""Quality thinning: exact binomial thinning of UMI counts with a counter-based hash.

Molecule m (0..count-1) of entry (global cell row r, gene g) is kept at quality q iff
U(seed, r, g, m) < q, where U is a deterministic uniform from a splitmix64-style integer hash:

    H_0 = mix(mix(seed) ^ (r << 32 | g)),   H_k = mix(H_0 + k * GOLDEN)  for k >= 1
    U(seed, r, g, m) = (32-bit half m % 2 of H_{m // 2}) / 2**32

(two 32-bit uniforms per 64-bit hash halves the hashing work; q is resolved to 2**-32).

Because U does not depend on q, the molecules kept at q2 < q1 are a subset of those kept at q1
(nesting, with conditional probability q2/q1), and a cell looks the same in every sample and
chunking that contains it (U depends only on its raw row index).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK32 = np.uint64(0xFFFFFFFF)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
# Entries hashed per block: keeps the temporaries in cache and memory bounded.
_BLOCK = 1 << 18


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array (wrapping arithmetic is intended)."""
    z += _GOLDEN
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def _threshold(q: float) -> np.uint64:
    # U < q  <=>  bits < ceil(q * 2**32) for 32-bit uniforms U = bits / 2**32
    return np.uint64(math.ceil(q * 2.0**32))


def thin_counts(csr: sp.spmatrix, rows: np.ndarray, q: float, seed: int) -> sp.csr_matrix:
    """Binomially thin integer counts: each molecule kept with probability ``q``.

    ``rows`` are the global (raw file) row indices of ``csr``'s rows. Same shape and dtype out;
    ``q == 1`` returns the input unchanged.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quality q must be in [0, 1], got {q}")
    if q == 1.0:
        return csr
    csr = sp.csr_matrix(csr)
    rows = np.asarray(rows, dtype=np.uint64)
    if rows.size != csr.shape[0]:
        raise ValueError(f"rows has {rows.size} entries for a matrix with {csr.shape[0]} rows")
    counts = csr.data.astype(np.int64) if csr.data.dtype.kind == "f" else csr.data
    kept = np.zeros(csr.nnz, dtype=counts.dtype)
    if q > 0 and csr.nnz:
        base = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
        thr = _threshold(q)
        row_of_entry = np.repeat(rows, np.diff(csr.indptr))
        for lo in range(0, csr.nnz, _BLOCK):
            hi = min(lo + _BLOCK, csr.nnz)
            kept[lo:hi] = _thin_block(base, thr, row_of_entry[lo:hi], csr.indices[lo:hi], counts[lo:hi])
    out = sp.csr_matrix((kept.astype(csr.data.dtype, copy=False), csr.indices.copy(), csr.indptr.copy()), shape=csr.shape)
    out.eliminate_zeros()
    return out


def _thin_block(base, thr, r, g, c) -> np.ndarray:
    key = r << _S32
    key |= g.astype(np.uint64)
    key ^= base
    h = _mix(key)  # H_0 of every entry: uniforms of molecules 0 (low half) and 1 (high half)
    kept = (h & _MASK32 < thr).astype(c.dtype)
    kept += (c > 1) & (h >> _S32 < thr)
    active = np.flatnonzero(c > 2)
    k = 1
    # H_k for entries that still have molecules 2k, 2k+1; the active set shrinks quickly
    while active.size > 256:
        z = h[active] + np.uint64((k * int(_GOLDEN)) & 0xFFFFFFFFFFFFFFFF)
        _mix(z)
        ca = c[active]
        kept[active] += (z & _MASK32 < thr).astype(c.dtype) + ((ca > 2 * k + 1) & (z >> _S32 < thr))
        active = active[ca > 2 * k + 2]
        k += 1
    if active.size:  # few deep entries left: expand their remaining hashes at once
        n_hash = (c[active].astype(np.int64) + 1) // 2 - k  # hashes k..ceil(c/2)-1
        entry = np.repeat(np.arange(active.size), n_hash)
        first = np.zeros(active.size, dtype=np.int64)
        np.cumsum(n_hash[:-1], out=first[1:])
        kk = np.arange(entry.size, dtype=np.int64) - first[entry] + k
        z = h[active][entry] + kk.astype(np.uint64) * _GOLDEN
        _mix(z)
        ce = c[active][entry].astype(np.int64)
        keep = (z & _MASK32 < thr).astype(np.int64) + ((ce > 2 * kk + 1) & (z >> _S32 < thr))
        kept[active] += np.bincount(entry, weights=keep, minlength=active.size).astype(c.dtype)
    return kept


def mean_umis(source, rows: np.ndarray | None = None, chunk_size: int = 10_000) -> float:
    """Mean total counts per cell over ``rows`` (all rows if None), read chunk by chunk."""
    total, n = 0.0, 0
    for chunk_rows, X in source.iter_chunks(chunk_size, rows=rows):
        total += float(X.sum(dtype=np.float64))
        n += chunk_rows.size
    return total / n if n else 0.0


def rows_with_counts(source, rows: np.ndarray, q: float, seed: int, chunk_size: int = 10_000) -> np.ndarray:
    """The ``rows`` of a CountSource that keep at least one UMI after thinning to ``q`` (one streamed pass)."""
    rows = np.asarray(rows, dtype=np.int64)
    keep = []
    for chunk_rows, X in source.iter_chunks(chunk_size, rows=rows):
        X = thin_counts(X, chunk_rows, q=q, seed=seed) if q < 1.0 else X
        keep.append(np.asarray(chunk_rows)[np.asarray(X.sum(axis=1)).ravel() > 0])
    return np.concatenate(keep) if keep else np.zeros(0, np.int64)
