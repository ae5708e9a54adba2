"""Test / validation / training-pool splits, nested size samples and the default grids.

Default test size: ``min(30_000, n_obs // 5)`` -- 30,000 cells, or 20% of a dataset smaller
than 150,000 cells. Default validation size: ``min(1_000, n_obs // 10)``.

Signal-aware rules (every row index refers to the raw file), chosen by the dataset's signals
(data/tasks.py; a task name stands for its preset):
- sister-pair signal (lineage): whole clones of its clone column go to test (drawn in a seeded random
  order, each taken if it still fits in ``n_test`` cells), then whole clones or clone-less cells go to
  validation the same way; so test, validation and pool clones are pairwise disjoint. Cells without a
  clone never enter the test set.
- neighbour signal (spatial): the plane of its two coordinate columns is cut into square tiles; test =
  all cells of tiles drawn in a seeded random order, each taken if it still fits in ``n_test`` cells.
  Guarantee: no training or validation cell lies inside a test tile, so a test pair (a test cell and its
  nearest spatial neighbours among test cells) never involves a training cell, and for test cells away
  from a tile edge those neighbours are their true nearest neighbours in the tissue.
- otherwise: uniform random cells.
A dataset with both a sister and a neighbour signal holds out clones (the first such signal rules).
Whole clones and tiles rarely add up to the requested size exactly: the lineage and spatial sets take
at most ``n_test`` / ``n_val`` cells (smaller units drawn later fill the gap; the shortfall is less
than one clone or tile, usually none), never more, so every seed's training pool holds at least
``n_obs - n_test - n_val`` cells and a size grid up to that nominal pool fits every seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scaling_assets.data.tasks import NEIGHBOURS, SISTERS, TASKS, SignalSpec
from scaling_assets.errors import InputError
from scaling_assets.fs import atomic_file

DEFAULT_TEST = 30_000
DEFAULT_VAL = 1_000


@dataclass
class Split:
    test: np.ndarray
    validation: np.ndarray
    pool_order: np.ndarray

    @property
    def pool_size(self) -> int:
        return int(self.pool_order.size)

    def train_rows(self, n: int) -> np.ndarray:
        """The n-cell training sample: first n cells of the pool permutation, sorted (nested in n)."""
        if n > self.pool_order.size:
            raise InputError(
                f"training size {n} is larger than the training pool ({self.pool_order.size} cells)"
            )
        return np.sort(self.pool_order[:n])

    def save(self, path: str | os.PathLike) -> None:
        with atomic_file(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, test=self.test, validation=self.validation, pool_order=self.pool_order)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Split:
        try:
            with np.load(path) as z:
                return cls(test=z["test"], validation=z["validation"], pool_order=z["pool_order"])
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{path}: not a split file (.npz with test, validation, pool_order): {exc}") from exc


def default_test_size(n_obs: int) -> int:
    """DESIGN §3: 30,000 test cells, or 20% of a dataset too small for that."""
    return min(DEFAULT_TEST, n_obs // 5)


def default_sizes(n_obs: int, n_test: int | None, n_val: int | None) -> tuple[int, int]:
    n_test = default_test_size(n_obs) if n_test is None else int(n_test)
    n_val = min(DEFAULT_VAL, n_obs // 10) if n_val is None else int(n_val)
    return n_test, n_val


def _source_name(source) -> str:
    return str(getattr(source, "path", "dataset"))


def held_out_unit(signals: str | Sequence[SignalSpec]) -> SignalSpec | None:
    """The signal whose units (clones, tiles) the split holds out whole; None: cells at random."""
    specs = TASKS[signals].signals if isinstance(signals, str) else signals
    for kind in (SISTERS, NEIGHBOURS):
        for spec in specs:
            if spec.kind == kind:
                return spec
    return None


def make_split(source, signals: str | Sequence[SignalSpec], seed: int, n_test: int | None = None,
               n_val: int | None = None) -> Split:
    """Seeded, signal-aware split of ``source`` (see module docstring for the rules); ``signals`` is the
    dataset's resolved signal list, or a task name for its preset."""
    if isinstance(signals, str) and signals not in TASKS:
        raise InputError(f"unknown task {signals!r}; expected one of {list(TASKS)} or a list of signals")
    unit = held_out_unit(signals)
    n_obs = source.n_obs
    n_test, n_val = default_sizes(n_obs, n_test, n_val)
    name = _source_name(source)
    if n_test < 1 or n_val < 0:
        raise InputError(f"{name}: test size must be >= 1 and validation size >= 0 (got {n_test}, {n_val})")
    if n_test + n_val >= n_obs:
        raise InputError(
            f"{name}: test ({n_test}) + validation ({n_val}) cells leave no training pool in a dataset "
            f"of {n_obs} cells"
        )
    rng = np.random.default_rng([seed, 7])
    if unit is not None and unit.kind == SISTERS:
        test, val, pool = _split_lineage(source, rng, n_test, n_val, name, unit.columns[0])
    elif unit is not None:
        test, val, pool = _split_spatial(source, rng, n_test, n_val, name, unit.columns)
    else:
        perm = rng.permutation(n_obs)
        test, val, pool = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    if pool.size == 0:
        raise InputError(f"{name}: no training pool left after holding out test and validation cells")
    return Split(
        test=np.sort(test).astype(np.int64),
        validation=np.sort(val).astype(np.int64),
        pool_order=rng.permutation(np.asarray(pool, dtype=np.int64)),
    )


def _take_units(units: list[np.ndarray], order: np.ndarray, target: int) -> tuple[list[int], int]:
    """Indices (into ``units``) of whole units taken in ``order`` while they fit in ``target`` cells: a
    unit that would overshoot is passed over and smaller ones after it still fill the gap. Never more
    than ``target`` cells, so the pool keeps at least its nominal size (cells - test - validation) and a
    size grid up to that size fits every seed's pool."""
    sizes = np.array([units[u].size for u in order], dtype=np.int64)
    taken, total = [], 0
    for u, size in zip(order, sizes):
        if total == target:
            break
        if total + size <= target:
            taken.append(int(u))
            total += int(size)
    return taken, total


def _split_lineage(source, rng, n_test, n_val, name, clone_column="clone"):
    clone = source.read_obs(columns=[clone_column])[clone_column]
    codes, _ = pd.factorize(clone.astype(object), use_na_sentinel=True)
    cloned = np.flatnonzero(codes >= 0)
    if cloned.size < n_test:
        raise InputError(
            f"{name}: test set of {n_test} cells requested but only {cloned.size} cells have a clone "
            f"(obs[{clone_column!r}])"
        )
    order = np.argsort(codes[cloned], kind="stable")
    bounds = np.flatnonzero(np.diff(codes[cloned][order])) + 1
    clones = np.split(cloned[order], bounds)
    taken, _ = _take_units(clones, rng.permutation(len(clones)), n_test)
    if not taken:
        raise InputError(f"{name}: no whole clone fits in a test set of {n_test} cells (the smallest has "
                         f"{min(c.size for c in clones)}); ask for more test cells")
    test = np.concatenate([clones[i] for i in taken])
    rest_clones = [clones[i] for i in sorted(set(range(len(clones))) - set(taken))]
    # validation draws whole remaining clones and clone-less cells alike
    units = rest_clones + [np.array([i]) for i in np.flatnonzero(codes < 0)]
    vtaken, _ = _take_units(units, rng.permutation(len(units)), n_val)
    val = np.concatenate([units[i] for i in vtaken]) if vtaken else np.array([], dtype=np.int64)
    vset = set(vtaken)
    rest = [units[i] for i in range(len(units)) if i not in vset]
    pool = np.concatenate(rest) if rest else np.array([], dtype=np.int64)
    return test, val, pool


def _split_spatial(source, rng, n_test, n_val, name, columns=("x", "y")):
    obs = source.read_obs(columns=list(columns))
    xy = obs[list(columns)].to_numpy(dtype=np.float64)
    n = xy.shape[0]
    # tiles sized to hold ~n_test/10 cells on average (at least ~20), so test = ~10+ regions
    per_tile = max(20.0, n_test / 10.0)
    n_tiles = max(1.0, n / per_tile)
    lo, hi = xy.min(0), xy.max(0)
    extent = np.maximum(hi - lo, 1e-9)
    side = math.sqrt(extent[0] * extent[1] / n_tiles)
    ij = np.floor((xy - lo) / side).astype(np.int64)
    tile = ij[:, 0] * (int(extent[1] / side) + 2) + ij[:, 1]
    tile_codes, tile_ids = pd.factorize(tile)
    order = np.argsort(tile_codes, kind="stable")
    bounds = np.flatnonzero(np.diff(tile_codes[order])) + 1
    tiles = np.split(order, bounds)
    taken, _ = _take_units(tiles, rng.permutation(len(tiles)), n_test)
    if not taken:
        raise InputError(f"{name}: no whole spatial tile fits in a test set of {n_test} cells (the smallest has "
                         f"{min(t.size for t in tiles)}); ask for more test cells")
    test = np.concatenate([tiles[i] for i in taken])
    rest = np.setdiff1d(np.arange(n), test)
    rest = rng.permutation(rest)
    return test, rest[:n_val], rest[n_val:]


def size_grid(pool_size: int, n_sizes: int = 10, smallest: int = 100) -> list[int]:
    """Log-spaced training sizes from ``smallest`` up to and including ``pool_size``."""
    if pool_size <= smallest:
        return [int(pool_size)]
    sizes = np.unique(np.round(np.geomspace(smallest, pool_size, n_sizes)).astype(np.int64))
    sizes[-1] = pool_size
    return [int(s) for s in sizes]


def _round_sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def quality_grid(mean_umis_per_cell: float, n_qualities: int = 10, min_umis: float = 10) -> list[float]:
    """Qualities log-spaced from 1.0 down to the q leaving ``min_umis`` UMIs per cell (3 sig. digits)."""
    if mean_umis_per_cell <= min_umis:
        return [1.0]
    qs = np.geomspace(1.0, min_umis / mean_umis_per_cell, n_qualities)
    out = []
    for q in qs:
        r = _round_sig(float(q))
        if r not in out:
            out.append(r)
    out[0] = 1.0
    return out
