"""Training sets without copies: one pool file per seed, row ranges of it thinned on read.

The training pool of a seed is written once, at full quality, in the seed's pool order
(``pool.h5ad``) with the raw row index of every pool row (``raw_rows.npy``). The N-cell training set
at quality q is rows [0, N) of that file thinned at q *as it is read*. Thinning keys on the raw row
index (not the pool row), so a cell looks exactly as it did when every setting wrote its own thinned
copy: sizes stay nested (a prefix of one order) and qualities nested and consistent
(``scaling_assets.data.thinning``).

Files written here carry a fingerprint (bytes and BLAKE2b) recorded at write time, and the pool the
BLAKE2b of the counts of every block of rows (``scaling_assets.data.integrity``). A reader checks the
sizes on every open (a truncated file from a killed writer is refused), the raw row indices' hash on
the bytes it loads, the blocks of counts it reads in order as it reads them, and everything on request.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import scipy.sparse as sp

# fingerprint, record_fingerprints, verify_folder and FINGERPRINT_FILE lived here first: still importable
from scaling_assets.data.integrity import (FINGERPRINT_FILE, ROW_BLOCKS, RowDigestCheck, RowDigests,  # noqa: F401
                                           block_rows_for, fingerprint, read_verified_bytes, record_fingerprints,
                                           verify_folder)
from scaling_assets.data.thinning import thin_counts
from scaling_assets.errors import InputError

POOL_FILE = "pool.h5ad"
RAW_ROWS_FILE = "raw_rows.npy"


def write_pool(source, pool_order: np.ndarray, out_dir: Path, chunk_size: int = 10_000,
               progress: bool = False) -> dict:
    """Write the pool's raw rows once, in pool order, at full quality; returns the write summary."""
    from scaling_assets.data.h5ad_io import write_rows

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pool_order = np.asarray(pool_order, dtype=np.int64)
    digests = RowDigests(block_rows_for(pool_order.size))  # of the counts as written, while writing them
    summary = write_rows(source, pool_order, out_dir / POOL_FILE, chunk_size=chunk_size, progress=progress,
                         row_digests=digests)
    np.save(out_dir / RAW_ROWS_FILE, pool_order)
    prints = record_fingerprints(out_dir, [POOL_FILE, RAW_ROWS_FILE], extra={POOL_FILE: {ROW_BLOCKS: digests.finish()}})
    summary["fingerprints"] = {name: {k: v for k, v in p.items() if k != ROW_BLOCKS} for name, p in prints.items()}
    return summary


class ThinnedRange:
    """CountSource over rows [0, stop) of a pool file, thinned at ``quality`` on read.

    Row i of this source is pool row i; its thinning key is ``raw_rows[i]``, the cell's row in the
    raw file, so the counts equal those of a thinned copy written from the raw file.
    """

    def __init__(self, pool, raw_rows: np.ndarray, stop: int, quality: float, seed: int,
                 check: RowDigestCheck | None = None):
        if not 0 <= stop <= pool.n_obs:
            raise InputError(f"setting N={stop} exceeds the training pool of {pool.n_obs} cells")
        if len(raw_rows) != pool.n_obs:
            raise InputError(f"{len(raw_rows)} raw row indices for a pool of {pool.n_obs} cells")
        self._pool, self._raw_rows, self._stop = pool, np.asarray(raw_rows, dtype=np.int64), int(stop)
        self.quality, self.seed = float(quality), int(seed)
        self._thin = None if quality >= 1.0 else partial(thin_counts, q=quality, seed=seed)
        self.check = check  # checks the pool's row blocks as rows are read in order


    def __getattr__(self, name):  # var_names, read_uns, obsm_keys, ... come from the pool file
        return getattr(self._pool, name)

    @property
    def n_obs(self) -> int:
        return self._stop

    @property
    def n_vars(self) -> int:
        return self._pool.n_vars

    @property
    def obs_names(self) -> np.ndarray:
        return np.asarray(self._pool.obs_names)[: self._stop]

    def raw_rows(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Raw-file row index of pool rows ``rows`` (all rows of the range if None)."""
        return self._raw_rows[: self._stop] if rows is None else self._raw_rows[self._checked(rows)]

    def _checked(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self._stop):
            raise IndexError(f"rows outside the training range [0, {self._stop})")
        return rows

    def _apply(self, X: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
        return X if self._thin is None else self._thin(X, self._raw_rows[rows])

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        start, stop = max(0, start), min(stop, self._stop)
        X = self._pool.read_rows(start, stop)
        if self.check is not None:
            self.check.feed(start, X)
        return self._apply(X, np.arange(start, stop))

    def read_subset(self, rows: np.ndarray) -> sp.csr_matrix:
        rows = self._checked(rows)
        return self._apply(self._pool.read_subset(rows), rows)

    def iter_chunks(self, chunk_size: int = 10_000, rows: np.ndarray | None = None):
        if rows is None:
            for start in range(0, self._stop, chunk_size):
                stop = min(start + chunk_size, self._stop)
                yield np.arange(start, stop), self.read_rows(start, stop)
            return
        for chunk_rows, X in self._pool.iter_chunks(chunk_size, rows=self._checked(rows)):
            yield chunk_rows, self._apply(X, chunk_rows)

    def read_obs(self, rows: np.ndarray | None = None, columns: list[str] | None = None):
        return self._pool.read_obs(np.arange(self._stop) if rows is None else self._checked(rows), columns)

    def read_obsm(self, key: str, rows: np.ndarray | None = None) -> np.ndarray:
        return self._pool.read_obsm(key, np.arange(self._stop) if rows is None else self._checked(rows))


@dataclass(frozen=True)
class CountsRange:
    """Handle of a setting's training counts: rows [0, cells) of a pool folder, thinned at quality."""

    pool: str
    cells: int
    quality: float
    seed: int
    kind: str = "counts_range"

    @contextlib.contextmanager
    def open(self, full_hash: bool = False) -> Iterator[ThinnedRange]:
        from scaling_assets.data.h5ad_io import CsrReader

        folder = Path(self.pool)
        recorded = verify_folder(folder, full_hash)
        # read whole anyway: its hash is checked on the bytes loaded
        raw_rows = np.load(io.BytesIO(read_verified_bytes(folder, RAW_ROWS_FILE, recorded)))
        with CsrReader(folder / POOL_FILE) as reader:
            blocks = recorded.get(POOL_FILE, {}).get(ROW_BLOCKS)  # None for a pool written before they were
            check = None if blocks is None else RowDigestCheck(reader.path, folder, blocks, reader.n_obs)
            source = ThinnedRange(reader, raw_rows, self.cells, self.quality, self.seed, check)
            try:
                yield source
            except BaseException:
                if source.check is not None:
                    source.check.close()
                raise
            if source.check is not None:
                source.check.finish()  # the blocks read are all hashed before the stage's output is kept

    def to_record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CorpusRange:
    """Handle of a setting's training corpus: the cells among pool rows [0, pool_rows) of a pool corpus."""

    corpus: str
    pool_rows: int
    kind: str = "corpus_range"

    def open(self, full_hash: bool = False):
        from scaling_assets.data.corpus import Corpus

        verify_folder(Path(self.corpus).parent, full_hash)
        return Corpus(self.corpus, stop_row=self.pool_rows)

    def to_record(self) -> dict:
        return asdict(self)


HANDLES = {"counts_range": CountsRange, "corpus_range": CorpusRange}


def handle_from_record(record: dict):
    """The handle a stored record describes, or None for a plain record."""
    cls = HANDLES.get(record.get("kind", ""))
    if cls is None:
        return None
    fields = cls.__dataclass_fields__
    return cls(**{k: v for k, v in record.items() if k in fields})


def check_size(cells: int, pool_cells: int, what: str = "training pool") -> None:
    if cells > pool_cells:
        raise InputError(f"setting N={cells} exceeds the {what} of {pool_cells} cells")
