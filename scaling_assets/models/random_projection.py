"""Random projection (DESIGN §5): GaussianRandomProjection(n_components=16, random_state=42) on
raw counts, no normalisation. random_state is the study's fixed 42 whatever the run's seed.
Stored: the genes × 16 Gaussian matrix (its parameters)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.random_projection import GaussianRandomProjection

from scaling_assets.errors import InputError
from scaling_assets.models.base import FitReport, RepresentationModel, iter_csr

N_COMPONENTS = 16
RANDOM_STATE = 42
CHUNK = 10_000


class RandomProjectionModel(RepresentationModel):
    algorithm = "random_projection"
    embedding_dim = N_COMPONENTS
    dagster_kind = "scikitlearn"
    learns_from_cells = False  # the projection depends on the gene count only

    @classmethod
    def parameter_count(cls, n_genes: int, params: dict) -> int:
        return n_genes * N_COMPONENTS

    def __init__(self, gene_ids, budget="default", seed=0, device=None):
        super().__init__(gene_ids, budget, seed, "cpu")
        self.components: np.ndarray | None = None  # (16, genes)

    def hyperparameters(self) -> dict:
        return {"algorithm": self.algorithm, "n_components": N_COMPONENTS,
                "random_state": RANDOM_STATE, "input": "raw counts", "budget": self.budget}

    def _build(self) -> GaussianRandomProjection:
        # The projection depends only on the number of genes, so fitting on one row is exact.
        rp = GaussianRandomProjection(n_components=N_COMPONENTS, random_state=RANDOM_STATE)
        return rp.fit(np.zeros((1, len(self.gene_ids))))

    def n_parameters(self) -> int:
        components = self.components if self.components is not None else self._build().components_
        return int(components.size)

    def fit(self, train, validation=None, progress=False) -> FitReport:
        start = time.perf_counter()
        self._check_training_source(train)
        if validation is not None and validation.n_obs == 0:
            raise InputError("random_projection: the validation set is empty")
        rp = GaussianRandomProjection(n_components=N_COMPONENTS, random_state=RANDOM_STATE)
        rp.fit(train.read_rows(0, min(train.n_obs, 1)))  # only the gene count matters
        self.components = np.asarray(rp.components_, dtype=np.float64)
        history = pd.DataFrame({"epoch": [1], "step": [1], "train_loss": [None], "validation_loss": [None]})
        self.fit_report = FitReport(1, 1, "closed_form", None, None, time.perf_counter() - start,
                                    "cpu", self.budget, history)
        return self.fit_report

    def embed(self, data, batch_size: int | None = None) -> np.ndarray:
        self._require_fitted()
        columns = self._gene_columns(data.var_names)
        out = [np.asarray(X.astype(np.float64) @ self.components.T)
               for _, X in iter_csr(data, batch_size or CHUNK, columns)]
        return np.vstack(out).astype(np.float32) if out else np.zeros((0, N_COMPONENTS), np.float32)

    def _save_native(self, directory: Path) -> None:
        np.savez(directory / "random_projection.npz", components=self.components)

    @classmethod
    def _load_native(cls, directory: Path, meta: dict) -> RandomProjectionModel:
        model = cls(meta["gene_ids"], meta["budget"], meta["seed"])
        with np.load(directory / "random_projection.npz") as f:
            model.components = f["components"]
        return model
