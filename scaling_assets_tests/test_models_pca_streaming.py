"""PCA above the in-memory limit: the streamed Gram route gives TruncatedSVD's decomposition exactly."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD

import scaling_assets.models.pca as pca_module
from scaling_assets.data.counts import InMemoryCounts
from scaling_assets.models.base import normalise_log1p
from scaling_assets.models.pca import PCAModel


def counts(n=1500, genes=60, seed=0):
    rng = np.random.default_rng(seed)
    programs = rng.gamma(0.5, 1.0, size=(5, genes))
    cluster = rng.integers(0, 5, n)
    mean = programs[cluster] * rng.lognormal(1.0, 0.3, size=(n, 1))
    return InMemoryCounts(sp.csr_matrix(rng.poisson(mean)))


def test_streaming_route_equals_exact_truncated_svd(monkeypatch):
    data = counts()
    in_memory = PCAModel(data.var_names, budget="test")
    in_memory.fit(data)
    assert in_memory.svd_route == "truncated_svd"

    monkeypatch.setattr(pca_module, "IN_MEMORY_MAX_CELLS", 100)  # force the streaming route
    streamed = PCAModel(data.var_names, budget="test")
    report = streamed.fit(data)
    assert streamed.svd_route == "streaming_gram"
    assert "Gram" in streamed.hyperparameters()["svd"]

    # Reference: sklearn's exact (arpack) TruncatedSVD on the same HVG matrix.
    X = normalise_log1p(data.read_rows(0, data.n_obs))[:, streamed.hvg_idx]
    exact = TruncatedSVD(16, algorithm="arpack", tol=0).fit(X)
    np.testing.assert_allclose(streamed.components[:10], exact.components_[:10], atol=1e-6)
    np.testing.assert_allclose(streamed.explained_variance_ratio[:10], exact.explained_variance_ratio_[:10],
                               rtol=1e-6)
    np.testing.assert_array_equal(streamed.hvg_idx, in_memory.hvg_idx)
    # The randomized in-memory fit spans (almost) the same leading subspace.
    overlap = np.abs(in_memory.components[:5] @ streamed.components[:5].T)
    assert np.allclose(np.sort(overlap.max(axis=1)), 1.0, atol=1e-3)
    # Unexplained fraction from the Gram matrix equals the in-memory computation on X.
    assert report.train_loss == pytest.approx(streamed._unexplained(X), abs=1e-9)
    assert streamed.embed(data).shape == (data.n_obs, 16)
