"""Small models of a user's own, for the tests of study-file models (``class: own_models:TopGenes``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from scaling_assets.models import FitReport, RepresentationModel
from scaling_assets.models.base import iter_csr, normalise_log1p

WIDTH = 4


class TopGenes(RepresentationModel):
    """The embedding is log1p of the ``width`` genes with the highest mean on the training cells.
    ``fail``: "nan", "inf" or "rows" makes the embedding wrong when it trained on more than
    ``fail_above`` cells (a model that breaks on some partitions only)."""

    embedding_dim = WIDTH

    def __init__(self, gene_ids, budget="default", seed=0, device=None, *, width: int = WIDTH,
                 fail: str | None = None, fail_above: int = 0):
        super().__init__(gene_ids, budget, seed, device)
        self.width, self.fail, self.fail_above = width, fail, fail_above
        self.embedding_dim = width
        self.genes: np.ndarray | None = None
        self.trained_on = 0

    @classmethod
    def embedding_width(cls, params):
        return int(params.get("width", WIDTH))

    @classmethod
    def gpu_mib(cls, stage, n_genes, params):
        return 1000 + n_genes // 10 if stage == "model" else 0

    def hyperparameters(self):
        return {"algorithm": self.algorithm, "width": self.width, "input": "log1p"}

    def n_parameters(self):
        return self.width

    def fit(self, train, validation=None, progress=False):
        start = time.perf_counter()
        self._check_training_source(train)
        total = np.zeros(train.n_vars)
        for _, X in iter_csr(train, 1000):
            total += np.asarray(normalise_log1p(X).sum(axis=0)).ravel()
        self.genes = np.sort(np.argsort(-total, kind="stable")[: self.width])
        self.trained_on = train.n_obs
        self.fit_report = FitReport(1, 1, "closed_form", None, None, time.perf_counter() - start, "cpu", self.budget)
        return self.fit_report

    def embed(self, data, batch_size=None):
        columns = self._gene_columns(data.var_names)
        z = np.vstack([normalise_log1p(X)[:, self.genes].toarray() for _, X in iter_csr(data, 1000, columns)])
        if self.fail and self.trained_on > self.fail_above:
            z = {"nan": lambda a: np.where(a > 0, np.nan, a), "inf": lambda a: a + np.inf, "rows": lambda a: a[1:]}[
                self.fail](z)
        return z.astype(np.float32)

    def _save_native(self, directory: Path):
        (directory / "top_genes.json").write_text(json.dumps({"genes": self.genes.tolist(), "n": self.trained_on}))

    @classmethod
    def _load_native(cls, directory: Path, meta):
        model = cls(meta["gene_ids"], meta["budget"], meta["seed"], **meta["params"])
        saved = json.loads((directory / "top_genes.json").read_text())
        model.genes, model.trained_on = np.asarray(saved["genes"]), saved["n"]
        return model


class TokenRanks(RepresentationModel):
    """A corpus model: each cell as 1 / (rank + 1) on its tokens, projected on the top 3 right singular
    vectors of the training cells' matrix."""

    reads = "corpus"
    embedding_dim = 3

    def __init__(self, gene_ids, budget="default", seed=0, device=None):
        super().__init__(gene_ids, budget, seed, device)
        self.components: np.ndarray | None = None

    def hyperparameters(self):
        return {"algorithm": self.algorithm, "weights": "1 / (rank + 1)", "components": 3}

    def n_parameters(self):
        return 3 * (len(self.gene_ids) + 2)

    def _matrix(self, corpus) -> sp.csr_matrix:
        rows, cols, vals = [], [], []
        for i in range(len(corpus)):
            tokens = corpus[i]
            rows += [i] * len(tokens)
            cols += tokens.tolist()
            vals += (1.0 / (np.arange(len(tokens)) + 1)).tolist()
        return sp.csr_matrix((vals, (rows, cols)), shape=(len(corpus), len(self.gene_ids) + 2))

    def fit(self, train, validation=None, progress=False):
        from sklearn.decomposition import TruncatedSVD

        start = time.perf_counter()
        self.components = TruncatedSVD(3, random_state=self.seed).fit(self._matrix(train)).components_
        self.fit_report = FitReport(1, 1, "closed_form", None, None, time.perf_counter() - start, "cpu", self.budget)
        return self.fit_report

    def embed(self, data, batch_size=None):
        return np.asarray(self._matrix(data) @ self.components.T, dtype=np.float32)

    def _save_native(self, directory: Path):
        np.save(directory / "components.npy", self.components)

    @classmethod
    def _load_native(cls, directory: Path, meta):
        model = cls(meta["gene_ids"], meta["budget"], meta["seed"])
        model.components = np.load(directory / "components.npy")
        return model


class NotAModel:
    """Has fit and transform, but is not a RepresentationModel."""

    def fit(self, X):
        return self

    def transform(self, X):
        return X


class HalfAModel(RepresentationModel):
    """Declares a width but implements nothing."""

    embedding_dim = 2
