"""What a run makes, in words: the tags the run coordinator gives every run it queues (no Dagster here).

A backfill's runs are all Dagster's anonymous asset job, so the UI's run list tells them apart by tags.
``TAG_RUN`` says what the run makes, short and whole, each name once:

    cite n=800 q=1 s=42: pca, random_projection, scvi      a setting's chains (training set included)
    4 datasets n=800 q=1 s=42: scvi                        the same chain of several datasets' settings
    cite s=42: split, pool_counts, eval_counts, ...        shared data, in pipeline order
    cite n=800 q=1 s=42: scvi (embeddings, mi)             part of a chain (a run resumed from its failure)

``TAG_STEPS`` lists every asset of the run, per dataset (datasets with the same steps together), so the
label can stay short without hiding anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from scaling_assets.layout import RESULT_TABLES
from scaling_assets.models.registry import ALGORITHMS

TAG_RUN = "scaling_assets/run"
TAG_STEPS = "scaling_assets/steps"
CHAIN = ("model", "embeddings", "mi")  # an algorithm's steps: <stage>_<algorithm>
TRAINING_SETS = ("train_counts", "train_corpus")  # a setting's input, named only where no chain runs
PIPELINE_ORDER = ("raw_counts", "split", "pool_counts", "eval_counts", "gene_medians", "pca_genes", "eval_corpus",
                  "pool_corpus", *TRAINING_SETS, *CHAIN)
# a study's partition keys: s=42, q=0.1_s=42, n=800_q=1_s=42
_PARTITION = re.compile(r"[a-z]+=[^_\s]+(_[a-z]+=[^_\s]+)*")


def _split(name: str) -> tuple[str, str]:
    """(dataset, asset) of ``"cite/model_pca"``."""
    dataset, _, asset = name.rpartition("/")
    return dataset, asset


def _chain_step(asset: str) -> tuple[str, str] | None:
    """(algorithm, stage) of ``model_pca``, ``embeddings_nmf16``, ``mi_pca`` (any model, a study's own too);
    None for other assets (``mi_table`` is a results table)."""
    stage, _, algorithm = asset.partition("_")
    return (algorithm, stage) if stage in CHAIN and algorithm and asset not in RESULT_TABLES else None


def _order(asset: str) -> tuple[int, int, str]:
    """Built-in models in the registry's order, then a study's own, each chain in pipeline order."""
    step = _chain_step(asset)
    stem = step[1] if step else asset
    rank = PIPELINE_ORDER.index(stem) if stem in PIPELINE_ORDER else len(PIPELINE_ORDER)
    model = -1 if step is None else ALGORITHMS.index(step[0]) if step[0] in ALGORITHMS else len(ALGORITHMS)
    return (model, rank, asset)


def run_label(asset_names: Iterable[str], partition: str | None) -> str:
    """``"<dataset, or 'K datasets'> <partition>: <what it makes>"`` (module doc); never cut."""
    names = list(asset_names)
    datasets = sorted({_split(name)[0] for name in names} - {""})  # "": an asset key without a prefix
    assets = sorted({_split(name)[1] for name in names}, key=_order)
    steps_of: dict[str, list[str]] = {}
    others = []
    for asset in assets:
        step = _chain_step(asset)
        if step:
            steps_of.setdefault(step[0], []).append(step[1])
        elif not (asset in TRAINING_SETS and any(_chain_step(a) for a in assets)):
            others.append(asset)
    chains = [algorithm if len(stages) == len(CHAIN) else f"{algorithm} ({', '.join(stages)})"
              for algorithm, stages in steps_of.items()]
    where = [datasets[0] if len(datasets) == 1 else f"{len(datasets)} datasets"] if datasets else []
    if partition:
        where.append(partition.replace("_", " ") if _PARTITION.fullmatch(partition) else partition)
    what = ", ".join(others + chains)
    return f"{' '.join(where)}: {what}" if where else what


def run_steps(asset_names: Iterable[str]) -> str:
    """Every asset of the run: ``"cite, lineage: train_counts, model_pca, ...; spatial: ..."``."""
    by_dataset: dict[str, list[str]] = {}
    for name in sorted(set(asset_names)):
        dataset, asset = _split(name)
        by_dataset.setdefault(dataset, []).append(asset)
    groups: dict[tuple[str, ...], list[str]] = {}
    for dataset, assets in by_dataset.items():
        groups.setdefault(tuple(sorted(assets, key=_order)), []).append(dataset)
    return "; ".join(f"{', '.join(datasets)}: {', '.join(assets)}" for assets, datasets in groups.items())
