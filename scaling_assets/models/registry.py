"""What the platform knows about a model before it builds one: its ``ModelEntry``.

An entry says what the model reads, how wide its embedding is, what it needs on a GPU and how many
parameters it holds for a gene count, and which class builds it with which ``params``. The asset
factories, the planner, the GPU needs, the code versions and the tables read the entry they are given;
nothing looks a model up again by name.

The built-in four are written out here, so that definitions load without importing torch, scvi-tools
or transformers. A user's own models (a study file's ``models:`` block, an installed package's
``scaling_assets.models`` entry point) get their entries from the class's own declarations
(``scaling_assets.models.user``). Nothing here imports torch or Dagster.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scaling_assets.models import spec

if TYPE_CHECKING:
    from scaling_assets.models.base import RepresentationModel

COUNTS, CORPUS = "counts", "corpus"
# The cell count in a frozen (pretrained) model's partition keys: it learns from none of the study's
# cells, so it has no size axis and runs once per quality and seed, at n=0.
FROZEN_CELLS = 0
GPU_STAGES = ("model", "embeddings", "mi")

# Benchmarks only (benchmarks/bench_paper_shape.py): "scvi=module:Class,geneformer=module:Class" puts
# another class behind a built-in's name (a synthetic GPU workload instead of training). Unset, as in
# every real study, the entry's class is used.
MODEL_OVERRIDE_ENV = "SCALING_ASSETS_MODEL_OVERRIDE"


def _override(name: str) -> str | None:
    for item in filter(None, os.environ.get(MODEL_OVERRIDE_ENV, "").split(",")):
        algorithm, _, target = item.partition("=")
        if algorithm.strip() == name:
            return target.strip()
    return None


def import_object(path: str) -> Any:
    """``"package.module:Name"`` (or ``"package.module.Name"``) imported."""
    module, sep, name = path.partition(":")
    if not sep:
        module, _, name = path.rpartition(".")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ModelEntry:
    name: str  # the algorithm's name in the study: asset keys model_<name>, tables, plots
    model_class: str | type  # "module:Class" (imported only when a model is built) or the class itself
    reads: str  # COUNTS (thinned count rows) or CORPUS (rank-value tokens)
    dagster_kind: str  # the kind badge on the model asset
    embedding_dim: int
    # GPU MiB from the gene count, per stage ("model", "embeddings", "mi"); a stage not listed needs none
    gpu_mib: Mapping[str, Callable[[int], int]] = field(default_factory=dict)
    parameters: Callable[[int], int] | None = None  # from the gene count
    resumable: bool = False  # keeps training checkpoints across attempts (hours of training)
    # training cost rank: runs that train slower models are dequeued first, so the longest run does
    # not start last and run alone at the end of a study
    cost_rank: int = 0
    hvg_genes: bool = False  # fitted on the seed's highly variable genes (the pca_genes asset)
    # False when the embedding does not depend on the training cells (a random projection, a frozen
    # checkpoint): its MI is the same at every N, so the laws fit it once per (dataset, signal), pooled over
    # N (metrics/laws.py)
    learns_from_cells: bool = True
    # True: a pretrained model evaluated frozen: fitted on none of the study's cells, no size axis
    # (its partitions are n=0 at each quality and seed)
    pretrained: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)  # keyword arguments of the class (a study's `params`)
    origin: str = "built-in"  # where it was registered, for `study show` and error messages
    # what identifies the model's inputs beyond its params and code (a checkpoint's files), for its code version
    fingerprint: str = ""

    @property
    def reads_corpus(self) -> bool:
        return self.reads == CORPUS

    def model_cls(self) -> type[RepresentationModel]:
        if isinstance(self.model_class, type):
            return self.model_class
        return import_object(_override(self.name) or self.model_class)

    def build(self, gene_ids, budget: str = "default", seed: int = 0, device: str | None = None) -> RepresentationModel:
        """An unfitted model for these genes, named after this entry."""
        model = self.model_cls()(gene_ids, budget=budget, seed=seed, device=device, **dict(self.params))
        model.algorithm = self.name  # a class registered twice (other params) saves under each name
        return model

    def load(self, directory: str | os.PathLike) -> RepresentationModel:
        """The model saved in ``directory``; refuses a directory holding another algorithm's model."""
        return self.model_cls().load(directory, algorithm=self.name)

    def gpu_need_mib(self, stage: str, n_genes: int) -> int:
        """MiB a stage of this model needs on a GPU for ``n_genes`` genes (0: it runs on the CPU)."""
        fn = self.gpu_mib.get(stage)
        if fn is None:
            return 0
        if n_genes <= 0:
            raise ValueError(f"n_genes must be positive, got {n_genes}")
        return int(fn(n_genes))


BUILTIN: dict[str, ModelEntry] = {e.name: e for e in (
    ModelEntry("pca", "scaling_assets.models.pca:PCAModel", COUNTS, "scikitlearn", spec.PCA_COMPONENTS,
               gpu_mib={"mi": spec.lmi_train_mib}, hvg_genes=True,
               parameters=lambda genes: min(genes, spec.PCA_HVG) * spec.PCA_COMPONENTS),
    ModelEntry("random_projection", "scaling_assets.models.random_projection:RandomProjectionModel", COUNTS,
               "scikitlearn", 16, gpu_mib={"mi": spec.lmi_train_mib}, parameters=lambda genes: genes * 16,
               learns_from_cells=False),
    ModelEntry("scvi", "scaling_assets.models.scvi:SCVIModel", COUNTS, "pytorch", 16,
               gpu_mib={"model": spec.scvi_train_mib, "embeddings": spec.scvi_embed_mib, "mi": spec.lmi_train_mib},
               parameters=spec.scvi_parameters, cost_rank=1),
    ModelEntry("geneformer", "scaling_assets.models.geneformer:GeneformerModel", CORPUS, "pytorch", 256,
               gpu_mib={"model": spec.geneformer_train_mib, "embeddings": spec.geneformer_embed_mib,
                        "mi": spec.lmi_train_mib},
               parameters=spec.geneformer_parameters, resumable=True, cost_rank=2),
)}
MODELS = BUILTIN  # the built-in four (a study's own models are in ``Study.models``)
ALGORITHMS = tuple(BUILTIN)
