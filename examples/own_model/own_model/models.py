"""A linear autoencoder of log-normalised counts: a model of your own, studied by scaling-assets.

Encoder x -> z = W_e x + b_e (``latent`` wide: the embedding), decoder z -> W_d z + b_d, trained with Adam
on the mean squared reconstruction error of log1p(counts scaled to 10,000 per cell), in mini-batches;
training stops when the validation cells' error has not improved for ``patience`` epochs, and the best
epoch's weights are kept. Weights are saved as safetensors.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from scaling_assets.models import FitReport, RepresentationModel
from scaling_assets.models.base import normalise_log1p

CHUNK = 4_096  # cells read at a time


class LinearAutoencoder(RepresentationModel):
    # What it declares, read when a study is loaded (before any data):
    embedding_dim = 8  # the default width; ``embedding_width`` gives it from the study's params
    reads = "counts"
    dagster_kind = "pytorch"

    def __init__(self, gene_ids, budget="default", seed=0, device=None, *, latent: int = 8, epochs: int = 100,
                 lr: float = 1e-2, patience: int = 5, batch_size: int = 128):
        super().__init__(gene_ids, budget, seed, device)
        self.latent, self.epochs, self.lr, self.patience, self.batch_size = latent, epochs, lr, patience, batch_size
        self.embedding_dim = latent
        self.weights: dict[str, np.ndarray] | None = None  # encoder/decoder weight and bias once fitted

    @classmethod
    def embedding_width(cls, params: dict) -> int:
        return int(params.get("latent", cls.embedding_dim))

    @classmethod
    def gpu_mib(cls, stage: str, n_genes: int, params: dict) -> int:
        # A CUDA context (~768 MiB), the allocator's first blocks (~128 MiB), then Adam's 4 copies of each
        # parameter and a batch of inputs and reconstructions; embedding keeps the weights only.
        parameters = cls.parameter_count(n_genes, params)
        batch = params.get("batch_size", 128) * n_genes * 4 * 3
        tensors = parameters * (16 if stage == "model" else 4) + batch
        return int(math.ceil((896 + 1.25 * tensors / 2**20) / 64) * 64)

    @classmethod
    def parameter_count(cls, n_genes: int, params: dict) -> int:
        k = cls.embedding_width(params)
        return 2 * n_genes * k + k + n_genes

    def hyperparameters(self) -> dict:
        return {"algorithm": self.algorithm, "latent": self.latent, "input": "log1p (10,000 per cell)",
                "loss": "mean squared error", "optimizer": "Adam", "lr": self.lr, "max_epochs": self.epochs,
                "early_stopping_patience": self.patience, "batch_size": self.batch_size, "seed": self.seed}

    def n_parameters(self) -> int:
        return self.parameter_count(len(self.gene_ids), {"latent": self.latent})

    def _log_chunks(self, source):
        """The source's cells, log-normalised, in the model's gene order: dense float32 blocks of CHUNK cells."""
        columns = self._gene_columns(source.var_names)
        for _, X in source.iter_chunks(CHUNK):
            X = normalise_log1p(X)
            yield (X if columns is None else X[:, columns]).toarray().astype(np.float32)

    def _log_counts(self, source) -> np.ndarray:
        return np.vstack([*self._log_chunks(source), np.zeros((0, len(self.gene_ids)), np.float32)])

    def fit(self, train, validation=None, progress=False) -> FitReport:
        import torch

        start = time.perf_counter()
        self._check_training_source(train)
        torch.manual_seed(self.seed)
        x = torch.from_numpy(self._log_counts(train)).to(self.device)
        x_val = torch.from_numpy(self._log_counts(validation)).to(self.device) if validation is not None else x
        genes = x.shape[1]
        encoder, decoder = torch.nn.Linear(genes, self.latent), torch.nn.Linear(self.latent, genes)
        net = torch.nn.Sequential(encoder, decoder).to(self.device)
        optimizer = torch.optim.Adam(net.parameters(), lr=self.lr)
        generator = torch.Generator().manual_seed(self.seed)
        rows, best, best_state, waited = [], math.inf, None, 0
        for epoch in range(1, self.epochs + 1):
            net.train()
            losses = []
            for idx in torch.randperm(len(x), generator=generator).split(self.batch_size):
                loss = torch.nn.functional.mse_loss(net(x[idx]), x[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            net.eval()
            with torch.no_grad():
                val = torch.nn.functional.mse_loss(net(x_val), x_val).item()
            rows.append({"epoch": epoch, "step": epoch * math.ceil(len(x) / self.batch_size),
                         "train_loss": float(np.mean(losses)), "validation_loss": val})
            if val < best - 1e-6:
                best, waited = val, 0
                best_state = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
            else:
                waited += 1
                if waited >= self.patience:
                    break
        self.weights = best_state
        history = pd.DataFrame(rows)
        stop = "early_stopping" if len(rows) < self.epochs else "max_epochs"
        self.fit_report = FitReport(len(rows), int(history["step"].iloc[-1]), stop, rows[-1]["train_loss"], best,
                                    time.perf_counter() - start, self.device, self.budget, history)
        return self.fit_report

    def embed(self, data, batch_size: int | None = None) -> np.ndarray:
        self._require_fitted()
        w, b = self.weights["0.weight"], self.weights["0.bias"]  # the encoder (first layer)
        parts = [x @ w.T + b for x in self._log_chunks(data)]
        return np.vstack(parts).astype(np.float32) if parts else np.zeros((0, self.latent), np.float32)

    def _save_native(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        save_file(self.weights, str(directory / "weights.safetensors"))

    @classmethod
    def _load_native(cls, directory: Path, meta: dict) -> LinearAutoencoder:
        from safetensors.numpy import load_file

        model = cls(meta["gene_ids"], meta["budget"], meta["seed"], **meta["params"])
        model.weights = load_file(str(directory / "weights.safetensors"))
        return model
