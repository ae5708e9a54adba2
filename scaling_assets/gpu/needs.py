"""The run tags that carry a run's GPU need, and each asset's need on a GPU.

``GPU_NEEDS`` maps an asset name (``<stage>_<algorithm>``) of the built-in models to a function
``n_genes -> MiB`` (estimates and how they were derived: ``scaling_assets.models.spec``); assets not
listed need no GPU. A study's own models declare theirs (``ModelEntry.gpu_mib``): pass the study's
``models`` to size their runs. A run's need is the max over its assets (steps run one at a time per
device lease).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from scaling_assets.models.registry import BUILTIN, ModelEntry

TAG_GPU_NEED = "scaling_assets/gpu_need_mib"
TAG_DEVICE = "scaling_assets/device"
TAG_PRIORITY = "dagster/priority"  # Dagster's own priority tag (higher dequeues first)
TAG_N_GENES = "scaling_assets/n_genes"  # optional: lets the coordinator size a run it must tag
TAG_STUDY = "scaling_assets/study"
TAG_CPU_SLOT = "scaling_assets/cpu_slot"  # "cpu": counts against the coordinator's max_cpu_runs
TAG_THREADS = "scaling_assets/threads"  # torch/BLAS threads of the run's steps
INPUT_PARTS = ("pool", "train", "eval")  # <part>_<what a model reads>: the assets that feed a model


GPU_NEEDS: dict[str, Callable[..., int]] = {
    f"{stage}_{m.name}": fn for m in BUILTIN.values() for stage, fn in m.gpu_mib.items()}


def asset_need_mib(asset_name: str, n_genes: int, models: Mapping[str, ModelEntry] = BUILTIN) -> int:
    """MiB one asset's step needs on a GPU (0: CPU-only asset)."""
    stage, _, algorithm = _short(asset_name).partition("_")
    entry = models.get(algorithm)
    return 0 if entry is None else entry.gpu_need_mib(stage, n_genes)


def run_priority(asset_names: Iterable[str], models: Mapping[str, ModelEntry] = BUILTIN) -> int:
    """A run's queue priority (Dagster's ``dagster/priority``): the cost rank of the slowest model it
    trains or writes the training input of (``pool_|train_|eval_`` + what the model reads, e.g.
    Geneformer's corpora), so the longest chains start first (0: neither)."""
    names = {_short(name) for name in asset_names}
    return max((m.cost_rank for m in models.values()
                if f"model_{m.name}" in names or any(f"{part}_{m.reads}" in names for part in INPUT_PARTS)),
               default=0)


def gpu_need_mib(asset_names: Iterable[str], n_genes: int, models: Mapping[str, ModelEntry] = BUILTIN) -> int:
    """A run's GPU need: the max over its assets (0 when none needs a GPU)."""
    return max((asset_need_mib(name, n_genes, models) for name in asset_names), default=0)


def _short(asset_name: str) -> str:
    # accept "model_scvi", an AssetKey's "prefix/model_scvi" or AssetKey.to_user_string()
    return asset_name.rsplit("/", 1)[-1]
