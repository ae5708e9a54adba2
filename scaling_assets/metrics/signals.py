"""Signals: the (X, Y) pairs whose mutual information measures what an embedding knows.

A dataset's signals are a list of ``SignalSpec`` (data/tasks.py): a task's preset, the study's own
``signals:`` or both. One builder per kind:
- label: the embedding against the one-hot code of a categorical obs column (unlabelled cells left out);
- matrix: the embedding against the rows of an obsm matrix, as they are (CITE-seq proteins: raw
  counts, the reference takes no log);
- neighbours: each cell's embedding against that of one of its k nearest cells in two coordinate columns;
- sisters: per clone, the embedding of one early cell against that of one late cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from scaling_assets.data.tasks import LABEL, MATRIX, NEIGHBOURS, SISTERS, SPATIAL_NEIGHBOURS, TASKS, SignalSpec
from scaling_assets.errors import InputError

EARLY_DAYS = TASKS["lineage"].signals[0].early
LATE_DAY = TASKS["lineage"].signals[0].late[0]


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
    k_neighbours: int | None = None,
) -> list[SignalPairs]:
    """Build the (X, Y) pairs of every signal of a task preset for a test set and its embeddings."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    specs = TASKS[task].signals
    if k_neighbours is not None:
        specs = tuple(replace(s, k=k_neighbours) if s.kind == NEIGHBOURS else s for s in specs)
    return build_signals(specs, obs, embeddings, obsm, seed)


def build_signals(
    specs: Sequence[SignalSpec],
    obs: pd.DataFrame,
    embeddings: np.ndarray,
    obsm: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    where: str = "",
) -> list[SignalPairs]:
    """The (X, Y) pairs of each signal in ``specs``, in order; ``where`` prefixes errors (dataset, file)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    prefix = f"{where}: " if where else ""
    if emb.ndim != 2:
        raise InputError(f"{prefix}embeddings must be 2-d (cells x dims), got shape {emb.shape}")
    if len(emb) != len(obs):
        raise InputError(f"{prefix}embeddings have {len(emb)} rows but obs has {len(obs)} cells; "
                         "expected one row per cell")
    obsm = obsm or {}
    builders = {LABEL: _label_pairs, MATRIX: _matrix_pairs, NEIGHBOURS: _neighbour_pairs, SISTERS: _sister_pairs}
    out = []
    for spec in specs:
        if spec.kind not in builders:
            raise InputError(f"{prefix}signal {spec.name!r}: unknown kind {spec.kind!r}; expected one of {list(builders)}")
        try:
            out.append(builders[spec.kind](spec, obs, obsm, emb, seed))
        except InputError as exc:
            if not prefix:
                raise
            raise InputError(f"{prefix}{exc}") from None  # one message: where, then what
    return out


def _column(obs: pd.DataFrame, name: str, spec: SignalSpec) -> pd.Series:
    if name not in obs.columns:
        raise InputError(f"obs has no column {name!r} (columns: {list(obs.columns)}); "
                         f"signal {spec.name!r} ({spec.kind}) needs it")
    return obs[name]


def one_hot(labels: pd.Series) -> np.ndarray:
    """One column per distinct label, in sorted label order."""
    codes, uniques = pd.factorize(labels, sort=True)
    out = np.zeros((len(labels), len(uniques)))
    out[np.arange(len(labels)), codes] = 1.0
    return out


def _label_pairs(spec: SignalSpec, obs: pd.DataFrame, obsm, emb: np.ndarray, seed: int) -> SignalPairs:
    (column,) = spec.columns
    labels = _column(obs, column, spec)
    keep = labels.notna().to_numpy()  # unlabelled cells carry no signal
    if not keep.any():
        raise InputError(f"obs[{column!r}] has no non-missing values; signal {spec.name!r} needs labelled cells")
    y = one_hot(labels[keep])
    return SignalPairs(spec.name, emb[keep], y, int(keep.sum()))


def _matrix_pairs(spec: SignalSpec, obs, obsm: dict[str, np.ndarray], emb: np.ndarray, seed: int) -> SignalPairs:
    key = spec.key
    if key not in obsm:
        raise InputError(f"obsm has no {key!r} matrix (keys: {sorted(obsm)}); signal {spec.name!r} needs it")
    raw = np.asarray(obsm[key])
    if raw.dtype.kind not in "biuf":
        raise InputError(f"obsm[{key!r}] holds {raw.dtype} values; signal {spec.name!r} needs a numeric matrix")
    matrix = raw.astype(np.float64).reshape(len(raw), -1) if raw.ndim == 1 else raw.astype(np.float64)
    if matrix.ndim != 2 or len(matrix) != len(emb):
        raise InputError(f"obsm[{key!r}] must have one row per cell ({len(emb)}), got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise InputError(f"obsm[{key!r}] has NaN or infinite values; signal {spec.name!r} needs finite numbers")
    return SignalPairs(spec.name, emb, matrix, len(emb))  # as they are (cite proteins: raw counts, no log)


def _sister_pairs(spec: SignalSpec, obs: pd.DataFrame, obsm, emb: np.ndarray, seed: int) -> SignalPairs:
    """One seeded (early, late) sister pair per clone that has both an early and a late cell."""
    early_rows, late_rows, clones = _sisters(spec, obs)
    rng = np.random.default_rng(seed)
    pairs = np.array([(rng.choice(early_rows[c]), rng.choice(late_rows[c])) for c in clones])
    return SignalPairs(spec.name, emb[pairs[:, 0]], emb[pairs[:, 1]], len(pairs))


def _sisters(spec: SignalSpec, obs: pd.DataFrame, empty_ok: bool = False) -> tuple[pd.Series, pd.Series, pd.Index]:
    """Each clone's early rows and late rows, and the clones that have both (sorted)."""
    clone_column, time_column = spec.columns
    clone = _column(obs, clone_column, spec)
    day = pd.to_numeric(_column(obs, time_column, spec), errors="coerce").to_numpy()
    has_clone = clone.notna().to_numpy() & (clone.astype(str).str.len() > 0).to_numpy()
    early_times, late_times = _sister_times(spec, day[has_clone])
    frame = pd.DataFrame({"clone": clone.to_numpy(), "row": np.arange(len(obs))})[has_clone]
    early = frame[np.isin(day[has_clone], early_times)]
    late = frame[np.isin(day[has_clone], late_times)]
    early_rows = early.groupby("clone", sort=True)["row"].apply(np.asarray)
    late_rows = late.groupby("clone", sort=True)["row"].apply(np.asarray)
    clones = early_rows.index.intersection(late_rows.index).sort_values()
    if len(clones) == 0 and not empty_ok:
        raise InputError(
            f"test set has no clone with both an early cell ({time_column} {' or '.join(map(_fmt, early_times))}) "
            f"and a late cell ({time_column} {' or '.join(map(_fmt, late_times))}) in "
            f"obs[{clone_column!r}]/obs[{time_column!r}]; no sister pairs to measure for signal {spec.name!r}"
        )
    return early_rows, late_rows, clones


def pair_count(spec: SignalSpec, obs: pd.DataFrame) -> int:
    """How many (X, Y) pairs ``build_signals`` makes of a signal on cells with these obs columns (before
    any embedding: a matrix signal's obsm has one row per cell)."""
    if spec.kind == LABEL:
        return int(_column(obs, spec.columns[0], spec).notna().sum())
    if spec.kind == SISTERS:
        return len(_sisters(spec, obs, empty_ok=True)[2])
    if spec.kind == NEIGHBOURS:
        return len(obs) if len(obs) > spec.k else 0
    return len(obs)


def _fmt(t: float) -> str:
    return f"{t:g}"


def _sister_times(spec: SignalSpec, days: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The spec's early and late times; by default the last time seen is late and every other is early."""
    if spec.early is not None and spec.late is not None:
        return tuple(spec.early), tuple(spec.late)
    seen = np.unique(days[np.isfinite(days)])
    late = tuple(spec.late) if spec.late is not None else tuple(seen[-1:])
    early = tuple(spec.early) if spec.early is not None else tuple(t for t in seen if t not in late)
    return early, late


def _neighbour_pairs(spec: SignalSpec, obs: pd.DataFrame, obsm, emb: np.ndarray, seed: int) -> SignalPairs:
    """Each cell paired with one of its k nearest spatial neighbours (seeded choice)."""
    k = spec.k
    xy = np.column_stack([pd.to_numeric(_column(obs, c, spec), errors="coerce") for c in spec.columns])
    if not np.isfinite(xy).all():
        names = " and ".join(f"obs[{c!r}]" for c in spec.columns)
        raise InputError(f"{names} must be finite numbers for every cell (signal {spec.name!r})")
    if len(xy) < k + 1:
        raise InputError(f"signal {spec.name!r} needs more than k={k} cells to find neighbours, got {len(xy)}")
    # k + 1 neighbours: the first is (usually) the cell itself; drop self wherever it appears.
    _, nbrs = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy)
    rows = np.arange(len(xy))
    others = np.array([r[r != i][:k] for i, r in zip(rows, nbrs)])
    pick = np.random.default_rng(seed).integers(0, k, size=len(xy))
    partner = others[rows, pick]
    return SignalPairs(spec.name, emb, emb[partner], len(xy))
