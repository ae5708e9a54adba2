"""Embedded simulator: the four study tasks in the canonical layout, streamed to disk.

Generative model (DESIGN §2): each cell has a latent state z over K = 12 + 6 gene programs; gene
logits are ``base + z @ W``; gene proportions are the softmax of the logits; library sizes are
log-normal (median ``median_umis``, 15,000 by default); counts are negative binomial (gamma-Poisson,
gene-specific dispersion around 1.5). Task signals shape z:

- cite: 12 cell types (frequencies ~ rank^-0.5); ``obsm["protein"]`` = NB counts of 20 proteins driven by z.
- lineage: a clone state (a cell type and a shared-program state) common to sisters, a day shift
  and drift; days 2/4 (early), 6 (late).
- spatial: cell-type domains (Voronoi tiles of 60 seeded points) plus a smooth field over (x, y).
- development: cell types whose programs grow or fade over days 8.5..13.5, plus a shared time axis.

Why the programs are subtle and dense (each moves 30% of the genes by ~N(0, 0.6²) in log space): a
model must then *learn* them from many cells, as in real data. A type's program is a weak direction
in gene space (its variance, about its frequency × per-cell signal, sits near the noise level of a
750-gene × N-cell covariance), so PCA or SCVI fitted on 100 cells recovers few of them and one
fitted on thousands most: MI rises with N and flattens. Overdispersion (θ ≈ 1.5) is a biological
noise floor that deeper sequencing cannot remove, so MI also saturates with UMIs per cell, as the
noise law expects. Version 3 raised the type effects from 0.4 to 0.6: at 0.4 PCA's MI still rose
linearly in log N at 3,200 cells at most depths, so neither N_0 nor s of the size law was identified;
at 0.6 PCA learns the programs from ~25-800 cells at q >= 0.1 (rising, then flattening), and the
noise-law fits with their u_bar inside the grid went from 24 to 38 of 48 for PCA. The earlier simulator (12 strong, sparse programs) was learnt from 100 cells:
PCA's MI did not depend on N at all.

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
N_PROTEINS = 20
DEV_DAYS = (8.5, 9.5, 10.5, 11.5, 12.5, 13.5)
SIDE = 1000.0  # spatial extent (x and y in [0, SIDE))
SIMULATOR_VERSION = 3  # 3: type programs 0.6 (learnt from tens to hundreds of cells); 2: 0.4 (still rising at 3,200); 1: sparse strong ones
MEDIAN_UMIS = 15_000.0
N_TYPES = 12
TYPE_ZIPF = 0.5  # type frequencies ~ rank^-TYPE_ZIPF
N_SHARED = 6  # programs shared by all cells: time (development), clone state (lineage), field (spatial)
PROGRAM_GENES = 0.3  # share of the genes each program moves
TYPE_EFFECT = 0.6  # sd of a type program's log-fold effects
SHARED_EFFECT = 0.2  # sd of a shared program's log-fold effects
WITHIN_SD = 0.3  # each cell's drift on every program
THETA = 1.5  # median NB dispersion
N_DOMAINS = 60  # spatial cell-type tiles


class _Model:
    """Global parameters of one simulated dataset (gene programs, type frequencies, fields)."""

    def __init__(self, task: str, n_genes: int, seed: int):
        rng = np.random.default_rng([seed, TASK_ORDER.index(task), 0])
        T, C = N_TYPES, N_SHARED
        K = T + C
        self.base = rng.normal(0.0, 1.2, n_genes).astype(np.float32)
        W = np.zeros((K, n_genes), np.float32)
        n_program = max(5, round(PROGRAM_GENES * n_genes))
        for k in range(K):
            genes = rng.choice(n_genes, size=min(n_program, n_genes), replace=False)
            W[k, genes] = rng.normal(0.0, TYPE_EFFECT if k < T else SHARED_EFFECT, len(genes))
        self.W = W
        self.theta = np.exp(rng.normal(np.log(THETA), 0.5, n_genes)).astype(np.float32)
        p = np.arange(1, T + 1, dtype=float) ** -TYPE_ZIPF
        self.type_p = rng.permutation(p / p.sum())
        self.time_gain = rng.normal(0.0, 1.0, T)
        self.time_axis = rng.normal(0.0, 1.0, C)
        self.day_shift = rng.normal(0.0, 0.7, C)
        self.p_base = rng.normal(3.0, 0.7, N_PROTEINS)
        self.P = rng.normal(0.0, 0.5, (K, N_PROTEINS))
        n_waves = 6
        angle = rng.uniform(0, 2 * np.pi, (C, n_waves))
        wavelength = rng.uniform(250.0, 700.0, (C, n_waves))
        self.wave_k = np.stack([np.cos(angle), np.sin(angle)], -1) * (2 * np.pi / wavelength)[..., None]
        self.wave_phase = rng.uniform(0, 2 * np.pi, (C, n_waves))
        self.domain_xy = rng.uniform(0.0, SIDE, (N_DOMAINS, 2))
        self.domain_type = rng.choice(T, size=N_DOMAINS, p=self.type_p)

    def types(self, t: np.ndarray, n: int) -> np.ndarray:
        z = np.zeros((n, N_TYPES + N_SHARED))
        z[np.arange(n), t] = 1.0
        return z


def _type_names(t, T):
    return pd.Categorical([f"type_{i:02d}" for i in t], categories=[f"type_{i:02d}" for i in range(T)])


def _latent(task: str, m: _Model, rng: np.random.Generator, n: int, block: int):
    """Latent states z (n x K) and the obs columns of one block."""
    T, C = N_TYPES, N_SHARED
    K = T + C
    noise = rng.normal(0.0, WITHIN_SD, (n, K))
    if task == "cite":
        t = rng.choice(T, size=n, p=m.type_p)
        return m.types(t, n) + noise, {"cell_type": _type_names(t, T)}
    if task == "development":
        t = rng.choice(T, size=n, p=m.type_p)
        day = rng.choice(np.array(DEV_DAYS), size=n)
        time = (day - DEV_DAYS[0]) / (DEV_DAYS[-1] - DEV_DAYS[0])
        z = m.types(t, n) * (1.0 + 0.8 * m.time_gain[t] * (time - 0.5))[:, None] + noise
        z[:, T:] += time[:, None] * m.time_axis
        return z, {"day": day.astype(np.float64), "cell_type": _type_names(t, T)}
    if task == "spatial":
        xy = rng.uniform(0.0, SIDE, (n, 2))
        d2 = ((xy[:, None, :] - m.domain_xy[None]) ** 2).sum(-1)
        t = m.domain_type[d2.argmin(1)]
        phase = np.einsum("nd,kwd->nkw", xy, m.wave_k) + m.wave_phase
        z = m.types(t, n) + noise
        z[:, T:] += np.cos(phase).sum(-1) * np.sqrt(2.0 / phase.shape[-1])
        return z, {"x": xy[:, 0], "y": xy[:, 1]}
    # lineage: clones of 4..12 sisters fill ~85% of the block; the rest carry no clone
    clone = np.full(n, None, dtype=object)
    day = rng.choice(np.array([2, 4, 6]), size=n)
    t = rng.choice(T, size=n, p=m.type_p)
    z = m.types(t, n)
    z[:, T:] += rng.normal(0.0, 1.0, (n, C))
    pos, k = 0, 0
    while True:
        size = int(rng.integers(4, 13))
        if pos + size > int(0.85 * n):
            break
        n_early = int(rng.integers(1, size))  # at least one early and one late sister
        tc = rng.choice(T, p=m.type_p)
        state = np.zeros(K)
        state[tc] = 1.0
        state[T:] = rng.normal(0.0, 1.0, C)
        sl = slice(pos, pos + size)
        z[sl] = state
        day[sl] = np.concatenate([rng.choice([2, 4], size=n_early), np.full(size - n_early, 6)])
        clone[sl] = f"clone_{block:06d}_{k:03d}"
        pos, k = pos + size, k + 1
    z[:, T:] += ((day - 2) / 4.0)[:, None] * m.day_shift
    z = z + noise
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


def simulated_obs(task: str, n_cells: int, n_genes: int, seed: int) -> pd.DataFrame:
    """The obs columns ``simulate`` writes for these arguments, without the counts (the same RNG draws, a
    block at a time): what a split and the signals' pair counts need, in milliseconds per thousand cells."""
    m = _Model(task, n_genes, seed)
    blocks = []
    for b in range((n_cells + BLOCK - 1) // BLOCK):
        n = min(BLOCK, n_cells - b * BLOCK)
        _, cols = _latent(task, m, np.random.default_rng([seed, TASK_ORDER.index(task), 1, b]), n, b)
        blocks.append(pd.DataFrame(cols, index=[f"c{i:09d}" for i in range(b * BLOCK, b * BLOCK + n)]))
    return pd.concat(blocks)


def simulate(
    task: str,
    n_cells: int,
    n_genes: int,
    seed: int,
    out_path: str | os.PathLike,
    chunk_size: int = 10_000,
    progress: bool = False,
    median_umis: float = MEDIAN_UMIS,
) -> dict:
    """Simulate ``task`` and write a canonical h5ad to ``out_path``; returns a summary dict."""
    if task not in TASKS:
        raise InputError(f"--task: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if n_cells < 1 or n_genes < 10:
        raise InputError(f"simulate: need at least 1 cell and 10 genes, got {n_cells} x {n_genes}")
    m = _Model(task, n_genes, seed)
    var_names = [f"G{j + 1:05d}" for j in range(n_genes)]
    uns = {"task": task, "simulator": {"seed": int(seed), "median_umis": float(median_umis),
                                       "version": SIMULATOR_VERSION, "n_programs": N_TYPES + N_SHARED, "block": BLOCK}}
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
