"""The synthetic SCVI and Geneformer of ``bench_paper_shape.py`` (benchmark only).

Put behind the algorithms' names by ``SCALING_ASSETS_MODEL_OVERRIDE=scvi=paper_workload:SyntheticSCVI,
geneformer=paper_workload:SyntheticGeneformer`` (``scaling_assets.models.get_model_class``), with this
folder on PYTHONPATH. The real ``model_*`` asset calls ``fit`` inside ``step_device``, so the step holds
the lease of its ``needs.py`` estimate on the (fake NVML) GPU while ``fit`` sleeps for a duration drawn
like ``bench_scheduler.py``'s: RELATIVE_COST[algorithm] x (0.5 + 0.5 log N / log N_max) x
``BENCH_PAPER_UNIT_S`` seconds (N: the training cells). ``embed`` returns seeded Gaussian embeddings
of the registry's width, which the real embeddings and MI assets store and estimate on; ``save``/``load``
write a small ``model.json`` the real loader accepts.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from scaling_assets.models.base import FitReport, RepresentationModel

RELATIVE_COST = {"geneformer": 10.0, "scvi": 2.0}  # as bench_scheduler.py: assumptions, not GPU timings


def sleep_s(algorithm: str, n_cells: int) -> float:
    unit = float(os.environ.get("BENCH_PAPER_UNIT_S", "1.0"))
    n_max = float(os.environ.get("BENCH_PAPER_N_MAX", "1100"))
    return RELATIVE_COST[algorithm] * (0.5 + 0.5 * math.log(max(n_cells, 2)) / math.log(n_max)) * unit


def _rows(data) -> int:
    return int(data.n_obs) if hasattr(data, "n_obs") else len(data)


class _Synthetic(RepresentationModel):
    def fit(self, train, validation=None, progress=False, checkpoint_dir=None) -> FitReport:
        # checkpoint_dir: the model asset passes it to the resumable algorithms (Geneformer); nothing to resume here
        start = time.perf_counter()
        time.sleep(sleep_s(self.algorithm, _rows(train)))
        history = pd.DataFrame({"epoch": [1], "step": [1], "train_loss": [1.0], "validation_loss": [1.0]})
        self.fit_report = FitReport(1, 1, "synthetic", 1.0, 1.0, time.perf_counter() - start, self.device,
                                    self.budget, history)
        return self.fit_report

    def embed(self, data, batch_size=None) -> np.ndarray:
        self._require_fitted()
        return np.random.default_rng(self.seed).normal(size=(_rows(data), self.embedding_dim)).astype(np.float32)

    def n_parameters(self) -> int:
        return len(self.gene_ids) * self.embedding_dim

    def hyperparameters(self) -> dict:
        return {"algorithm": self.algorithm, "synthetic": True, "budget": self.budget}

    def _save_native(self, directory: Path) -> None:
        (directory / "synthetic.txt").write_text("synthetic GPU workload (benchmarks/paper_workload.py)\n")

    @classmethod
    def _load_native(cls, directory: Path, meta: dict):
        return cls(meta["gene_ids"], meta["budget"], meta["seed"], device="cpu")


class SyntheticSCVI(_Synthetic):
    algorithm = "scvi"
    embedding_dim = 16


class SyntheticGeneformer(_Synthetic):
    algorithm = "geneformer"
    embedding_dim = 256
