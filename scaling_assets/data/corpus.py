"""Geneformer rank-value corpora (DESIGN §4).

Per cell: counts / cell total × 10,000, divided by the gene's nonzero median over the training
pool, nonzero genes ranked by that value descending (ties: ascending token id), first 512 kept.

Corpus directory layout (written chunk by chunk, atomically via a temp dir + rename):
  tokens.bin      flat int32 token ids of all cells, concatenated (read with np.memmap)
  offsets.npy     int64 (n_cells + 1,) start of each cell in tokens.bin
  lengths.npy     int32 (n_cells,) tokens per cell (for length-grouped batching)
  rows.npy        int64 (n_cells,) row index of each cell in the source count set
  cell_ids.txt    one cell id per line
  dictionary.json the token dictionary; medians.npy the gene medians used
  corpus.json     summary: cells, dropped, input_cells, tokens, max_len, mean_length, vocab_size
Memory while building: one chunk plus the per-cell offsets/lengths/rows (16 B per cell).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from scaling_assets.errors import InputError
from scaling_assets.fs import atomic_directory

PAD, MASK = "<pad>", "<mask>"
PAD_ID, MASK_ID = 0, 1
MAX_LEN = 512  # tokens kept per cell (DESIGN §4); models/spec.py sizes the BERT's positions from it
TARGET_SUM = 1e4
# Exact medians keep every nonzero normalised value in memory (12 bytes each). Above this many
# values the computation switches to a log-spaced histogram (see gene_nonzero_medians).
# exact medians below this many nonzero values (~12 B each, plus a sort); a histogram above it, so
# peak memory is bounded (~0.2 GB) whatever the pool size
EXACT_MEDIAN_MAX_VALUES = 5_000_000
HIST_LO, HIST_HI, HIST_BINS_PER_DECADE = -4.0, 4.0, 400  # normalised values 1e-4 .. 1e4


CORPUS_FILES = ("tokens.bin", "offsets.npy", "lengths.npy", "rows.npy", "cell_ids.txt")  # a corpus folder


class TokenDictionary:
    """``<pad>`` = 0, ``<mask>`` = 1, then the genes in var order from 2."""

    def __init__(self, gene_ids):
        gene_ids = [str(g) for g in gene_ids]
        if len(set(gene_ids)) != len(gene_ids):
            raise InputError("token dictionary: gene ids must be unique")
        if {PAD, MASK} & set(gene_ids):
            raise InputError(f"token dictionary: {PAD!r}/{MASK!r} cannot be gene ids")
        self.gene_ids = gene_ids
        self.token_to_id = {PAD: PAD_ID, MASK: MASK_ID, **{g: i + 2 for i, g in enumerate(gene_ids)}}

    def __len__(self) -> int:
        return len(self.gene_ids) + 2

    def __eq__(self, other) -> bool:
        return isinstance(other, TokenDictionary) and self.gene_ids == other.gene_ids

    def __hash__(self):
        return hash(tuple(self.gene_ids))

    def difference(self, other: TokenDictionary) -> str:
        """Human-readable first difference, for error messages."""
        if len(self) != len(other):
            return f"{len(self)} vs {len(other)} tokens"
        for i, (a, b) in enumerate(zip(self.gene_ids, other.gene_ids)):
            if a != b:
                return f"token {i + 2} is {a!r} vs {b!r}"
        return "identical"

    def to_json(self) -> str:
        return json.dumps(self.token_to_id)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenDictionary:
        mapping = json.loads(Path(path).read_text())
        if mapping.get(PAD) != PAD_ID or mapping.get(MASK) != MASK_ID:
            raise InputError(f"{path}: not a token dictionary ({PAD}=0, {MASK}=1 expected)")
        genes = sorted((i, g) for g, i in mapping.items() if i >= 2)
        if [i for i, _ in genes] != list(range(2, len(genes) + 2)):
            raise InputError(f"{path}: gene token ids must be 2..n+1 without gaps")
        return cls([g for _, g in genes])


def _normalised(X: sp.csr_matrix, totals: np.ndarray | None = None) -> sp.csr_matrix:
    """Counts scaled to 10,000 per cell by the cell's total count (float64); ``totals``: the cells' totals
    when ``X`` holds some of their genes only."""
    X = sp.csr_matrix(X, dtype=np.float64, copy=True)
    X.eliminate_zeros()
    totals = np.asarray(X.sum(axis=1)).ravel() if totals is None else np.asarray(totals, dtype=np.float64)
    X.data *= np.repeat(TARGET_SUM / np.where(totals > 0, totals, 1.0), np.diff(X.indptr))
    return X


def gene_nonzero_medians(source, rows: np.ndarray | None = None, chunk_size: int = 10_000) -> np.ndarray:
    """Median of each gene's nonzero normalised values over ``rows`` (the training pool).

    Pass the training-pool rows: test and validation cells must not inform the medians.
    Genes never expressed in those rows get NaN; rank_value_encode skips NaN-median genes
    (they carry no training information), as Geneformer skips genes outside its median table.

    Exact (even count: mean of the two middle values) while the nonzero values seen fit in
    EXACT_MEDIAN_MAX_VALUES; beyond that all values go into a per-gene histogram with
    HIST_BINS_PER_DECADE log-spaced bins over [1e-4, 1e4] (normalised values are ≤ 1e4; ≥ 1e-4
    while cells have < 1e8 UMIs) and the median is the geometric centre of the bin holding the
    ⌈n/2⌉-th smallest value: within a factor 10**(1/800) (±0.29%) of that order statistic, which
    for odd n is the exact median and for even n the lower of the two middle values.
    """
    n_genes = source.n_vars
    if rows is not None and len(rows) == 0:
        raise InputError("gene medians: the training pool is empty")
    if source.n_obs == 0:
        raise InputError("gene medians: the count set is empty")
    genes_parts: list[np.ndarray] = []
    values_parts: list[np.ndarray] = []
    n_values = 0
    hist = None
    n_bins = int((HIST_HI - HIST_LO) * HIST_BINS_PER_DECADE)
    for _, X in source.iter_chunks(chunk_size, rows):
        X = _normalised(X)
        genes, values = X.indices.astype(np.int32), X.data
        if hist is None:
            genes_parts.append(genes)
            values_parts.append(values)
            n_values += len(values)
            if n_values > EXACT_MEDIAN_MAX_VALUES:  # switch to the histogram, keep streaming
                hist = np.zeros((n_genes, n_bins), dtype=np.int32)  # < 2**31 cells per gene and bin
                for g, v in zip(genes_parts, values_parts):
                    _add_to_hist(hist, g, v, n_bins)
                genes_parts, values_parts = [], []
        else:
            _add_to_hist(hist, genes, values, n_bins)
    if hist is not None:
        return _hist_medians(hist, n_bins)
    genes = np.concatenate(genes_parts) if genes_parts else np.zeros(0, np.int32)
    values = np.concatenate(values_parts) if values_parts else np.zeros(0)
    order = np.lexsort((values, genes))
    values = values[order]
    counts = np.bincount(genes, minlength=n_genes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    medians = np.full(n_genes, np.nan)
    has = counts > 0
    lo = starts[has] + (counts[has] - 1) // 2
    hi = starts[has] + counts[has] // 2
    medians[has] = (values[lo] + values[hi]) / 2
    return medians


def _add_to_hist(hist, genes, values, n_bins):
    b = np.floor((np.log10(values) - HIST_LO) * HIST_BINS_PER_DECADE).astype(np.int64)
    np.clip(b, 0, n_bins - 1, out=b)
    np.add.at(hist, (genes, b), 1)


def _hist_medians(hist, n_bins):
    counts = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    # the bin holding the ⌈n/2⌉-th smallest value (the lower middle value)
    b = np.argmax(cum >= (counts[:, None] + 1) // 2, axis=1)
    medians = 10 ** (HIST_LO + (b + 0.5) / HIST_BINS_PER_DECADE)
    medians[counts == 0] = np.nan
    return medians


def rank_value_encode(csr_chunk, medians: np.ndarray, max_len: int = MAX_LEN,
                      totals: np.ndarray | None = None) -> list[np.ndarray]:
    """Token ids (int32) of each cell: nonzero genes by normalised/median descending.

    Ties go to the lower token id; genes whose median is NaN (never expressed in the
    training pool) are skipped; at most ``max_len`` tokens per cell. ``totals``: each cell's total
    count over all its genes, when ``csr_chunk`` holds only some (a checkpoint's vocabulary).
    """
    X = _normalised(csr_chunk, totals)
    medians = np.asarray(medians, dtype=np.float64)
    if X.shape[1] != len(medians):
        raise InputError(f"rank_value_encode: {X.shape[1]} genes but {len(medians)} medians")
    row = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    col = X.indices.astype(np.int64)
    value = X.data / medians[col]
    keep = np.isfinite(value)
    row, col, value = row[keep], col[keep], value[keep]
    order = np.lexsort((col, -value, row))  # by row, then value descending, then token id
    tokens = (col[order] + 2).astype(np.int32)
    bounds = np.searchsorted(row[order], np.arange(X.shape[0] + 1))
    return [tokens[bounds[i] : min(bounds[i + 1], bounds[i] + max_len)] for i in range(X.shape[0])]


def build_corpus(
    source,
    out_dir: str | os.PathLike,
    medians: np.ndarray,
    token_dictionary: TokenDictionary,
    rows: np.ndarray | None = None,
    chunk_size: int = 10_000,
    progress: bool = False,
    max_len: int = MAX_LEN,
) -> dict:
    """Tokenize ``rows`` of ``source`` into a corpus directory; returns its summary.

    Cells with no tokens (no counts, or only never-expressed genes) are dropped and counted.
    """
    if [str(g) for g in source.var_names] != token_dictionary.gene_ids:
        raise InputError("build_corpus: the count set's genes are not the token dictionary's genes")
    if len(medians) != source.n_vars:
        raise InputError(f"build_corpus: {len(medians)} medians for {source.n_vars} genes")
    obs_names = np.asarray(source.obs_names)
    total = source.n_obs if rows is None else len(rows)
    offsets, lengths, kept_rows = [np.zeros(1, np.int64)], [], []
    n_tokens, n_dropped, done = 0, 0, 0
    with atomic_directory(out_dir) as tmp:
        with open(tmp / "tokens.bin", "wb") as tok_f, open(tmp / "cell_ids.txt", "w") as id_f:
            for chunk_rows, X in source.iter_chunks(chunk_size, rows):
                cells = rank_value_encode(X, medians, max_len)
                lens = np.array([len(c) for c in cells], dtype=np.int32)
                keep = lens > 0
                n_dropped += int((~keep).sum())
                if keep.any():
                    tok_f.write(np.concatenate([c for c in cells if len(c)]).astype(np.int32).tobytes())
                    offsets.append(n_tokens + np.cumsum(lens[keep], dtype=np.int64))
                    n_tokens += int(lens[keep].sum())
                    lengths.append(lens[keep])
                    kept_rows.append(np.asarray(chunk_rows)[keep])
                    id_f.writelines(f"{c}\n" for c in obs_names[np.asarray(chunk_rows)[keep]])
                done += len(chunk_rows)
                if progress:
                    print(f"tokenized {done}/{total} cells", flush=True)
        lengths_arr = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
        np.save(tmp / "offsets.npy", np.concatenate(offsets))
        np.save(tmp / "lengths.npy", lengths_arr)
        np.save(tmp / "rows.npy", np.concatenate(kept_rows) if kept_rows else np.zeros(0, np.int64))
        np.save(tmp / "medians.npy", np.asarray(medians, dtype=np.float64))
        token_dictionary.save(tmp / "dictionary.json")
        summary = {
            "cells": int(len(lengths_arr)),
            "dropped": n_dropped,
            "input_cells": int(total),
            "tokens": n_tokens,
            "max_len": max_len,
            "mean_length": float(lengths_arr.mean()) if len(lengths_arr) else 0.0,
            "vocab_size": len(token_dictionary),
        }
        (tmp / "corpus.json").write_text(json.dumps(summary, indent=2))
    return summary


class Corpus:
    """Read-only view of a corpus directory; token ids are memory-mapped, never loaded whole.

    ``stop_row`` limits it to the cells built from source rows [0, stop_row): a pool corpus seen
    as the corpus of its first N pool cells (cells with no tokens were dropped at build time).
    """

    def __init__(self, directory: str | os.PathLike, stop_row: int | None = None):
        self.directory = Path(directory)
        meta_path = self.directory / "corpus.json"
        if not meta_path.is_file():
            raise InputError(f"{directory} is not a corpus directory (no corpus.json)")
        self.summary = json.loads(meta_path.read_text())
        self.offsets = np.load(self.directory / "offsets.npy")
        self.lengths = np.load(self.directory / "lengths.npy")
        self.rows = np.load(self.directory / "rows.npy")
        if stop_row is not None:
            input_cells = int(self.summary.get("input_cells", len(self.rows)))
            if stop_row > input_cells:
                raise InputError(f"{directory}: setting N={stop_row} exceeds the corpus's pool of {input_cells} cells")
            n_cells = int(np.searchsorted(self.rows, stop_row))  # rows ascend: pool order was tokenized in order
            self.offsets, self.lengths, self.rows = self.offsets[: n_cells + 1], self.lengths[:n_cells], self.rows[:n_cells]
        n_tokens = int(self.offsets[-1])
        self._tokens = (
            np.memmap(self.directory / "tokens.bin", dtype=np.int32, mode="r", shape=(n_tokens,))
            if n_tokens
            else np.zeros(0, np.int32)
        )
        self.token_dictionary = TokenDictionary.load(self.directory / "dictionary.json")
        self._cell_ids = None

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        return np.asarray(self._tokens[self.offsets[i] : self.offsets[i + 1]])

    @property
    def cell_ids(self) -> np.ndarray:
        if self._cell_ids is None:
            with open(self.directory / "cell_ids.txt") as f:  # only the first len(self) lines
                self._cell_ids = np.array([next(f).rstrip("\n") for _ in range(len(self))], dtype=object)
        return self._cell_ids

    @property
    def medians(self) -> np.ndarray:
        return np.load(self.directory / "medians.npy")
