"""Small clustered negative-binomial count sets for model tests and benchmarks (no file I/O).

Not the study simulator (scaling_assets.data.simulate): just enough structure for a model to
learn — each cluster up-regulates its own block of genes; library sizes are log-normal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scaling_assets.data.counts import InMemoryCounts


def simulate_counts(n_cells: int, n_genes: int, n_clusters: int = 4, seed: int = 0,
                    mean_umis: float = 2_000.0, dispersion: float = 0.5,
                    gene_prefix: str = "gene") -> InMemoryCounts:
    rng = np.random.default_rng(seed)
    base = rng.lognormal(0.0, 1.5, size=n_genes)
    programs = np.ones((n_clusters, n_genes))
    for k in range(n_clusters):
        genes = rng.choice(n_genes, size=max(1, n_genes // 10), replace=False)
        programs[k, genes] *= rng.uniform(4, 12, size=len(genes))
    cluster = rng.integers(0, n_clusters, size=n_cells)
    profile = base * programs[cluster]
    profile /= profile.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(mean_umis), 0.3, size=n_cells)
    mu = profile * library[:, None]
    # NB as a gamma-Poisson mixture with shape 1/dispersion
    lam = rng.gamma(1.0 / dispersion, mu * dispersion)
    X = sp.csr_matrix(rng.poisson(lam).astype(np.float32))
    obs = pd.DataFrame({"cluster": cluster}, index=[f"cell{i}" for i in range(n_cells)])
    return InMemoryCounts(X, obs=obs, var_names=[f"{gene_prefix}{j}" for j in range(n_genes)])
