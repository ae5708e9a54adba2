"""Named asset jobs: what a run launched from the UI or ``dagster job launch|backfill`` is called.

One job per dataset and partitioning level, because a Dagster asset job has one partitions definition:

    cite_raw             raw_counts                                    (unpartitioned)
    cite_by_seed         split, pool_counts, eval_counts, ...           s=42
    cite_by_quality      eval_corpus, pool_corpus (Geneformer)          q=0.1_s=42
    cite_by_setting      train_counts -> model_* -> embeddings_* -> mi_*   n=300_q=0.1_s=42
    results              the study-wide tables and plots

Every job carries the study tag and the dataset's gene count, so the GPU-aware coordinator sizes
its runs from the real number of genes. The main job (``scaling-assets study run``) submits an
asset backfill instead, which Dagster runs through its own asset job; see ``scaling_assets.study.backfills``.
"""

from __future__ import annotations

from collections import defaultdict

from dagster import AssetsDefinition, define_asset_job

from scaling_assets.layout import dataset_gene_count
from scaling_assets.gpu.needs import TAG_N_GENES, TAG_STUDY
from scaling_assets.study.spec import Study

# partition-key shape -> job suffix
_LEVELS = (("n=", "by_setting"), ("q=", "by_quality"), ("s=", "by_seed"))


def _level(assets_def: AssetsDefinition) -> str:
    partitions = assets_def.partitions_def
    if partitions is None:
        return "raw"
    first = partitions.get_partition_keys()[0]
    return next(suffix for prefix, suffix in _LEVELS if first.startswith(prefix))


def study_jobs(study: Study, assets: list) -> list:
    """The named jobs of a study's assets (see the module docstring)."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    partitions: dict[tuple[str, str], list] = defaultdict(list)
    for a in assets:
        if not isinstance(a, AssetsDefinition):
            continue
        for key in a.keys:
            dataset = key.path[0]
            if dataset not in study.datasets:
                continue
            level = _level(a)
            if a.partitions_def not in partitions[(dataset, level)]:
                partitions[(dataset, level)].append(a.partitions_def)
            variant = partitions[(dataset, level)].index(a.partitions_def)
            # a level with two grids (an algorithm with its own grid) gets a second job: <name>_2
            groups[(dataset, level + (f"_{variant + 1}" if variant else ""))].append(key)
    jobs = []
    for (dataset, level), keys in sorted(groups.items()):
        tags = {TAG_STUDY: study.name}
        genes = dataset_gene_count(study, dataset)
        if genes:
            tags[TAG_N_GENES] = str(genes)
        jobs.append(define_asset_job(
            f"{dataset}_{level}", selection=keys, tags=tags,
            description=f"{dataset}: {', '.join(sorted({k.path[-1] for k in keys}))}",
        ))
    results = [k for a in assets if isinstance(a, AssetsDefinition) for k in a.keys if k.path[0] not in study.datasets]
    if results:
        jobs.append(define_asset_job("results", selection=results, tags={TAG_STUDY: study.name},
                                     description="Study-wide MI, parameter and hyperparameter tables, law fits, plots."))
    return jobs
