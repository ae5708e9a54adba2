"""Embedded simulator: the four study tasks in the canonical layout, streamed to disk.

Generative model (DESIGN §2): each cell has a latent state z (K programs); gene logits are
``base + z @ W`` with W a sparse gene-program matrix; gene proportions are the softmax of the
logits; library sizes are log-normal (median ``median_umis``); counts are negative binomial
(gamma-Poisson with gene-specific dispersion). Task signals shape z:

- cite: cell-type clusters; ``obsm["protein"]`` = NB counts of 20 proteins driven by z.
- lineage: a clone state shared by sisters + a day shift + drift; days 2/4 (early), 6 (late).
- spatial: z is a smooth random field over (x, y) plus noise.
- development: per-cell-type trajectories over days 8.5..13.5.

Cells are generated in fixed internal blocks of ``BLOCK`` cells with an RNG seeded from
(seed, task, block index), so the file depends only on (task, n_cells, n_genes, seed, median_umis),
never on ``chunk_size``.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scaling_assets.data.h5ad_io import CsrWriter
from scaling_assets.data.tasks import TASKS
from scaling_assets.errors import InputError

TASK_ORDER = list(TASKS)  # a task's position keys its random stream
BLOCK = 2048
N_PROGRAMS = 12
N_PROTEINS = 20
N_TYPES = 12
DEV_DAYS = (8.5, 9.5, 10.5, 11.5, 12.5, 13.5)
SIDE = 1000.0  # spatial extent (x and y in [0, SIDE))


class _Model:
    """Global parameters of one simulated dataset (gene programs, cluster centres, fields)."""

    def __init__(self, task: str, n_genes: int, seed: int):
        rng = np.random.default_rng([seed, TASK_ORDER.index(task), 0])
        K = N_PROGRAMS
        self.base = rng.normal(0.0, 1.2, n_genes).astype(np.float32)
        # sparse gene programs: each program moves ~5% of genes (at least 5)
        density = max(0.05, 5.0 / n_genes)
        mask = rng.random((K, n_genes)) < density
        self.W = (mask * rng.normal(0.0, 1.0, (K, n_genes))).astype(np.float32)
        self.theta = np.exp(rng.normal(np.log(3.0), 0.5, n_genes)).astype(np.float32)
        self.centres = rng.normal(0.0, 1.5, (N_TYPES, K))
        self.type_p = np.exp(rng.normal(0.0, 0.6, N_TYPES))
        self.type_p /= self.type_p.sum()
        self.directions = rng.normal(0.0, 1.0, (N_TYPES, K))
        self.time_axis = rng.normal(0.0, 1.0, K)
        self.day_shift = rng.normal(0.0, 0.7, K)
        # proteins: log-mean = p_base + z @ P
        self.p_base = rng.normal(3.0, 0.7, N_PROTEINS)
        self.P = rng.normal(0.0, 0.5, (K, N_PROTEINS))
        # spatial field: 6 random plane waves per program, wavelengths 250..700
        n_waves = 6
        angle = rng.uniform(0, 2 * np.pi, (K, n_waves))
        wavelength = rng.uniform(250.0, 700.0, (K, n_waves))
        self.wave_k = np.stack([np.cos(angle), np.sin(angle)], -1) * (2 * np.pi / wavelength)[..., None]
        self.wave_phase = rng.uniform(0, 2 * np.pi, (K, n_waves))


def _latent(task: str, m: _Model, rng: np.random.Generator, n: int, block: int):
    """Latent states z (n x K) and the obs columns of one block."""
    K = N_PROGRAMS
    if task == "cite":
        t = rng.choice(N_TYPES, size=n, p=m.type_p)
        z = m.centres[t] + rng.normal(0.0, 0.5, (n, K))
        return z, {"cell_type": pd.Categorical([f"type_{i:02d}" for i in t],
                                                categories=[f"type_{i:02d}" for i in range(N_TYPES)])}
    if task == "development":
        t = rng.choice(N_TYPES, size=n, p=m.type_p)
        day = rng.choice(np.array(DEV_DAYS), size=n)
        time = (day - DEV_DAYS[0]) / (DEV_DAYS[-1] - DEV_DAYS[0])
        z = 0.6 * m.centres[t] + time[:, None] * (m.directions[t] + 1.5 * m.time_axis) + rng.normal(0.0, 0.4, (n, K))
        return z, {"day": day.astype(np.float64),
                   "cell_type": pd.Categorical([f"type_{i:02d}" for i in t],
                                               categories=[f"type_{i:02d}" for i in range(N_TYPES)])}
    if task == "spatial":
        xy = rng.uniform(0.0, SIDE, (n, 2))
        phase = np.einsum("nd,kwd->nkw", xy, m.wave_k) + m.wave_phase
        z = np.cos(phase).sum(-1) * np.sqrt(2.0 / phase.shape[-1]) + rng.normal(0.0, 0.3, (n, K))
        return z, {"x": xy[:, 0], "y": xy[:, 1]}
    # lineage: clones of 4..12 sisters fill ~85% of the block; the rest carry no clone
    clone = np.full(n, None, dtype=object)
    day = rng.choice(np.array([2, 4, 6]), size=n)
    z = rng.normal(0.0, 1.0, (n, K))
    pos, k = 0, 0
    while True:
        size = int(rng.integers(4, 13))
        if pos + size > int(0.85 * n):
            break
        n_early = int(rng.integers(1, size))  # at least one early and one late sister
        state = rng.normal(0.0, 1.0, K)
        sl = slice(pos, pos + size)
        z[sl] = state
        day[sl] = np.concatenate([rng.choice([2, 4], size=n_early), np.full(size - n_early, 6)])
        clone[sl] = f"clone_{block:06d}_{k:03d}"
        pos, k = pos + size, k + 1
    z = z + ((day - 2) / 4.0)[:, None] * m.day_shift + rng.normal(0.0, 0.4, (n, K))
    return z, {"clone": pd.Categorical(clone), "day": day.astype(np.int64)}


def _block(task: str, m: _Model, seed: int, block: int, n: int, median_umis: float):
    rng = np.random.default_rng([seed, TASK_ORDER.index(task), 1, block])
    start = block * BLOCK
    z, cols = _latent(task, m, rng, n, block)
    logits = m.base + z.astype(np.float32) @ m.W
    logits -= logits.max(axis=1, keepdims=True)
    prop = np.exp(logits)
    prop /= prop.sum(axis=1, keepdims=True)
    library = np.exp(rng.normal(np.log(median_umis), 0.4, n)).astype(np.float32)
    # negative binomial = Poisson(mean * Gamma(theta, 1/theta))
    lam = prop * library[:, None] * (rng.standard_gamma(m.theta, size=prop.shape, dtype=np.float32) / m.theta)
    counts = rng.poisson(lam).astype(np.int32)
    X = sp.csr_matrix(counts)
    obs = pd.DataFrame(cols, index=[f"c{i:09d}" for i in range(start, start + n)])
    obsm = {}
    if task == "cite":
        mu = np.exp(m.p_base + z @ m.P) * rng.standard_gamma(10.0, size=(n, N_PROTEINS)) / 10.0
        obsm["protein"] = rng.poisson(mu).astype(np.int32)
    return X, obs, obsm


def simulate(
    task: str,
    n_cells: int,
    n_genes: int,
    seed: int,
    out_path: str | os.PathLike,
    chunk_size: int = 10_000,
    progress: bool = False,
    median_umis: float = 3000.0,
) -> dict:
    """Simulate ``task`` and write a canonical h5ad to ``out_path``; returns a summary dict."""
    if task not in TASKS:
        raise InputError(f"--task: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if n_cells < 1 or n_genes < 10:
        raise InputError(f"simulate: need at least 1 cell and 10 genes, got {n_cells} x {n_genes}")
    m = _Model(task, n_genes, seed)
    var_names = [f"G{j + 1:05d}" for j in range(n_genes)]
    uns = {"task": task, "simulator": {"seed": int(seed), "median_umis": float(median_umis),
                                       "n_programs": N_PROGRAMS, "block": BLOCK}}
    if task == "cite":
        uns["protein_names"] = np.array([f"P{i + 1:02d}" for i in range(N_PROTEINS)], dtype=object)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_cells, unit="cells", desc=f"simulate {task}")
    n_blocks = (n_cells + BLOCK - 1) // BLOCK
    with CsrWriter(out_path, var_names, uns=uns) as writer:
        buf: list = []
        for b in range(n_blocks):
            n = min(BLOCK, n_cells - b * BLOCK)
            buf.append(_block(task, m, seed, b, n, median_umis))
            if sum(x[0].shape[0] for x in buf) >= chunk_size or b == n_blocks - 1:
                X = sp.vstack([x[0] for x in buf], format="csr")
                obs = pd.concat([x[1] for x in buf])
                obsm = {k: np.concatenate([x[2][k] for x in buf]) for k in buf[0][2]}
                writer.append(X, obs, obsm)
                if bar is not None:
                    bar.update(X.shape[0])
                buf = []
    if bar is not None:
        bar.close()
    summary = writer.summary()
    summary.update(task=task, signals=TASKS[task].stored_signals, cells_dropped=0)
    return summary
