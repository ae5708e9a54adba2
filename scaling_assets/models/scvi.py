"""SCVI (DESIGN §5) through ``scvi.model.SCVI`` on raw counts.

Two ways of feeding the same model and training plan:
- up to ``IN_MEMORY_MAX_CELLS`` training cells: an in-memory sparse AnnData and scvi-tools' own
  DataSplitter (train_size=0.8, shuffle_set_split=True, batch_size=512);
- above it: ``StreamingDataModule``, a Lightning datamodule that reads shuffled row blocks from the
  CountSource each epoch (same seeded 80/20 split, same batch size), so memory is one block.
  The threshold bounds the in-memory copy: 200,000 cells × ~2,000 nonzero genes × 8 bytes ≈ 3 GB.
Embeddings always stream: chunks of the count set go through ``get_latent_representation``
(posterior mean of q(z|x), 16-d) via a dataloader.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import lightning.pytorch as pl
import torch

from scaling_assets.errors import InputError
from scaling_assets.models.base import FitReport, RepresentationModel, iter_csr
from scaling_assets.models.budget import get_budget
from scaling_assets.models.spec import (SCVI_BATCH, SCVI_MODEL, SCVI_PLAN, SCVI_TRAIN_SIZE, scvi_embed_mib,
                                        scvi_parameters, scvi_train_mib)

IN_MEMORY_MAX_CELLS = 200_000
STREAM_BLOCK_CELLS = 16_384
BATCH_SIZE = SCVI_BATCH
TRAIN_SIZE = SCVI_TRAIN_SIZE

MODEL_KWARGS, PLAN_KWARGS = SCVI_MODEL, SCVI_PLAN  # the reference's settings (models/spec.py)


def _quiet():
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*num_workers.*")
    # we register no batch or label covariates; the one-cell stand-in trips this size warning
    warnings.filterwarnings("ignore", message="Category 0 in adata.obs.*has fewer than 3 cells")


def _anndata(X: sp.csr_matrix, gene_ids):
    import anndata as ad

    return ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32), var=pd.DataFrame(index=list(gene_ids)))


def _stand_in(gene_ids):
    """A one-cell AnnData with the genes: what scvi-tools needs to hold a registry, no data.
    (Counts of 1, not 0: scvi-tools reads an all-zero sparse X as a 'minified' AnnData.)"""
    return _anndata(sp.csr_matrix(np.ones((1, len(gene_ids)), dtype=np.float32)), gene_ids)


def _tensors(X: sp.csr_matrix) -> dict[str, torch.Tensor]:
    """One minibatch in the layout scvi's VAE reads (no batch or label covariates)."""
    n = X.shape[0]
    return {"X": torch.from_numpy(np.asarray(X.toarray(), dtype=np.float32)),
            "batch": torch.zeros(n, 1), "labels": torch.zeros(n, 1)}


def train_count(n_obs: int) -> int:
    """Training cells of the 80/20 split, as scvi's DataSplitter sizes it: ceil(0.8 n)."""
    return int(np.ceil(TRAIN_SIZE * n_obs))


def split_rows(n_obs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffled 80/20 split, sized like scvi's DataSplitter (``train_count``)."""
    n_train = train_count(n_obs)
    perm = np.random.default_rng(seed).permutation(n_obs)
    return perm[:n_train], perm[n_train:]


class StreamingDataModule(pl.LightningDataModule):
    """Lightning datamodule over a CountSource: shuffled blocks of rows, 512-cell batches, never the
    whole source in memory. scvi-tools' training mixin reads ``n_train``, ``n_val``, ``n_obs`` and
    ``n_vars`` from the datamodule it is given."""

    def __init__(self, source, seed: int, batch_size: int = BATCH_SIZE, block: int = STREAM_BLOCK_CELLS):
        super().__init__()
        self.source, self.seed, self.batch_size, self.block = source, seed, batch_size, block
        self.train_idx, self.val_idx = split_rows(source.n_obs, seed)
        self.n_train, self.n_val = len(self.train_idx), len(self.val_idx)
        self.n_obs, self.n_vars = source.n_obs, source.n_vars
        self._epoch = 0

    def train_dataloader(self):
        self._epoch += 1  # a new shuffle each epoch, reproducible from the seed
        return _Batches(self, self.train_idx, shuffle_epoch=self._epoch)

    def val_dataloader(self):
        return _Batches(self, self.val_idx, shuffle_epoch=None)


class _Batches:
    def __init__(self, dm: StreamingDataModule, rows: np.ndarray, shuffle_epoch: int | None):
        self.dm, self.rows, self.shuffle_epoch = dm, rows, shuffle_epoch

    def __len__(self):
        return int(np.ceil(len(self.rows) / self.dm.batch_size))

    def __iter__(self):
        rows = self.rows
        rng = None
        if self.shuffle_epoch is not None:
            rng = np.random.default_rng([self.dm.seed, self.shuffle_epoch])
            rows = rng.permutation(rows)
        bs = self.dm.batch_size
        for start in range(0, len(rows), self.dm.block):
            block = rows[start : start + self.dm.block]
            order = np.argsort(block, kind="stable")  # read sorted (sequential I/O), keep shuffle
            X = sp.csr_matrix(self.dm.source.read_subset(block[order]))
            X = X[np.argsort(order, kind="stable")]
            for b in range(0, X.shape[0], bs):
                piece = X[b : b + bs]
                if piece.shape[0] == 1 and self.shuffle_epoch is not None:
                    continue  # BatchNorm cannot train on a single cell (scvi drops it too)
                yield _tensors(piece)


def _check_split(n: int) -> int:
    """Training cells of the 80/20 split; refuses a source too small to leave a validation cell."""
    n_train = train_count(n)
    if n - n_train < 1 or n_train < 2:
        raise InputError(
            f"scvi: {n} training cells leave {n - n_train} validation cells in the 80/20 split; "
            "at least 3 cells are needed to evaluate the validation ELBO")
    return n_train


class SCVIModel(RepresentationModel):
    algorithm = "scvi"
    embedding_dim = SCVI_MODEL["n_latent"]
    dagster_kind = "pytorch"

    @classmethod
    def gpu_mib(cls, stage: str, n_genes: int, params: dict) -> int:
        return {"model": scvi_train_mib, "embeddings": scvi_embed_mib}.get(stage, lambda g: 0)(n_genes)

    @classmethod
    def parameter_count(cls, n_genes: int, params: dict) -> int:
        return scvi_parameters(n_genes)

    def __init__(self, gene_ids, budget="default", seed=0, device=None):
        super().__init__(gene_ids, budget, seed, device)
        self.in_memory_max_cells = IN_MEMORY_MAX_CELLS
        self.model = None  # scvi.model.SCVI once built
        self._max_epochs: int | None = None
        self._min_epochs: int | None = None

    def hyperparameters(self) -> dict:
        """The settings a fit used, the budget's included (the code version fingerprint reads these)."""
        b = get_budget(self.budget).scvi
        return {"algorithm": self.algorithm, "model": MODEL_KWARGS, "plan": PLAN_KWARGS,
                "batch_size": BATCH_SIZE, "train_size": TRAIN_SIZE, "shuffle_set_split": True,
                "early_stopping": True, "early_stopping_monitor": "elbo_validation",
                "early_stopping_patience": b.early_stopping_patience,
                "early_stopping_min_delta": b.early_stopping_min_delta,
                "early_stopping_min_steps": b.min_steps, "early_stopping_warmup_epochs": self._min_epochs,
                "max_epochs_rule": "max(1, floor(1e7 / N))", "max_epochs_cap": b.max_epochs_cap,
                "max_steps": b.max_steps,
                "max_epochs": self._max_epochs, "budget": self.budget, "seed": self.seed,
                "in_memory_max_cells": self.in_memory_max_cells}

    def _build(self, template_X: sp.csr_matrix):
        import scvi

        _quiet()
        adata = _anndata(template_X, self.gene_ids)
        scvi.model.SCVI.setup_anndata(adata)
        return adata, scvi.model.SCVI(adata, **MODEL_KWARGS)

    def n_parameters(self) -> int:
        model = self.model
        if model is None:  # build an untrained one for this many genes
            _, model = self._build(sp.csr_matrix((1, len(self.gene_ids)), dtype=np.float32))
        return int(sum(p.numel() for p in model.module.parameters()))

    def fit(self, train, validation=None, progress=False) -> FitReport:
        """Train on ``train``; scvi-tools holds out 20% of it for the validation ELBO (DESIGN §5),
        so ``validation`` is not used (accepted for the common interface)."""
        import scvi

        start = time.perf_counter()
        self._check_training_source(train)
        n = train.n_obs
        n_train = _check_split(n)
        budget = get_budget(self.budget).scvi
        self._max_epochs, self._min_epochs = budget.max_epochs(n), budget.min_epochs(n)
        scvi.settings.seed = self.seed
        if n > self.in_memory_max_cells:
            _, self.model = self._build(train.read_rows(0, min(n, 2)))
            self.model.train(datamodule=StreamingDataModule(train, self.seed), **self._train_kwargs(budget, progress))
        else:
            _, self.model = self._build(sp.vstack([X for _, X in iter_csr(train, 10_000)], format="csr"))
            # A one-cell last batch breaks BatchNorm in training: drop it (one random cell per
            # epoch) only in that case, as the streaming path does.
            self.model.train(train_size=TRAIN_SIZE, shuffle_set_split=True, batch_size=BATCH_SIZE,
                             datasplitter_kwargs={"drop_last": n_train % BATCH_SIZE == 1},
                             **self._train_kwargs(budget, progress))
        # Keep no copy of the training cells: swap in a one-cell registered stand-in.
        self.model.adata = _stand_in(self.gene_ids)
        self.fit_report = self._fit_report(time.perf_counter() - start)
        return self.fit_report

    def _train_kwargs(self, budget, progress: bool) -> dict:
        """Trainer settings shared by the in-memory and streaming paths."""
        gpu = self.device.startswith("cuda")
        return dict(
            max_epochs=self._max_epochs, accelerator="gpu" if gpu else "cpu",
            devices=[int(self.device.split(":")[1])] if gpu and ":" in self.device else 1,
            plan_kwargs=dict(PLAN_KWARGS), early_stopping=True,
            early_stopping_monitor="elbo_validation",
            early_stopping_patience=budget.early_stopping_patience,
            early_stopping_min_delta=budget.early_stopping_min_delta,
            early_stopping_warmup_epochs=self._min_epochs,  # scvi-tools: no early stop in these epochs
            enable_progress_bar=progress, enable_model_summary=False)

    def _fit_report(self, seconds: float) -> FitReport:
        history = self._history()
        epochs = len(history)
        stop = "early_stopping" if epochs < self._max_epochs else "max_epochs"
        val = history["validation_loss"].dropna()
        return FitReport(
            epochs, int(self.model.trainer.global_step), stop, float(history["train_loss"].iloc[-1]),
            float(val.iloc[-1]) if len(val) else None, seconds, self.device, self.budget, history)

    def _history(self) -> pd.DataFrame:
        h = self.model.history
        train = h["elbo_train"]["elbo_train"].to_numpy(dtype=float)
        val = h.get("elbo_validation")
        val = val["elbo_validation"].to_numpy(dtype=float) if val is not None else np.full(len(train), np.nan)
        lr = h.get("lr-Adam")
        df = pd.DataFrame({"epoch": np.arange(1, len(train) + 1), "step": np.nan,
                           "train_loss": train, "validation_loss": val[: len(train)]})
        if lr is not None:
            df["lr"] = lr.iloc[:, 0].to_numpy()[: len(train)]
        return df

    def embed(self, data, batch_size: int | None = None) -> np.ndarray:
        self._require_fitted()
        columns = self._gene_columns(data.var_names)
        bs = batch_size or 4096
        loader = (_tensors(X[i : i + bs]) for _, X in iter_csr(data, 16_384, columns)
                  for i in range(0, X.shape[0], bs))
        z = self.model.get_latent_representation(dataloader=loader, give_mean=True)
        return np.asarray(z, dtype=np.float32).reshape(-1, self.embedding_dim)

    def _save_native(self, directory: Path) -> None:
        self.model.save(str(directory / "scvi"), save_anndata=False)
        (directory / "scvi_train_state.json").write_text(json.dumps(
            {"max_epochs": self._max_epochs, "min_epochs": self._min_epochs}))

    @classmethod
    def _load_native(cls, directory: Path, meta: dict) -> SCVIModel:
        import scvi

        _quiet()
        model = cls(meta["gene_ids"], meta["budget"], meta["seed"])
        # scvi-tools needs an AnnData with the training genes to restore the registry.
        model.model = scvi.model.SCVI.load(str(directory / "scvi"), adata=_stand_in(model.gene_ids),
                                           accelerator="gpu" if model.device.startswith("cuda") else "cpu")
        state = json.loads((directory / "scvi_train_state.json").read_text())
        model._max_epochs, model._min_epochs = state["max_epochs"], state.get("min_epochs")
        return model
