"""FROZEN COPY of metrics/signals.py before signals became specs (commit c0a0c32), kept only as the
reference the preset builders must match to the bit (test_signal_presets_match_the_old_builders.py).
Do not edit.

Task signals: the (X, Y) pairs whose mutual information measures what an embedding knows.

Canonical obs columns (written by the data layer): `cell_type`, `day`, `clone`, `x`, `y`;
CITE-seq proteins in obsm["protein"] (raw counts, used as they are: the reference takes no log).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from scaling_assets.errors import InputError

EARLY_DAYS = (2, 4)
LATE_DAY = 6
MI_SIGNALS = {"cite": ("cell_type", "protein"), "lineage": ("clone",), "spatial": ("neighbour",),
              "development": ("day", "cell_type")}
SPATIAL_NEIGHBOURS = 4  # the partner is one of a cell's 4 nearest spatial neighbours, as the reference


@dataclass
class SignalPairs:
    signal: str
    x: np.ndarray  # (n_pairs, embedding dim)
    y: np.ndarray  # (n_pairs, signal dim)
    n_pairs: int


def task_signals(
    task: str,
    obs: pd.DataFrame,
    embeddings: np.ndarray,
    obsm: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    k_neighbours: int = SPATIAL_NEIGHBOURS,
) -> list[SignalPairs]:
    """Build the (X, Y) pairs of every signal of `task` for a test set and its embeddings."""
    if task not in MI_SIGNALS:
        raise InputError(f"unknown task {task!r}; expected one of {sorted(MI_SIGNALS)}")
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2:
        raise InputError(f"embeddings must be 2-d (cells x dims), got shape {emb.shape}")
    if len(emb) != len(obs):
        raise InputError(f"embeddings have {len(emb)} rows but obs has {len(obs)} cells; expected one row per cell")
    obsm = obsm or {}
    builders = {
        "cell_type": lambda: _label_pairs("cell_type", obs, emb),
        "day": lambda: _label_pairs("day", obs, emb),
        "protein": lambda: _protein_pairs(obsm, emb),
        "clone": lambda: _clone_pairs(obs, emb, seed),
        "neighbour": lambda: _neighbour_pairs(obs, emb, seed, k_neighbours),
    }
    return [builders[signal]() for signal in MI_SIGNALS[task]]


def _column(obs: pd.DataFrame, name: str) -> pd.Series:
    if name not in obs.columns:
        raise InputError(f"obs has no column {name!r} (columns: {list(obs.columns)}); the signal needs it")
    return obs[name]


def one_hot(labels: pd.Series) -> np.ndarray:
    """One column per distinct label, in sorted label order."""
    codes, uniques = pd.factorize(labels, sort=True)
    out = np.zeros((len(labels), len(uniques)))
    out[np.arange(len(labels)), codes] = 1.0
    return out


def _label_pairs(column: str, obs: pd.DataFrame, emb: np.ndarray) -> SignalPairs:
    labels = _column(obs, column)
    keep = labels.notna().to_numpy()  # unlabelled cells carry no signal
    if not keep.any():
        raise InputError(f"obs[{column!r}] has no non-missing values")
    y = one_hot(labels[keep])
    return SignalPairs(column, emb[keep], y, int(keep.sum()))


def _protein_pairs(obsm: dict[str, np.ndarray], emb: np.ndarray) -> SignalPairs:
    if "protein" not in obsm:
        raise InputError(f"obsm has no 'protein' matrix (keys: {sorted(obsm)}); the cite protein signal needs it")
    protein = np.asarray(obsm["protein"], dtype=np.float64)
    if protein.ndim != 2 or len(protein) != len(emb):
        raise InputError(f"obsm['protein'] must have one row per cell ({len(emb)}), got shape {protein.shape}")
    if (protein < 0).any():
        raise InputError("obsm['protein'] must hold non-negative counts")
    return SignalPairs("protein", emb, protein, len(emb))  # raw counts, as the reference (no log)


def _clone_pairs(obs: pd.DataFrame, emb: np.ndarray, seed: int) -> SignalPairs:
    """One seeded (early, late) sister pair per clone: early = day 2 or 4, late = day 6."""
    clone = _column(obs, "clone")
    day = pd.to_numeric(_column(obs, "day"), errors="coerce").to_numpy()
    has_clone = clone.notna().to_numpy() & (clone.astype(str).str.len() > 0).to_numpy()
    frame = pd.DataFrame({"clone": clone.to_numpy(), "row": np.arange(len(obs))})[has_clone]
    early = frame[np.isin(day[has_clone], EARLY_DAYS)]
    late = frame[day[has_clone] == LATE_DAY]
    early_rows = early.groupby("clone", sort=True)["row"].apply(np.asarray)
    late_rows = late.groupby("clone", sort=True)["row"].apply(np.asarray)
    clones = early_rows.index.intersection(late_rows.index).sort_values()
    if len(clones) == 0:
        raise InputError(
            f"lineage test set has no clone with both an early cell (day {' or '.join(map(str, EARLY_DAYS))}) "
            f"and a late cell (day {LATE_DAY}) in obs['clone']/obs['day']; no sister pairs to measure"
        )
    rng = np.random.default_rng(seed)
    pairs = np.array([(rng.choice(early_rows[c]), rng.choice(late_rows[c])) for c in clones])
    return SignalPairs("clone", emb[pairs[:, 0]], emb[pairs[:, 1]], len(pairs))


def _neighbour_pairs(obs: pd.DataFrame, emb: np.ndarray, seed: int, k: int) -> SignalPairs:
    """Each cell paired with one of its k nearest spatial neighbours (seeded choice)."""
    xy = np.column_stack([pd.to_numeric(_column(obs, c), errors="coerce") for c in ("x", "y")])
    if not np.isfinite(xy).all():
        raise InputError("obs['x'] and obs['y'] must be finite numbers for every cell")
    if len(xy) < k + 1:
        raise InputError(f"spatial signal needs more than k={k} cells to find neighbours, got {len(xy)}")
    # k + 1 neighbours: the first is (usually) the cell itself; drop self wherever it appears.
    _, nbrs = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy)
    rows = np.arange(len(xy))
    others = np.array([r[r != i][:k] for i, r in zip(rows, nbrs)])
    pick = np.random.default_rng(seed).integers(0, k, size=len(xy))
    partner = others[rows, pick]
    return SignalPairs("neighbour", emb, emb[partner], len(xy))
