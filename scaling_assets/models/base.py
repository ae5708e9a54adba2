"""The one small interface every algorithm implements, and what they share.

A model is built for a fixed list of genes, fitted once, then embeds any count set (or, for
Geneformer, any corpus) with the same genes. ``save`` writes a directory atomically: the
library's native files plus ``model.json`` (algorithm, genes, budget, hyperparameters, fit
report) and ``history.csv`` (loss per epoch / evaluation).
"""

from __future__ import annotations

import abc
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scaling_assets.errors import InputError
from scaling_assets.fs import atomic_directory
from scaling_assets.models.budget import BUDGETS

MODEL_JSON = "model.json"
HISTORY_CSV = "history.csv"
FORMAT_VERSION = 1  # of model.json; load refuses other versions rather than misread them


@dataclass
class FitReport:
    """What one training run did. ``history`` has one row per epoch (SCVI) or evaluation
    (Geneformer): columns ``epoch``, ``step``, ``train_loss``, ``validation_loss``."""

    epochs: float
    steps: int
    stop_reason: str
    train_loss: float | None
    validation_loss: float | None
    wall_time_s: float
    device: str
    budget: str
    history: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["epoch", "step", "train_loss", "validation_loss"]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (history excluded: it is saved as its own CSV)."""
        out = asdict(self)
        out.pop("history")
        return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], history: pd.DataFrame | None = None) -> FitReport:
        return cls(**d, history=history if history is not None else pd.DataFrame())


def resolve_device(device: str | None) -> str:
    """``None`` means the best available: the first CUDA device when present, else CPU."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def read_model_json(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / MODEL_JSON
    if not path.is_file():
        raise InputError(f"{directory} is not a saved model directory (no {MODEL_JSON})")
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}; "
                         "the model was saved by another version of scaling-assets: re-materialise it")
    return meta


class RepresentationModel(abc.ABC):
    """The model interface: the built-in four implement it, and so does a user's own model.

    A model is built for the genes of one dataset, fitted once on one setting's training cells
    (N cells at quality q, seed s), then embeds the setting's test cells. The platform does the rest
    (splits, thinning, storage, GPU leases, MI, laws, tables, plots). ``docs/models.md`` has a worked
    example.

    What a model declares (class attributes, read when the study is loaded, before any data):
      ``reads``               "counts" (count rows) or "corpus" (rank-value tokens, as Geneformer)
      ``embedding_dim``       the width of its embedding (``embedding_width(params)`` when ``params`` decide it)
      ``learns_from_cells``   False when the fit does not depend on the cells given (random projection)
      ``pretrained``          True for a frozen model: fitted on none of the study's cells, so it has no
                              size axis (its partitions are n=0 at each quality and seed)
      ``dagster_kind``        the kind badge of its model asset in the UI
      ``gpu_mib(stage, n_genes, params)``       GPU MiB its "model" (fit) and "embeddings" steps need (0: CPU)
      ``parameter_count(n_genes, params)``      parameters it holds for a gene count (the planner's)

    What it receives:
      ``__init__(gene_ids, budget, seed, device, **params)``: the dataset's genes (the columns of every
      count set it will see), the study's budget name, the setting's seed, the leased device
      ("cpu" or "cuda:N") and the study file's ``params`` as keyword arguments (kept as ``self.params``).
      ``fit(train, validation)``: ``train`` is a ``CountSource`` over the setting's training cells
      (``n_obs``, ``n_vars``, ``var_names``, ``iter_chunks(chunk_size)``, ``read_rows(start, stop)``;
      raw integer counts, read chunk by chunk, never the whole set in memory) or, for a corpus model,
      a ``Corpus``; None for a pretrained model. ``validation`` is the seed's validation cells at the
      same quality (counts or a corpus, as ``train``).
      ``embed(data)``: the test cells (counts or a corpus); returns float32 (cells, embedding_dim),
      every value finite.

    What it keeps: ``save(directory)`` writes ``_save_native`` (its own files) and ``model.json``;
    ``load(directory)`` calls ``_load_native(directory, meta)`` (``meta``: model.json, with
    ``gene_ids``, ``budget``, ``seed``, ``params``). ``hyperparameters()`` is recorded with the model,
    shown in the hyperparameter table, and its source (with the constants it reads) and the study's
    ``params`` make the model's code version: changing them marks its partitions stale.
    ``n_parameters()`` is the count of the fitted model.
    """

    algorithm: ClassVar[str]  # a user model's name comes from the study (``ModelEntry.build`` sets it)
    embedding_dim: ClassVar[int]
    reads: ClassVar[str] = "counts"
    learns_from_cells: ClassVar[bool] = True
    pretrained: ClassVar[bool] = False
    dagster_kind: ClassVar[str] = "python"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not hasattr(cls, "algorithm"):  # a user's class outside a study is named after itself
            cls.algorithm = cls.__name__

    def __new__(cls, *args, **kwargs):
        model = super().__new__(cls)
        # the keyword arguments it is built with beyond the four (a study's params): saved in model.json,
        # given back to the class when the model is loaded
        model.params = {k: v for k, v in kwargs.items() if k not in ("gene_ids", "budget", "seed", "device")}
        return model

    def __init__(
        self,
        gene_ids: list[str] | np.ndarray,
        budget: str = "default",
        seed: int = 0,
        device: str | None = None,
    ):
        gene_ids = [str(g) for g in gene_ids]
        if not gene_ids:
            raise InputError(f"{self.algorithm}: a model needs at least one gene")
        if len(set(gene_ids)) != len(gene_ids):
            raise InputError(f"{self.algorithm}: gene ids must be unique")
        if budget not in BUDGETS:
            raise InputError(f"unknown budget {budget!r}; expected one of {sorted(BUDGETS)}")
        self.gene_ids = gene_ids
        self.budget = budget
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.fit_report: FitReport | None = None

    # --- declarations read before any data (override where params decide them) ---------------
    @classmethod
    def embedding_width(cls, params: dict[str, Any]) -> int:
        return cls.embedding_dim

    @classmethod
    def gpu_mib(cls, stage: str, n_genes: int, params: dict[str, Any]) -> int:
        """GPU MiB of a stage ("model": fit, "embeddings": embed) for ``n_genes`` genes; 0: the CPU."""
        return 0

    @classmethod
    def parameter_count(cls, n_genes: int, params: dict[str, Any]) -> int:
        """Parameters for ``n_genes`` genes, before any data: by default those of a model built for them."""
        return int(cls([f"gene{i}" for i in range(n_genes)], device="cpu", **params).n_parameters())

    # --- the interface -------------------------------------------------------------------
    @abc.abstractmethod
    def fit(self, train, validation=None, progress: bool = False) -> FitReport: ...

    @abc.abstractmethod
    def embed(self, data, batch_size: int | None = None) -> np.ndarray: ...

    @abc.abstractmethod
    def n_parameters(self) -> int: ...

    @abc.abstractmethod
    def hyperparameters(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _save_native(self, directory: Path) -> None:
        """Write the library's own files into ``directory`` (which exists and is empty)."""

    @classmethod
    @abc.abstractmethod
    def _load_native(cls, directory: Path, meta: dict[str, Any]) -> RepresentationModel: ...

    # --- shared --------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.fit_report is not None

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise InputError(f"{self.algorithm}: the model is not fitted yet (call fit first)")

    def save(self, directory: str | os.PathLike) -> Path:
        self._require_fitted()
        with atomic_directory(directory) as tmp:
            self._save_native(tmp)
            meta = {
                "algorithm": self.algorithm,
                "class": f"{type(self).__module__}:{type(self).__qualname__}",
                "format_version": FORMAT_VERSION,
                "gene_ids": self.gene_ids,
                "budget": self.budget,
                "seed": self.seed,
                "params": self.params,
                "embedding_dim": self.embedding_dim,
                "n_parameters": self.n_parameters(),
                "hyperparameters": self.hyperparameters(),
                "fit_report": self.fit_report.to_dict(),
            }
            (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2, default=_json_default))
            self.fit_report.history.to_csv(tmp / HISTORY_CSV, index=False)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, algorithm: str | None = None) -> RepresentationModel:
        """The model saved in ``directory``; ``algorithm``: the name it was saved under (default: the class's)."""
        directory = Path(directory)
        meta = read_model_json(directory)
        expected = algorithm or cls.algorithm
        if meta.get("algorithm") != expected:
            raise InputError(
                f"{directory} holds a {meta.get('algorithm')!r} model, not {expected!r}; "
                f"load it with load_model() or the {meta.get('algorithm')!r} class"
            )
        meta.setdefault("params", {})  # saved before models took params
        model = cls._load_native(directory, meta)
        model.algorithm = expected
        history = pd.read_csv(directory / HISTORY_CSV) if (directory / HISTORY_CSV).exists() else None
        model.fit_report = FitReport.from_dict(meta["fit_report"], history)
        return model

    def _gene_columns(self, var_names) -> np.ndarray | None:
        """Columns of a count set that give this model's genes in training order.

        Returns None when the count set already has exactly these genes in this order. Extra
        genes are ignored and order may differ; missing genes are an error naming them.
        """
        var_names = [str(g) for g in var_names]
        if var_names == self.gene_ids:
            return None
        position = {g: i for i, g in enumerate(var_names)}
        missing = [g for g in self.gene_ids if g not in position]
        if missing:
            raise InputError(
                f"{self.algorithm}: the count set lacks {len(missing)} of the model's "
                f"{len(self.gene_ids)} training genes; first missing: {missing[:5]}"
            )
        return np.array([position[g] for g in self.gene_ids], dtype=np.int64)

    def _check_training_source(self, source, what: str = "training set") -> None:
        if source.n_obs == 0:
            raise InputError(f"{self.algorithm}: the {what} is empty (0 cells)")
        if self._gene_columns(source.var_names) is not None:
            raise InputError(
                f"{self.algorithm}: the {what}'s genes are not the model's gene_ids "
                "(same genes in the same order required for training)"
            )


def iter_csr(source, chunk_size: int, columns: np.ndarray | None = None):
    """Stream a CountSource in row chunks, optionally selecting/reordering gene columns."""
    for rows, X in source.iter_chunks(chunk_size):
        X = sp.csr_matrix(X)
        yield rows, (X if columns is None else X[:, columns])


def normalise_log1p(X: sp.csr_matrix, totals: np.ndarray | None = None) -> sp.csr_matrix:
    """Scale each cell to 10,000 counts (by its total over all genes), then log(x+1)."""
    X = sp.csr_matrix(X, dtype=np.float64, copy=True)
    totals = np.asarray(X.sum(axis=1)).ravel() if totals is None else totals
    scale = np.divide(1e4, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
    X.data *= np.repeat(scale, np.diff(X.indptr))
    np.log1p(X.data, out=X.data)
    return X


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, (np.ndarray, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
