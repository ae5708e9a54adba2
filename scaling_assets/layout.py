"""Where a study's files live: the one module that knows folder and file names under the study root.

One folder per asset partition; the folder is the unit of replacement (the IO manager renames a
staged folder into place, ``assets/storage.py``)::

    <root>/<dataset>/raw_counts/all/               counts.h5ad, summary.json
    <root>/<dataset>/split/s=<seed>/               split.npz
    <root>/<dataset>/pool_counts/s=<seed>/         pool.h5ad, raw_rows.npy, fingerprint.json, summary.json
    <root>/<dataset>/eval_counts/s=<seed>/         q=<q>/test.h5ad, q=<q>/validation.h5ad, summary.json
    <root>/<dataset>/pca_genes/s=<seed>/           genes.npy, summary.json
    <root>/<dataset>/gene_medians/s=<seed>/        medians.npy, dictionary.json
    <root>/<dataset>/pool_corpus/q=<q>_s=<seed>/   corpus/, fingerprint.json, summary.json
    <root>/<dataset>/eval_corpus/q=<q>_s=<seed>/   test/, validation/, summary.json
    <root>/<dataset>/train_counts/<setting>/       record.json (a row range of the seed's pool)
    <root>/<dataset>/train_corpus/<setting>/       record.json (a row range of the pool corpus)
    <root>/<dataset>/model_<algorithm>/<setting>/  model/, history.csv, loss.png (iterative fits), summary.json,
                                                   fingerprint.json
    <root>/<dataset>/embeddings_<algorithm>/<setting>/  embeddings.npz, fingerprint.json
    <root>/<dataset>/mi_<algorithm>/<setting>/     record.json
    <root>/results/<table>/all/                    table.parquet, table.csv
    <root>/results/scaling_plots/all/              scaling_<dataset>_<signal>.png
    <root>/.staging/                               work in progress (assets/storage.py: stage_dir)
    <root>/.work/<dataset>/<asset>/<setting>/      training checkpoints kept across a step's attempts
    <root>/.study-run.lock                         held by the running ``study run`` of this study

``<setting>`` is ``n=<cells>_q=<quality>_s=<seed>``. The files inside a pool, a corpus or a model
folder are the data layer's and the models' own formats (``data/pools.py``, ``data/corpus.py``,
``models/``). Nothing here imports Dagster, so the run coordinator can read the layout too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scaling_assets.study.spec import Study, format_quality

STAGING = ".staging"
WORK = ".work"
STUDY_LOCK = ".study-run.lock"
UNPARTITIONED = "all"
RESULTS = "results"  # the study-wide group: tables and plots

COUNTS_FILE = "counts.h5ad"
SUMMARY_FILE = "summary.json"
RECORD_FILE = "record.json"  # an asset that returns a dict (a row range, an MI result)
TABLE_FILE = "table"  # + .parquet and .csv: an asset that returns a DataFrame
SPLIT_FILE = "split.npz"
PCA_GENES_FILE = "genes.npy"
MEDIANS_FILE = "medians.npy"
DICTIONARY_FILE = "dictionary.json"
EVAL_SETS = ("test", "validation")  # the held-out sets, in eval_counts (h5ad) and eval_corpus (folders)
MODEL_DIR = "model"  # the model's own save format (models/)
CORPUS_DIR = "corpus"  # a pool corpus partition's corpus (data/corpus.py)
EMBEDDINGS_FILE = "embeddings.npz"
HISTORY_FILE = "history.csv"
LOSS_PLOT = "loss.png"
RESULT_TABLES = ("mi_table", "parameter_table", "hyperparameter_table", "noise_law_fits", "size_law_fits")


def partition_dir(root: Path | str, asset_key_path: list[str], partition_key: str | None) -> Path:
    """``<root>/<dataset>/<asset>/<partition>``; unpartitioned assets use the folder ``all``."""
    return Path(root).joinpath(*asset_key_path, partition_key or UNPARTITIONED)


def parse_partition_dir(root: Path | str, folder: Path | str) -> tuple[list[str], str | None]:
    """Inverse of ``partition_dir``: the asset key path and partition key (None when unpartitioned)."""
    *key, partition = Path(folder).relative_to(root).parts
    if not key:
        raise ValueError(f"{folder}: not an asset partition folder under {root}")
    return key, None if partition == UNPARTITIONED else partition


def stale_folders(root: Path | str, expected: dict[tuple[str, ...], set[str | None]]) -> list[Path]:
    """Folders under the study root of asset partitions the study no longer has (grid points, assets
    or datasets removed from the study file): an asset folder or a whole dataset folder when none of
    it is expected, else the partition folders; training checkpoints under ``.work`` likewise.
    ``expected``: asset key path -> its partition keys (None: unpartitioned)."""
    root = Path(root)
    groups = {key[0] for key in expected}
    stale: list[Path] = []
    for base in (root, root / WORK):
        if not base.is_dir():
            continue
        for group in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if group.name not in groups:
                stale.append(group)
                continue
            for asset in sorted(p for p in group.iterdir() if p.is_dir()):
                keys = expected.get((group.name, asset.name))
                if keys is None:
                    stale.append(asset)
                    continue
                stale += [part for part in sorted(asset.iterdir()) if part.is_dir()
                          and (None if part.name == UNPARTITIONED and base == root else part.name) not in keys]
    return stale


def staging_root(root: Path | str) -> Path:
    return Path(root) / STAGING


def work_dir(root: Path | str, asset_key_path: list[str], partition_key: str) -> Path:
    """Checkpoints of one partition, under the study root so that every node of a cluster sees them."""
    return Path(root).joinpath(WORK, *asset_key_path, partition_key)


def eval_dir(eval_counts: Path, quality: float) -> Path:
    """The folder of one quality inside a seed's ``eval_counts`` partition."""
    return Path(eval_counts) / f"q={format_quality(quality)}"


def eval_counts_file(eval_counts: Path, quality: float, which: str = "test") -> Path:
    """A held-out set (``test`` or ``validation``) at one quality: an h5ad of thinned counts."""
    if which not in EVAL_SETS:
        raise ValueError(f"held-out set {which!r}; expected one of {EVAL_SETS}")
    return eval_dir(eval_counts, quality) / f"{which}.h5ad"


def eval_corpus_dir(eval_corpus: Path, which: str = "test") -> Path:
    """A held-out set of an ``eval_corpus`` partition: a corpus folder (``data/corpus.py``)."""
    if which not in EVAL_SETS:
        raise ValueError(f"held-out set {which!r}; expected one of {EVAL_SETS}")
    return Path(eval_corpus) / which


def table_file(folder: Path, suffix: str = ".parquet") -> Path:
    return Path(folder) / f"{TABLE_FILE}{suffix}"


def plot_name(dataset: str, signal: str) -> str:
    return f"scaling_{dataset}_{signal}.png"


def result_paths(study: Study) -> dict[str, Path]:
    """The study's tables (Parquet; a CSV beside each) and its plots, one per (dataset, signal)."""
    results = lambda name: partition_dir(study.root, [RESULTS, name], None)  # noqa: E731
    return {**{name: table_file(results(name)) for name in RESULT_TABLES},
            **{f"plot_{d}_{signal}": results("scaling_plots") / plot_name(d, signal)
               for d, config in study.datasets.items() for signal in config.signal_names}}


def dataset_gene_count(study: Study, dataset: str) -> int | None:
    """Genes of a dataset: the simulated count, else what its materialised raw_counts recorded."""
    config = study.datasets[dataset]
    if config.genes:
        return config.genes
    summary = partition_dir(study.root, [dataset, "raw_counts"], None) / SUMMARY_FILE
    try:
        return int(json.loads(summary.read_text())["genes"])
    except (OSError, KeyError, ValueError):
        return None  # not ingested yet


# Typed handles of partition folders: an asset input annotated with one gets it from the IO manager
# (assets/storage.py), and reads files through its properties instead of naming them.


@dataclass(frozen=True)
class PartitionFolder:
    folder: Path

    @property
    def summary(self) -> Path:
        return self.folder / SUMMARY_FILE


@dataclass(frozen=True)
class EvalCountsFolder(PartitionFolder):
    """A seed's held-out counts, one subfolder per quality."""

    def held_out(self, quality: float, which: str = "test") -> Path:
        return eval_counts_file(self.folder, quality, which)


@dataclass(frozen=True)
class EvalCorpusFolder(PartitionFolder):
    def held_out(self, which: str = "test") -> Path:
        return eval_corpus_dir(self.folder, which)


@dataclass(frozen=True)
class ModelFolder(PartitionFolder):
    @property
    def model(self) -> Path:
        return self.folder / MODEL_DIR

    @property
    def history(self) -> Path:
        return self.folder / HISTORY_FILE

    @property
    def loss_plot(self) -> Path:
        return self.folder / LOSS_PLOT


@dataclass(frozen=True)
class EmbeddingsFolder(PartitionFolder):
    @property
    def embeddings(self) -> Path:
        return self.folder / EMBEDDINGS_FILE


@dataclass(frozen=True)
class TableFolder(PartitionFolder):
    @property
    def parquet(self) -> Path:
        return table_file(self.folder)

    @property
    def csv(self) -> Path:
        return table_file(self.folder, ".csv")
