"""Training sets without copies: one pool file per seed, row ranges of it thinned on read.

The training pool of a seed is written once, at full quality, in the seed's pool order
(``pool.h5ad``) with the raw row index of every pool row (``raw_rows.npy``). The N-cell training set
at quality q is rows [0, N) of that file thinned at q *as it is read*. Thinning keys on the raw row
index (not the pool row), so a cell looks exactly as it did when every setting wrote its own thinned
copy: sizes stay nested (a prefix of one order) and qualities nested and consistent
(``scaling_assets.data.thinning``). Cells that thinning leaves with no UMI are left out of the
training set (DESIGN §3): a setting's handle lists those pool rows (``find_zero_umi_rows``, one pass
when the setting's record is written), and every model reading the range skips them; N stays the
setting's nominal size.

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
    """CountSource over rows [0, stop) of a pool file, thinned at ``quality`` on read, without the
    pool rows in ``dropped`` (the cells left with no UMI at that quality).

    Row i of this source is the i-th pool row of [0, stop) not dropped (pool row i when nothing is
    dropped); its thinning key is the cell's row in the raw file (``raw_rows``), so the counts equal
    those of a thinned copy written from the raw file. Memory beyond the reader: the dropped rows.
    """

    def __init__(self, pool, raw_rows: np.ndarray, stop: int, quality: float, seed: int,
                 dropped: np.ndarray | None = None, check: RowDigestCheck | None = None):
        if not 0 <= stop <= pool.n_obs:
            raise InputError(f"setting N={stop} exceeds the training pool of {pool.n_obs} cells")
        if len(raw_rows) != pool.n_obs:
            raise InputError(f"{len(raw_rows)} raw row indices for a pool of {pool.n_obs} cells")
        dropped = np.zeros(0, np.int64) if dropped is None else np.asarray(dropped, dtype=np.int64)
        if dropped.size and (np.any(np.diff(dropped) <= 0) or dropped[0] < 0 or dropped[-1] >= stop):
            raise InputError(f"dropped rows must be increasing pool rows within [0, {stop})")
        self._pool, self._raw_rows, self._stop = pool, np.asarray(raw_rows, dtype=np.int64), int(stop)
        self._dropped = dropped
        # pool row of source row i: i + (number of dropped rows at or before it), by searchsorted
        self._shift = dropped - np.arange(dropped.size)
        self.quality, self.seed = float(quality), int(seed)
        self._thin = None if quality >= 1.0 else partial(thin_counts, q=quality, seed=seed)
        self.check = check  # checks the pool's row blocks as rows are read in order


    def __getattr__(self, name):  # var_names, read_uns, obsm_keys, ... come from the pool file
        return getattr(self._pool, name)

    @property
    def n_obs(self) -> int:
        return self._stop - self._dropped.size

    @property
    def n_vars(self) -> int:
        return self._pool.n_vars

    @property
    def dropped(self) -> np.ndarray:
        """Pool rows of [0, stop) left out (no UMI at this quality)."""
        return self._dropped

    def pool_rows(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Pool row of each source row in ``rows`` (all rows if None)."""
        rows = np.arange(self.n_obs) if rows is None else self._checked(rows)
        if not self._dropped.size:
            return rows
        return rows + np.searchsorted(self._shift, rows, side="right")

    @property
    def obs_names(self) -> np.ndarray:
        return np.asarray(self._pool.obs_names)[self.pool_rows()]

    def raw_rows(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Raw-file row index of source rows ``rows`` (all rows if None)."""
        return self._raw_rows[self.pool_rows(rows)]

    def _checked(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_obs):
            raise IndexError(f"rows outside the training range [0, {self.n_obs})")
        return rows

    def _apply(self, X: sp.csr_matrix, pool_rows: np.ndarray) -> sp.csr_matrix:
        return X if self._thin is None else self._thin(X, self._raw_rows[pool_rows])

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        start, stop = max(0, start), min(stop, self.n_obs)
        if not self._dropped.size or stop <= start:
            X = self._pool.read_rows(start, max(start, stop))
            if self.check is not None:
                self.check.feed(start, X)
            return self._apply(X, np.arange(start, max(start, stop)))
        pool_rows = self.pool_rows(np.arange(start, stop))
        if self.check is None:
            return self._apply(self._pool.read_subset(pool_rows), pool_rows)  # near rows are read in one call
        # The check must see every pool row in order: read the contiguous pool rows from just after the
        # previous source row (dropped rows included) and keep the source's.
        lo = 0 if start == 0 else int(self.pool_rows(np.array([start - 1]))[0]) + 1
        hi = self._stop if stop == self.n_obs else int(pool_rows[-1]) + 1
        X = self._pool.read_rows(lo, hi)
        self.check.feed(lo, X)
        return self._apply(X[pool_rows - lo], pool_rows)

    def read_subset(self, rows: np.ndarray) -> sp.csr_matrix:
        pool_rows = self.pool_rows(rows)
        return self._apply(self._pool.read_subset(pool_rows), pool_rows)

    def iter_chunks(self, chunk_size: int = 10_000, rows: np.ndarray | None = None):
        if rows is None:
            for start in range(0, self.n_obs, chunk_size):
                stop = min(start + chunk_size, self.n_obs)
                yield np.arange(start, stop), self.read_rows(start, stop)
            return
        rows = self._checked(rows)
        for start in range(0, rows.size, chunk_size):
            chunk = rows[start : start + chunk_size]
            yield chunk, self.read_subset(chunk)

    def read_obs(self, rows: np.ndarray | None = None, columns: list[str] | None = None):
        return self._pool.read_obs(self.pool_rows(rows), columns)

    def read_obsm(self, key: str, rows: np.ndarray | None = None) -> np.ndarray:
        return self._pool.read_obsm(key, self.pool_rows(rows))


@dataclass(frozen=True)
class CountsRange:
    """Handle of a setting's training counts: rows [0, cells) of a pool folder, thinned at quality,
    without ``zero_umi_rows`` (the pool rows of that range left with no UMI at the quality; found by
    ``find_zero_umi_rows``). ``cells`` stays the setting's nominal N; ``training_cells`` is what trains."""

    pool: str
    cells: int
    quality: float
    seed: int
    zero_umi_rows: tuple[int, ...] = ()
    kind: str = "counts_range"

    def __post_init__(self):  # a stored record gives a list; keep the handle hashable and comparable
        object.__setattr__(self, "zero_umi_rows", tuple(int(r) for r in self.zero_umi_rows))

    @property
    def training_cells(self) -> int:
        return self.cells - len(self.zero_umi_rows)

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
            source = ThinnedRange(reader, raw_rows, self.cells, self.quality, self.seed,
                                  dropped=np.asarray(self.zero_umi_rows, dtype=np.int64), check=check)
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


def find_zero_umi_rows(handle: CountsRange, chunk_size: int = 10_000) -> tuple[CountsRange, float]:
    """The handle without the cells that ``handle``'s range leaves with no UMI at its quality (DESIGN §3:
    they are dropped from every training set; N stays nominal), and the mean UMIs per kept cell.
    One streamed pass over the range, chunk by chunk."""
    full = CountsRange(handle.pool, handle.cells, handle.quality, handle.seed)
    zero, total = [], 0.0
    with full.open() as source:
        for rows, X in source.iter_chunks(chunk_size):
            sums = np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()
            total += float(sums.sum())
            zero.append(np.asarray(rows)[sums == 0])
    rows = np.concatenate(zero) if zero else np.zeros(0, np.int64)
    kept = handle.cells - rows.size
    return CountsRange(handle.pool, handle.cells, handle.quality, handle.seed, tuple(rows.tolist())), \
        (total / kept if kept else 0.0)


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
