"""Fingerprints of stored files, checked where reading them is cheap.

A partition folder that records fingerprints holds ``fingerprint.json``: for each file its bytes and
BLAKE2b at write time. Three checks use it, from cheapest to dearest:

- sizes, on every open (``verify_folder``): a truncated file from a killed writer is refused;
- the count matrix of a pool, row block by row block, *while a stage streams it anyway*
  (``RowDigests`` at write, ``RowDigestCheck`` on read): the pool is written with the BLAKE2b of the
  counts of every block of rows (row lengths, gene indices, values), and a stage reading rows in order
  (``train_counts``, PCA's passes, the corpora, the gene medians) hashes the blocks it reads and refuses
  one that differs. No second read of the file; bytes flipped in place (same size) are caught;
- the whole file (``verify_folder(full_hash=True)``): small files read whole anyway (a model, the
  embeddings, a pool's ``raw_rows.npy``), and ``scaling-assets study verify`` for everything.

A failure names the file, the partition (``<root>/<dataset>/<asset>/<partition>/``) and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from scaling_assets.errors import InputError

FINGERPRINT_FILE = "fingerprint.json"
ROW_BLOCKS = "row_blocks"  # a count file's entry in fingerprint.json: {"rows": block rows, "blake2b": [...]}
_HASH_BLOCK = 8 << 20
MAX_BLOCK_ROWS = 1024  # ~10,000 digests (350 KB of JSON) for a 10M-cell pool; blocks of a few MB to hash
MIN_BLOCKS = 256  # a small pool still gets blocks small enough for a prefix [0, N) to cover most of it


class CorruptFileError(InputError):
    """A stored file differs from what was written: its partition must be rebuilt."""


def partition_name(folder: Path) -> str:
    """``<dataset>/<asset> <partition>`` of a partition folder ``<root>/<dataset>/<asset>/<partition>``."""
    folder = Path(folder)
    return f"{folder.parent.parent.name}/{folder.parent.name} {folder.name}"


def rebuild_hint(folder: Path) -> str:
    return (f"partition {partition_name(folder)} must be rebuilt: `scaling-assets study verify --study <study>` "
            "marks it (and what was made from it since the file changed) for rebuilding, then `scaling-assets "
            "study run` rebuilds them")


def fingerprint(path: Path) -> dict:
    """Bytes and BLAKE2b of a file, streamed in 8 MiB blocks (bounded memory)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return {"bytes": Path(path).stat().st_size, "blake2b": digest.hexdigest()}


def files_under(folder: Path, sub: str) -> list[str]:
    """Every file under ``folder/sub``, as paths relative to ``folder`` (for ``record_fingerprints``)."""
    base = Path(folder)
    return sorted(str(p.relative_to(base)) for p in (base / sub).rglob("*") if p.is_file())


def record_fingerprints(folder: Path, names: list[str], extra: dict | None = None) -> dict:
    """Fingerprint ``names`` inside ``folder`` and store them beside the files; ``extra`` adds entries
    to a file's record (e.g. its row-block digests)."""
    prints = {name: fingerprint(Path(folder) / name) for name in names}
    for name, more in (extra or {}).items():
        prints[name].update(more)
    (Path(folder) / FINGERPRINT_FILE).write_text(json.dumps(prints, indent=2, sort_keys=True))
    return prints


def recorded_fingerprints(folder: Path) -> dict | None:
    path = Path(folder) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise CorruptFileError(f"{path}: unreadable ({exc}); {rebuild_hint(folder)}") from None


def verify_folder(folder: Path, full_hash: bool = False, names: list[str] | None = None) -> dict:
    """Refuse a folder whose files are missing, or whose size (or hash) differs from the recorded one.

    Returns the recorded fingerprints; ``names`` limits the hash (never the size check) to those files."""
    folder = Path(folder)
    recorded = recorded_fingerprints(folder)
    if recorded is None:
        raise CorruptFileError(f"{folder}: no {FINGERPRINT_FILE}; the writer did not finish; {rebuild_hint(folder)}")
    for name, expected in recorded.items():
        path = folder / name
        if not path.is_file():
            raise CorruptFileError(f"{path}: missing (recorded {expected['bytes']} bytes at write); "
                                   f"{rebuild_hint(folder)}")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CorruptFileError(f"{path}: {size} bytes, expected {expected['bytes']} recorded at write "
                                   f"(truncated or overwritten); {rebuild_hint(folder)}")
        if full_hash and (names is None or name in names) and fingerprint(path)["blake2b"] != expected["blake2b"]:
            raise CorruptFileError(f"{path}: BLAKE2b differs from the one recorded at write (the file changed "
                                   f"after it was written); {rebuild_hint(folder)}")
    return recorded


def folder_problems(folder: Path) -> list[tuple[Path, str]]:
    """Every file of a fingerprinted folder that is missing or differs from what was written (full hash),
    as (path, what is wrong); empty when all match. For ``scaling-assets study verify``."""
    folder = Path(folder)
    try:
        recorded = recorded_fingerprints(folder)
    except CorruptFileError as exc:
        return [(folder / FINGERPRINT_FILE, str(exc))]
    problems = []
    for name, expected in (recorded or {}).items():
        path = folder / name
        if not path.is_file():
            problems.append((path, f"missing (recorded {expected['bytes']} bytes at write)"))
        elif path.stat().st_size != expected["bytes"]:
            problems.append((path, f"{path.stat().st_size} bytes, expected {expected['bytes']} recorded at write"))
        elif fingerprint(path)["blake2b"] != expected["blake2b"]:
            problems.append((path, "BLAKE2b differs from the one recorded at write (same size: changed in place)"))
    return problems


def read_verified_bytes(folder: Path, name: str, recorded: dict) -> bytes:
    """A small file read whole, its BLAKE2b checked on the bytes read (no second read)."""
    path = Path(folder) / name
    data = path.read_bytes()
    expected = recorded.get(name)
    if expected is not None and hashlib.blake2b(data, digest_size=16).hexdigest() != expected["blake2b"]:
        raise CorruptFileError(f"{path}: BLAKE2b differs from the one recorded at write (the file changed after "
                               f"it was written); {rebuild_hint(folder)}")
    return data


# -- row-block digests of a count matrix ------------------------------------------------------------


def block_rows_for(n_rows: int) -> int:
    return int(min(MAX_BLOCK_ROWS, max(1, -(-n_rows // MIN_BLOCKS))))


class _BlockHasher:
    """The digest of one block of rows, fed in pieces of any size: row lengths, gene indices and values
    each have their own hash, so where a read splits the block does not change its digest."""

    def __init__(self):
        self.parts = [hashlib.blake2b(digest_size=16) for _ in range(3)]

    def update(self, lengths: np.ndarray, indices: np.ndarray, data: np.ndarray) -> None:
        # fixed widths: scipy may widen a matrix's indices to int64, the file stores int32
        for part, values in zip(self.parts, (lengths.astype("<i8"), indices.astype("<i4", copy=False), data)):
            part.update(memoryview(np.ascontiguousarray(values)).cast("B"))

    def hexdigest(self) -> str:
        return hashlib.blake2b(b"".join(p.digest() for p in self.parts), digest_size=16).hexdigest()


def _rows_of(X, lo: int, hi: int):
    """Row lengths, indices and values of rows [lo, hi) of a CSR matrix."""
    a, b = int(X.indptr[lo]), int(X.indptr[hi])
    return np.diff(X.indptr[lo:hi + 1]), X.indices[a:b], X.data[a:b]


class RowDigests:
    """Digests of consecutive blocks of ``block_rows`` rows of a count matrix being written, fed the
    rows in order as stored (indices int32, values in the file's dtype)."""

    def __init__(self, block_rows: int):
        self.block_rows = int(block_rows)
        self.digests: list[str] = []
        self._rows = 0
        self._block = _BlockHasher()

    def update(self, X) -> None:
        r, n = 0, X.shape[0]
        while r < n:
            take = min(n - r, self.block_rows - self._rows % self.block_rows)
            self._block.update(*_rows_of(X, r, r + take))
            r += take
            self._rows += take
            if self._rows % self.block_rows == 0:
                self._close_block()

    def _close_block(self) -> None:
        self.digests.append(self._block.hexdigest())
        self._block = _BlockHasher()

    def finish(self) -> dict:
        if self._rows % self.block_rows:
            self._close_block()
        return {"rows": self.block_rows, "blake2b": self.digests}


class RowDigestCheck:
    """Checks the blocks of a count file that a reader reads through in order against the digests
    recorded at write. Reads may come in any chunk size; a read that does not continue the previous
    one restarts at the next block boundary, and a block is hashed at most once per open (PCA's second
    pass costs nothing). Rows read out of order (a model's shuffled minibatches) are not checked.

    Each block read whole is hashed on a worker thread (hashlib releases the GIL) over copies of its
    rows, so hashing overlaps the stage's own work, the stage may change its chunks in place, and blocks
    hash in parallel; at most ``2 * HASH_WORKERS`` blocks wait (bounded memory). A mismatch is raised by
    the next ``feed`` or by ``finish``, which the reader calls before the stage's output is kept."""

    HASH_WORKERS = min(2, os.cpu_count() or 1)

    def __init__(self, path: Path, folder: Path, recorded: dict, n_rows: int):
        self.path, self.folder, self.n_rows = Path(path), Path(folder), int(n_rows)
        self.block_rows = int(recorded["rows"])
        self.expected = list(recorded["blake2b"])
        if len(self.expected) != -(-self.n_rows // self.block_rows):
            raise CorruptFileError(f"{self.path}: {len(self.expected)} recorded row blocks of {self.block_rows} rows "
                                   f"for {self.n_rows} rows; {rebuild_hint(self.folder)}")
        self.verified = np.zeros(len(self.expected), dtype=bool)
        self._next = None  # the row the block being gathered continues at
        self._pieces: list = []  # copies of the rows read so far of the block being gathered
        self._worker = None
        self._pending: deque = deque()

    @property
    def rows_verified(self) -> int:
        self._drain(0)
        done = np.flatnonzero(self.verified)
        return int((np.minimum((done + 1) * self.block_rows, self.n_rows) - done * self.block_rows).sum())

    def feed(self, start: int, X) -> None:
        """Rows [start, start + X.shape[0]) as stored in the file (before any thinning)."""
        stop = start + X.shape[0]
        r = start
        if start != self._next:  # a jump: start afresh at the next block boundary
            r = -(-start // self.block_rows) * self.block_rows
            self._pieces = []
        while r < stop:
            b = r // self.block_rows
            block_end = min((b + 1) * self.block_rows, self.n_rows)
            end = min(stop, block_end)
            if not self.verified[b]:
                lengths, indices, data = _rows_of(X, r - start, end - start)
                self._pieces.append((lengths, indices.copy(), data.copy()))
            r = end
            if r == block_end:
                if self._pieces:
                    self._submit(b, self._pieces)
                self._pieces = []
        self._next = stop

    def _submit(self, b: int, pieces: list) -> None:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(self.HASH_WORKERS, thread_name_prefix="row-digests")
        self._drain(2 * self.HASH_WORKERS - 1)
        self._pending.append(self._worker.submit(self._check_block, b, pieces))

    def _check_block(self, b: int, pieces: list) -> None:
        block = _BlockHasher()
        for piece in pieces:
            block.update(*piece)
        if block.hexdigest() != self.expected[b]:
            lo, hi = b * self.block_rows, min((b + 1) * self.block_rows, self.n_rows)
            raise CorruptFileError(
                f"{self.path}: the counts of rows {lo}..{hi - 1} differ from those written there (their "
                f"BLAKE2b, recorded at write, does not match): the file changed after it was written; "
                f"{rebuild_hint(self.folder)}")
        self.verified[b] = True

    def _drain(self, keep: int) -> None:
        while len(self._pending) > keep or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()  # raises a mismatch found by a worker

    def finish(self) -> None:
        """Wait for the hashing of what was read; raises if a block differed."""
        try:
            self._drain(0)
        finally:
            self.close()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None
        self._pending.clear()
        self._pieces = []


def changed_at(path: Path) -> float:
    """When a file last changed on disk (its mtime)."""
    return os.stat(path).st_mtime
