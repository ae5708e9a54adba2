"""Stand-ins for SCVI and Geneformer that sleep instead of training: the GPU workload of
``benchmarks/bench_paper_shape.py`` and of the tests that need a GPU step to last (never used by a study).

Put behind the algorithms' names by ``SCALING_ASSETS_MODEL_OVERRIDE`` (``OVERRIDE`` below;
``scaling_assets.models.get_model_class``). The real ``model_*`` asset calls ``fit`` inside
``step_device``, so the step holds the lease of its ``needs.py`` estimate on the (fake NVML) GPU while
``fit`` sleeps for a duration drawn like ``bench_scheduler.py``'s: RELATIVE_COST[algorithm] x
(0.5 + 0.5 log N / log N_max) x ``BENCH_PAPER_UNIT_S`` seconds (N: the training cells), or, with
``BENCH_PAPER_DURATIONS=h200``, for what the paper budget's fit at N took on a real H200 (``h200_fit_s``,
from the ``benchmarks/gpu_check.py`` report named by ``BENCH_PAPER_H200_CHECK``). ``embed`` returns seeded
Gaussian embeddings of the registry's width, which the real embeddings and MI assets store and estimate
on; ``save``/``load`` write a small ``model.json`` the real loader accepts.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from scaling_assets.models.base import FitReport, RepresentationModel
from scaling_assets.models.budget import get_budget

RELATIVE_COST = {"geneformer": 10.0, "scvi": 2.0}  # as bench_scheduler.py: assumptions, not GPU timings
OVERRIDE = ("scvi=scaling_assets.models.stand_ins:SyntheticSCVI,"
            "geneformer=scaling_assets.models.stand_ins:SyntheticGeneformer")


DURATIONS_ENV = "BENCH_PAPER_DURATIONS"  # "scaled" (default) or "h200"
H200_CHECK_ENV = "BENCH_PAPER_H200_CHECK"  # a gpu_check.py report of the H200 (benchmarks/results/)


@functools.lru_cache(maxsize=1)
def _h200_runs() -> tuple[dict[int, float], float]:
    """SCVI's measured fit seconds by N (median over tasks and qualities) and Geneformer's seconds a step."""
    results = json.loads(Path(os.environ[H200_CHECK_ENV]).read_text())["results"]
    by_n: dict[int, list[float]] = {}
    for r in results:
        if r["kind"] == "scvi":
            by_n.setdefault(int(r["cells"]), []).append(float(r["fit_s"]))
    geneformer = next(r for r in results if r["kind"] == "geneformer")
    return {n: float(np.median(v)) for n, v in sorted(by_n.items())}, geneformer["fit_s"] / geneformer["steps"]


def h200_fit_s(algorithm: str, n_cells: int) -> float:
    """A paper-budget fit's seconds on the H200 (the report ``BENCH_PAPER_H200_CHECK`` names). SCVI: the
    measured fits, interpolated in log N and clamped to the measured 100-25,600 cells. Geneformer: its shortest paper
    run, which early stopping cannot end before (patience + 1) evaluations (6,000 steps), at the
    measured seconds a 64-cell x 512-token step (1,000 genes; 20,000 genes took 3.8 times as long)."""
    scvi, geneformer_step_s = _h200_runs()
    if algorithm == "geneformer":
        b = get_budget("paper").geneformer
        return (b.early_stopping_patience + 1) * b.eval_steps * geneformer_step_s
    ns = np.log(list(scvi))
    return float(np.interp(math.log(max(n_cells, 2)), ns, list(scvi.values())))


def sleep_s(algorithm: str, n_cells: int) -> float:
    if os.environ.get(DURATIONS_ENV, "scaled") == "h200":
        return h200_fit_s(algorithm, n_cells)
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
        (directory / "synthetic.txt").write_text("synthetic GPU workload (scaling_assets/models/stand_ins.py)\n")

    @classmethod
    def _load_native(cls, directory: Path, meta: dict):
        return cls(meta["gene_ids"], meta["budget"], meta["seed"], device="cpu")


class SyntheticSCVI(_Synthetic):
    algorithm = "scvi"
    embedding_dim = 16


class SyntheticGeneformer(_Synthetic):
    algorithm = "geneformer"
    embedding_dim = 256
