"""The count-set protocol every stage reads: row ranges and row subsets of a cells x genes CSR matrix.

`scaling_assets.data.h5ad_io.CsrReader` implements it over an h5ad file on disk (bounded memory);
`InMemoryCounts` implements it over arrays already in memory (tests, small fixtures).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp


@runtime_checkable
class CountSource(Protocol):
    """A cells x genes count matrix that is read in row ranges, never whole."""

    @property
    def n_obs(self) -> int: ...

    @property
    def n_vars(self) -> int: ...

    @property
    def var_names(self) -> np.ndarray: ...

    @property
    def obs_names(self) -> np.ndarray: ...

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix: ...

    def read_subset(self, rows: np.ndarray) -> sp.csr_matrix: ...

    def iter_chunks(
        self, chunk_size: int = 10_000, rows: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]: ...

    def read_obs(self, rows: np.ndarray | None = None, columns: list[str] | None = None) -> pd.DataFrame: ...

    def read_obsm(self, key: str, rows: np.ndarray | None = None) -> np.ndarray: ...


class InMemoryCounts:
    """CountSource over an in-memory CSR matrix (for tests and small fixtures)."""

    def __init__(
        self,
        X: sp.spmatrix | np.ndarray,
        obs: pd.DataFrame | None = None,
        var_names: np.ndarray | list[str] | None = None,
        obsm: dict[str, np.ndarray] | None = None,
    ):
        self._X = sp.csr_matrix(X)
        n_obs, n_vars = self._X.shape
        self._obs = obs if obs is not None else pd.DataFrame(index=[f"cell{i}" for i in range(n_obs)])
        self._var_names = np.asarray(
            var_names if var_names is not None else [f"gene{j}" for j in range(n_vars)], dtype=object
        )
        self._obsm = dict(obsm or {})

    @property
    def n_obs(self) -> int:
        return self._X.shape[0]

    @property
    def n_vars(self) -> int:
        return self._X.shape[1]

    @property
    def var_names(self) -> np.ndarray:
        return self._var_names

    @property
    def obs_names(self) -> np.ndarray:
        return np.asarray(self._obs.index, dtype=object)

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        return self._X[start:stop]

    def read_subset(self, rows: np.ndarray) -> sp.csr_matrix:
        return self._X[np.asarray(rows)]

    def iter_chunks(self, chunk_size: int = 10_000, rows: np.ndarray | None = None):
        rows = np.arange(self.n_obs) if rows is None else np.asarray(rows)
        for start in range(0, len(rows), chunk_size):
            chunk = rows[start : start + chunk_size]
            yield chunk, self._X[chunk]

    def read_obs(self, rows: np.ndarray | None = None, columns: list[str] | None = None) -> pd.DataFrame:
        obs = self._obs if rows is None else self._obs.iloc[np.asarray(rows)]
        return obs if columns is None else obs[columns]

    def read_obsm(self, key: str, rows: np.ndarray | None = None) -> np.ndarray:
        values = self._obsm[key]
        return values if rows is None else values[np.asarray(rows)]


class TransformedCounts:
    """A CountSource whose rows pass through ``transform(csr_chunk, row_indices)`` as they are read.

    Used for on-the-fly quality thinning: ``TransformedCounts(reader, partial(thin_counts, q=q, seed=s))``
    reads the thinned pool chunk by chunk without writing it to disk. Row indices are the source's
    own row numbers, so a per-cell transform gives the same result whatever the chunking.
    """

    def __init__(self, source: CountSource, transform):
        self._source = source
        self._transform = transform

    def __getattr__(self, name):  # n_obs, var_names, read_obs, read_obsm, ... come from the source
        return getattr(self._source, name)

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        return self._transform(self._source.read_rows(start, stop), np.arange(start, stop))

    def read_subset(self, rows: np.ndarray) -> sp.csr_matrix:
        rows = np.asarray(rows)
        return self._transform(self._source.read_subset(rows), rows)

    def iter_chunks(self, chunk_size: int = 10_000, rows: np.ndarray | None = None):
        for chunk_rows, csr in self._source.iter_chunks(chunk_size, rows):
            yield chunk_rows, self._transform(csr, chunk_rows)
