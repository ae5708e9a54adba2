"""PCA (DESIGN §5): normalise to 10,000 per cell, log(x+1), top 750 highly variable genes,
TruncatedSVD(n_components=16).

HVGs: Seurat-flavour dispersion (``scaling_assets.models.hvg``, as scanpy's flavor="seurat"). In a
study they are chosen once per seed on the largest full-quality training set (the ``pca_genes``
asset) and given to every PCA model of that seed with ``use_genes``, as the reference did; a model
given none chooses them on its own training cells. With fewer than 750 genes all genes are used.

Up to ``IN_MEMORY_MAX_CELLS`` training cells, the cells restricted to the HVGs are held as a sparse
float64 matrix (N × 750, nnz × 12 bytes) and given to ``TruncatedSVD`` as DESIGN §5 says. Above it
(a 10M-cell pool would need tens of GB), the same decomposition is computed exactly from the
750 × 750 Gram matrix XᵀX accumulated chunk by chunk: TruncatedSVD does not centre, so its components
are the top eigenvectors of XᵀX (signs fixed as sklearn's ``svd_flip`` does). Memory is then bounded by
the chunk size. Stored: the 750×16 components (the parameters), the HVG indices and explained variance.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD

from scaling_assets.errors import InputError
from scaling_assets.models.base import FitReport, RepresentationModel, iter_csr, normalise_log1p
from scaling_assets.models.hvg import seurat_highly_variable
from scaling_assets.models.spec import PCA_COMPONENTS, PCA_HVG

N_COMPONENTS, N_HVG = PCA_COMPONENTS, PCA_HVG
CHUNK = 10_000
IN_MEMORY_MAX_CELLS = 200_000  # above this, the exact streaming Gram route (module docstring)


class PCAModel(RepresentationModel):
    algorithm = "pca"
    embedding_dim = N_COMPONENTS
    dagster_kind = "scikitlearn"

    @classmethod
    def parameter_count(cls, n_genes: int, params: dict) -> int:
        return min(n_genes, N_HVG) * N_COMPONENTS  # the n_hvg x 16 components

    def __init__(self, gene_ids, budget="default", seed=0, device=None):
        super().__init__(gene_ids, budget, seed, "cpu")
        self.n_hvg = min(N_HVG, len(self.gene_ids))
        if self.n_hvg <= N_COMPONENTS:
            raise InputError(f"pca: needs more than {N_COMPONENTS} genes, got {len(self.gene_ids)}")
        self.hvg_idx: np.ndarray | None = None
        self.components: np.ndarray | None = None  # (16, n_hvg)
        self.explained_variance_ratio: np.ndarray | None = None
        self.svd_route = "truncated_svd"
        self.genes_chosen_on = "this model's training cells"

    def use_genes(self, hvg_idx, chosen_on: str) -> None:
        """Fit on these gene indices (chosen elsewhere, e.g. on the seed's largest full-quality training set)."""
        hvg_idx = np.sort(np.asarray(hvg_idx, dtype=np.int64))
        if len(hvg_idx) <= N_COMPONENTS or hvg_idx[0] < 0 or hvg_idx[-1] >= len(self.gene_ids):
            raise InputError(f"pca: {len(hvg_idx)} gene indices must be > {N_COMPONENTS} and within the "
                             f"model's {len(self.gene_ids)} genes")
        self.hvg_idx, self.n_hvg, self.genes_chosen_on = hvg_idx, len(hvg_idx), chosen_on

    def hyperparameters(self) -> dict:
        return {"algorithm": self.algorithm, "target_sum": 1e4, "log1p": True, "n_hvg": self.n_hvg,
                "hvg_criterion": "Seurat dispersion (scanpy flavor='seurat', 20 mean bins)",
                "hvg_chosen_on": self.genes_chosen_on,
                "n_components": N_COMPONENTS,
                "svd": "sklearn TruncatedSVD (randomized, n_iter=5)" if self.svd_route == "truncated_svd"
                else "exact eigendecomposition of the streamed Gram matrix (TruncatedSVD's components)",
                "random_state": self.seed, "budget": self.budget}

    def n_parameters(self) -> int:
        # The fitted transform is the n_hvg × 16 component matrix (TruncatedSVD stores no mean).
        if self.components is None:  # unfitted: build one on a small random matrix of that width
            rng = np.random.default_rng(0)
            svd = TruncatedSVD(N_COMPONENTS, random_state=0).fit(rng.random((N_COMPONENTS + 1, self.n_hvg)))
            return int(svd.components_.size)
        return int(self.components.size)

    def _hvg_matrix(self, source, columns=None) -> sp.csr_matrix:
        parts = [normalise_log1p(X)[:, self.hvg_idx] for _, X in iter_csr(source, CHUNK, columns)]
        return sp.vstack(parts, format="csr")

    def fit(self, train, validation=None, progress=False) -> FitReport:
        start = time.perf_counter()
        self._check_training_source(train)
        if train.n_obs < 2:
            raise InputError("pca: needs at least 2 training cells")
        if self.hvg_idx is None:  # pass 1: the HVGs of the training cells, streamed
            self.hvg_idx = seurat_highly_variable(train, self.n_hvg, chunk_size=CHUNK)
            self.n_hvg = len(self.hvg_idx)
        n = train.n_obs
        if n > IN_MEMORY_MAX_CELLS:
            train_loss = self._fit_streaming(train)
        else:  # Pass 2: the HVG matrix in memory, then the SVD.
            self.svd_route = "truncated_svd"
            X = self._hvg_matrix(train)
            svd = TruncatedSVD(n_components=N_COMPONENTS, random_state=self.seed).fit(X)
            self.components = svd.components_.astype(np.float64)
            self.explained_variance_ratio = svd.explained_variance_ratio_
            train_loss = self._unexplained(X)
        val_loss = None
        if validation is not None:
            if validation.n_obs == 0:
                raise InputError("pca: the validation set is empty")
            val_loss = self._unexplained(self._hvg_matrix(validation, self._gene_columns(validation.var_names)))
        history = pd.DataFrame({"epoch": [1], "step": [1], "train_loss": [train_loss],
                                "validation_loss": [val_loss]})
        self.fit_report = FitReport(1, 1, "closed_form", train_loss, val_loss,
                                    time.perf_counter() - start, "cpu", self.budget, history)
        return self.fit_report

    def _fit_streaming(self, train) -> float:
        """TruncatedSVD's components from XᵀX summed over chunks; returns the unexplained fraction."""
        self.svd_route = "streaming_gram"
        h = len(self.hvg_idx)
        gram = np.zeros((h, h))
        col_sum = np.zeros(h)
        col_sq = np.zeros(h)
        for _, X in iter_csr(train, CHUNK):
            L = normalise_log1p(X)[:, self.hvg_idx]
            gram += (L.T @ L).toarray()
            col_sum += np.asarray(L.sum(axis=0)).ravel()
            col_sq += np.asarray(L.multiply(L).sum(axis=0)).ravel()
        evals, evecs = np.linalg.eigh(gram)
        top = np.argsort(evals)[::-1][:N_COMPONENTS]
        vt = evecs[:, top].T
        # svd_flip(u_based_decision=False): the largest-magnitude entry of each component is positive
        vt *= np.sign(vt[np.arange(N_COMPONENTS), np.argmax(np.abs(vt), axis=1)])[:, None]
        self.components = vt
        n = train.n_obs
        z_mean = (col_sum @ vt.T) / n
        z_var = np.einsum("ij,jk,ik->i", vt, gram, vt) / n - z_mean**2
        full_var = float((col_sq / n - (col_sum / n) ** 2).sum())
        self.explained_variance_ratio = z_var / full_var if full_var > 0 else np.zeros(N_COMPONENTS)
        total = float(np.trace(gram))
        return float(1 - evals[top].sum() / total) if total > 0 else 0.0

    def _unexplained(self, X: sp.csr_matrix) -> float:
        """Fraction of the (uncentred) sum of squares not captured by the 16 components."""
        Z = X @ self.components.T
        total = float(X.multiply(X).sum())
        return float(1 - (Z**2).sum() / total) if total > 0 else 0.0

    def embed(self, data, batch_size: int | None = None) -> np.ndarray:
        self._require_fitted()
        # Cell totals are taken over the model's genes, so extra genes never change the embedding.
        columns = self._gene_columns(data.var_names)
        out = [np.asarray(normalise_log1p(X)[:, self.hvg_idx] @ self.components.T)
               for _, X in iter_csr(data, batch_size or CHUNK, columns)]
        return np.vstack(out).astype(np.float32) if out else np.zeros((0, N_COMPONENTS), np.float32)

    def _save_native(self, directory: Path) -> None:
        np.savez(directory / "pca.npz", components=self.components, hvg_idx=self.hvg_idx,
                 explained_variance_ratio=self.explained_variance_ratio)

    @classmethod
    def _load_native(cls, directory: Path, meta: dict) -> PCAModel:
        model = cls(meta["gene_ids"], meta["budget"], meta["seed"])
        with np.load(directory / "pca.npz") as f:
            model.components = f["components"]
            model.hvg_idx = f["hvg_idx"]
            model.explained_variance_ratio = f["explained_variance_ratio"]
        model.n_hvg = len(model.hvg_idx)
        model.genes_chosen_on = meta["hyperparameters"].get("hvg_chosen_on", model.genes_chosen_on)
        return model

