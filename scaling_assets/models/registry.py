"""The one list of the study's models: what each reads, how it is shown, what it needs on a GPU.

Adding an algorithm means one entry here (and its model class); the asset graph, the GPU needs, the
planner and the study checks read this list. Nothing here imports torch or Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from scaling_assets.models import spec

COUNTS, CORPUS = "counts", "corpus"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_class: str  # "module:Class", imported only when a model is built
    reads: str  # COUNTS (thinned count rows) or CORPUS (rank-value tokens)
    dagster_kind: str  # the kind badge on the model asset
    embedding_dim: int
    # GPU MiB from the gene count, per stage ("model", "embeddings", "mi"); a stage not listed needs none
    gpu_mib: dict[str, Callable[[int], int]] = field(default_factory=dict)
    parameters: Callable[[int], int] | None = None  # from the gene count
    resumable: bool = False  # keeps training checkpoints across attempts (hours of training)
    # training cost rank: runs that train slower models are dequeued first, so the longest run does
    # not start last and run alone at the end of a study
    cost_rank: int = 0
    hvg_genes: bool = False  # fitted on the seed's highly variable genes (the pca_genes asset)
    # False when the embedding does not depend on the training cells (a random projection): its MI is the
    # same at every N, so the laws fit it once per (dataset, signal), pooled over N (metrics/laws.py)
    learns_from_cells: bool = True


MODELS: dict[str, ModelEntry] = {e.name: e for e in (
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
ALGORITHMS = tuple(MODELS)


def reads_corpus(algorithm: str) -> bool:
    return MODELS[algorithm].reads == CORPUS
