"""Any scikit-learn transformer as a model: a study file's ``sklearn:`` entry (``models/user.py``).

    models:
      nmf16:
        sklearn: sklearn.decomposition.NMF
        params: {n_components: 16, max_iter: 300, init: nndsvda}
        input: log1p

The estimator is built with ``params`` (``random_state`` is the setting's seed unless ``params`` sets
it), fitted on the setting's training cells and ``transform``s the test cells; its embedding is
``n_components`` wide. What it is given (``input``):

- ``raw``: the counts as they are;
- ``log1p``: each cell scaled to 10,000 counts (over all its genes), then log(x + 1);
- ``hvg_log1p``: ``log1p`` on the seed's 750 highly variable genes, the genes PCA uses (the
  ``pca_genes`` asset: chosen once per seed on the largest full-quality training set).

The training set is read chunk by chunk into one sparse matrix, as the estimator's ``fit`` needs all of
it (dense where the estimator does not take sparse input: its scikit-learn tags say so); above
``IN_MEMORY_MAX_CELLS`` cells an estimator with ``partial_fit`` (IncrementalPCA, MiniBatchNMF) is fed
the chunks one by one instead. Test cells are transformed chunk by chunk.

Saved with skops (``estimator.skops``), scikit-learn's secure persistence: no pickle, loading runs no
code. Types skops does not trust by default (a scipy sparse matrix of SparseRandomProjection) are
listed at save and trusted at load: the file is this platform's own output, its BLAKE2b checked
before it is read (``assets/common.verify_partition``).
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scaling_assets.errors import InputError
from scaling_assets.models.base import FitReport, RepresentationModel, iter_csr, normalise_log1p
from scaling_assets.models.registry import import_object
from scaling_assets.models.spec import PCA_HVG

INPUTS = ("raw", "log1p", "hvg_log1p")
CHUNK = 10_000
IN_MEMORY_MAX_CELLS = 200_000  # above this, an estimator with partial_fit is fed chunk by chunk
ESTIMATOR_FILE, STATE_FILE = "estimator.skops", "sklearn.json"


def estimator_class(path: str) -> type:
    """The estimator class a study names, checked to be a transformer (``fit`` and ``transform``)."""
    cls = import_object(path)
    if not inspect.isclass(cls) or not all(callable(getattr(cls, m, None)) for m in ("fit", "transform")):
        raise TypeError(f"{path} is not a transformer class with fit and transform (e.g. "
                        "sklearn.decomposition.NMF); a method without transform (t-SNE) cannot embed test cells")
    return cls


def check_params(cls: type, params: dict[str, Any]) -> Any:
    """An estimator built with ``params``, its parameter names and values checked as scikit-learn does at fit."""
    names = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "args", "kwargs")]
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {cls.__name__}; it takes {names}")
    estimator = cls(**params)
    if hasattr(estimator, "_validate_params"):  # the constraints scikit-learn checks when fit starts
        estimator._validate_params()
    return estimator


def output_width(cls: type, params: dict[str, Any]) -> int:
    """The embedding width: ``n_components`` (from ``params`` or the estimator's default)."""
    default = inspect.signature(cls.__init__).parameters.get("n_components")
    width = params.get("n_components", None if default is None else default.default)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"n_components: expected a positive integer (the embedding's width), got {width!r}")
    return width


def _accepts_sparse(estimator) -> bool:
    from sklearn.utils import get_tags

    return bool(get_tags(estimator).input_tags.sparse)


class SklearnModel(RepresentationModel):
    algorithm = "sklearn"  # the study's name replaces it (ModelEntry.build)
    embedding_dim = 0  # per study entry: n_components (embedding_width)
    dagster_kind = "scikitlearn"

    def __init__(self, gene_ids, budget="default", seed=0, device=None, *, estimator: str,
                 params: dict[str, Any] | None = None, input: str = "log1p"):
        super().__init__(gene_ids, budget, seed, "cpu")
        if input not in INPUTS:
            raise InputError(f"{self.algorithm}: input {input!r} is not one of {list(INPUTS)}")
        self.estimator_path, self.input = estimator, input
        self.estimator_cls = estimator_class(estimator)
        self.estimator_params = dict(params or {})
        signature = inspect.signature(self.estimator_cls.__init__).parameters
        if "random_state" in signature and "random_state" not in self.estimator_params:
            self.estimator_params["random_state"] = self.seed
        self.embedding_dim = output_width(self.estimator_cls, self.estimator_params)
        self.hvg_idx: np.ndarray | None = None
        self.genes_chosen_on = "this model's training cells"
        self.estimator = None
        self.fit_route = "in_memory"

    @classmethod
    def embedding_width(cls, params: dict[str, Any]) -> int:
        return output_width(estimator_class(params["estimator"]), params.get("params") or {})

    @classmethod
    def parameter_count(cls, n_genes: int, params: dict[str, Any]) -> int:
        genes = min(n_genes, PCA_HVG) if params.get("input") == "hvg_log1p" else n_genes
        return cls.embedding_width(params) * genes  # the components a decomposition holds

    @property
    def hvg_genes(self) -> bool:
        return self.input == "hvg_log1p"

    def use_genes(self, hvg_idx, chosen_on: str) -> None:
        """Fit on these gene indices (the seed's highly variable genes, chosen by the pca_genes asset)."""
        self.hvg_idx, self.genes_chosen_on = np.sort(np.asarray(hvg_idx, dtype=np.int64)), chosen_on

    def hyperparameters(self) -> dict:
        return {"algorithm": self.algorithm, "estimator": self.estimator_path,
                "params": {k: self.estimator_params[k] for k in sorted(self.estimator_params)},
                "input": self.input, "target_sum": 1e4 if self.input != "raw" else None,
                "hvg": f"{len(self.hvg_idx) if self.hvg_idx is not None else PCA_HVG} Seurat-dispersion genes "
                       f"chosen on {self.genes_chosen_on}" if self.hvg_genes else None,
                "fit": self.fit_route, "budget": self.budget}

    def _input(self, X: sp.csr_matrix) -> sp.csr_matrix:
        if self.input == "raw":
            return sp.csr_matrix(X, dtype=np.float64)
        X = normalise_log1p(X)
        return X[:, self.hvg_idx] if self.hvg_genes else X

    def _matrix(self, source, columns=None):
        X = sp.vstack([self._input(X) for _, X in iter_csr(source, CHUNK, columns)], format="csr")
        return X if _accepts_sparse(self.estimator) else X.toarray()

    def fit(self, train, validation=None, progress=False) -> FitReport:
        start = time.perf_counter()
        self._check_training_source(train)
        if self.hvg_genes and self.hvg_idx is None:
            from scaling_assets.models.hvg import seurat_highly_variable

            self.hvg_idx = seurat_highly_variable(train, min(PCA_HVG, train.n_vars), chunk_size=CHUNK)
        self.estimator = self.estimator_cls(**self.estimator_params)
        if train.n_obs > IN_MEMORY_MAX_CELLS and hasattr(self.estimator, "partial_fit"):
            self.fit_route = "partial_fit"
            for _, X in iter_csr(train, CHUNK):
                X = self._input(X)
                self.estimator.partial_fit(X if _accepts_sparse(self.estimator) else X.toarray())
        else:
            self.fit_route = "in_memory"
            self.estimator.fit(self._matrix(train))
        iterations = getattr(self.estimator, "n_iter_", 1)
        history = pd.DataFrame({"epoch": [1], "step": [1], "train_loss": [None], "validation_loss": [None]})
        self.fit_report = FitReport(float(np.max(iterations)), int(np.max(iterations)), "fitted", None, None,
                                    time.perf_counter() - start, "cpu", self.budget, history)
        return self.fit_report

    def embed(self, data, batch_size: int | None = None) -> np.ndarray:
        self._require_fitted()
        columns = self._gene_columns(data.var_names)
        out = []
        for _, X in iter_csr(data, batch_size or CHUNK, columns):
            X = self._input(X)
            Z = self.estimator.transform(X if _accepts_sparse(self.estimator) else X.toarray())
            out.append(np.asarray(Z.toarray() if sp.issparse(Z) else Z))
        return np.vstack(out).astype(np.float32) if out else np.zeros((0, self.embedding_dim), np.float32)

    def n_parameters(self) -> int:
        """The numbers the fitted transform holds: its fitted arrays (``components_``, ...); before
        fitting, n_components x the genes it reads."""
        if self.estimator is None:
            return self.embedding_dim * (min(PCA_HVG, len(self.gene_ids)) if self.hvg_genes else len(self.gene_ids))
        arrays = [v for k, v in vars(self.estimator).items() if k.endswith("_") and not k.startswith("_")
                  and (isinstance(v, np.ndarray) or sp.issparse(v))]
        return int(sum(v.nnz if sp.issparse(v) else v.size for v in arrays))

    def _save_native(self, directory: Path) -> None:
        import skops.io as sio

        sio.dump(self.estimator, directory / ESTIMATOR_FILE)
        trusted = sio.get_untrusted_types(file=directory / ESTIMATOR_FILE)
        state = {"trusted": trusted, "hvg_idx": None if self.hvg_idx is None else self.hvg_idx.tolist(),
                 "genes_chosen_on": self.genes_chosen_on, "fit_route": self.fit_route}
        (directory / STATE_FILE).write_text(json.dumps(state))

    @classmethod
    def _load_native(cls, directory: Path, meta: dict) -> SklearnModel:
        import skops.io as sio

        model = cls(meta["gene_ids"], meta["budget"], meta["seed"], **meta["params"])
        state = json.loads((directory / STATE_FILE).read_text())
        model.estimator = sio.load(directory / ESTIMATOR_FILE, trusted=state["trusted"])
        model.hvg_idx = None if state["hvg_idx"] is None else np.asarray(state["hvg_idx"], dtype=np.int64)
        model.genes_chosen_on, model.fit_route = state["genes_chosen_on"], state["fit_route"]
        return model
