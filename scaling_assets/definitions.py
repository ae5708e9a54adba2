"""The Dagster code location: every asset of the study named by $SCALING_ASSETS_STUDY (default: ``default``).

    dagster dev -w workspace.yaml
    dagster asset materialize -m scaling_assets --select 'cite/raw_counts'

Definitions load in seconds even for the `paper` grid: asset bodies import the heavy libraries
(torch, scvi-tools, transformers) only when they run. Every process that loads this module (the CLI, the
daemon, run workers, the webserver) reads the same study file through $SCALING_ASSETS_STUDY, so the
study's own models (its `models:` block, installed entry points; ``models/user.py``) resolve to the same
classes, parameters and code versions in each.
"""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from scaling_assets.assets.embeddings import embeddings_asset
from scaling_assets.assets.eval_sets import eval_corpus_asset, eval_counts_asset, gene_medians_asset
from scaling_assets.assets.information import mi_asset
from scaling_assets.assets.jobs import study_jobs
from scaling_assets.assets.models import model_asset
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.assets.raw import raw_counts_asset
from scaling_assets.assets.results import results_assets
from scaling_assets.assets.splits import split_asset
from scaling_assets.assets.storage import StudyIOManager
from scaling_assets.assets.training_sets import (
    pca_genes_asset,
    pool_corpus_asset,
    pool_counts_asset,
    train_corpus_asset,
    train_counts_asset,
)
from scaling_assets.assets.versions import with_code_versions
from scaling_assets.data.h5ad_io import tune_allocator
from scaling_assets.study.spec import Study, load_study

# Chunked CSR reads allocate tens of MB per chunk; letting glibc reuse those buffers instead of
# mapping fresh pages each time doubles row-range throughput (benchmarks/bench_data_io.py).
tune_allocator()


def dataset_assets(ds: DatasetAssets) -> list:
    """The pipeline of one dataset, in order: raw -> split -> eval sets -> training sets -> models -> MI."""
    assets = [raw_counts_asset(ds), split_asset(ds), pool_counts_asset(ds), eval_counts_asset(ds),
              train_counts_asset(ds)]
    models = ds.study.models.values()  # each algorithm's entry: built in, or the study's own
    if any(e.reads_corpus for e in models):
        assets += [gene_medians_asset(ds), eval_corpus_asset(ds)]
    if any(e.reads_corpus and not e.pretrained for e in models):
        assets += [pool_corpus_asset(ds), train_corpus_asset(ds)]
    if any(e.hvg_genes for e in models):
        assets.append(pca_genes_asset(ds))
    for entry in models:
        assets += [model_asset(ds, entry), embeddings_asset(ds, entry), mi_asset(ds, entry)]
    return assets


def build_definitions(study: Study) -> Definitions:
    assets = []
    for config in study.datasets.values():
        assets += dataset_assets(DatasetAssets(study, config))
    assets = with_code_versions(study, assets + results_assets(study))
    # One process per run, its steps one after another: concurrency comes from the run queue running
    # several runs at once (each step in its own process would pay torch's import per step).
    return Definitions(assets=assets, jobs=study_jobs(study, assets), executor=in_process_executor,
                       resources={"io_manager": StudyIOManager(root=str(study.root))})


def load_definitions(study: str | None = None) -> Definitions:
    return build_definitions(load_study(study))


defs = load_definitions()
