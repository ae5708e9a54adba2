"""Stage 4: the training data of one setting: the first N cells of the seeded pool order, thinned to q.

Sizes are nested (the N-cell sample is a prefix of the same permutation) and thinning depends only
on the raw cell index, so a cell looks the same in every sample that contains it (DESIGN §3).
"""


from pathlib import Path

from dagster import AssetExecutionContext, Output, asset

from scaling_assets.assets.common import COUNTS_FILE, count_metadata, new_stage, show_progress, timed, write_summary
from scaling_assets.assets.eval_sets import thinning, tokenize_counts
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.study import parse_setting_key

CORPUS_DIR = "corpus"
PCA_GENES_FILE = "genes.npy"


def train_counts_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("train_counts"),
        group_name=ds.name,
        partitions_def=ds.settings,
        ins={"raw": ds.raw_in(), "split": ds.split_in("setting")},
        kinds={"h5ad"},
        description="Training cells of the setting: first N of the seeded pool order, thinned to quality q.",
    )
    def train_counts(context: AssetExecutionContext, raw: Path, split: Path):
        from scaling_assets.assets.splits import load_split
        from scaling_assets.data.h5ad_io import CsrReader, write_rows

        setting = parse_setting_key(context.partition_key)
        rows = load_split(split).train_rows(setting.cells)
        stage = new_stage(ds.study, "train")
        with CsrReader(raw / COUNTS_FILE) as reader, timed() as elapsed:
            summary = write_rows(reader, rows, stage / COUNTS_FILE, transform=thinning(setting.quality, setting.seed),
                                 chunk_size=ds.study.chunk_size, progress=show_progress())
        summary = dict(summary, quality=setting.quality, seed=setting.seed)
        write_summary(stage, summary)
        return Output(stage, metadata={**count_metadata(summary), "quality": setting.quality,
                                       "wall_time_s": round(elapsed(), 2)})

    return train_counts


def train_corpus_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("train_corpus"),
        group_name=ds.name,
        partitions_def=ds.settings_of("geneformer"),
        ins={"train_counts": ds.same_in("train_counts", ds.settings_of("geneformer")),
             "gene_medians": ds.seed_in("gene_medians", "setting", "geneformer")},
        kinds={"numpy"},
        description="Training cells as a Geneformer rank-value token corpus (ragged token arrays + lengths).",
    )
    def train_corpus(context: AssetExecutionContext, train_counts: Path, gene_medians: Path):
        stage = new_stage(ds.study, "train-corpus")
        with timed() as elapsed:
            summary = tokenize_counts(ds, train_counts / COUNTS_FILE, stage / CORPUS_DIR, gene_medians)
        write_summary(stage, summary)
        return Output(stage, metadata={
            "cells": summary.get("cells"), "cells_dropped": summary.get("dropped", 0),
            "tokens": summary.get("tokens"), "wall_time_s": round(elapsed(), 2),
        })

    return train_corpus


def pca_genes_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("pca_genes"),
        group_name=ds.name,
        partitions_def=ds.seeds,
        ins={"raw": ds.raw_in(), "split": ds.same_in("split")},
        kinds={"numpy"},
        description="PCA's 750 highly variable genes (Seurat-flavour dispersion, as scanpy flavor='seurat'), "
        "chosen once per seed on the largest full-quality training set and used by every PCA model of the seed.",
    )
    def pca_genes(context: AssetExecutionContext, raw: Path, split: Path):
        import numpy as np

        from scaling_assets.assets.splits import load_split
        from scaling_assets.data.h5ad_io import CsrReader
        from scaling_assets.models.hvg import seurat_highly_variable
        from scaling_assets.models.pca import N_HVG

        cells = max(ds.study.sizes_of(ds.name, "pca"))  # PCA's own grid, if it has one
        rows = np.sort(load_split(split).train_rows(cells))
        stage = new_stage(ds.study, "pca-genes")
        with CsrReader(raw / COUNTS_FILE) as reader, timed() as elapsed:
            genes = seurat_highly_variable(reader, min(N_HVG, reader.n_vars), rows=rows, chunk_size=ds.study.chunk_size)
        np.save(stage / PCA_GENES_FILE, genes)
        summary = {"genes": len(genes), "chosen_on": f"largest full-quality training set (n={cells}, q=1)",
                   "cells": cells}
        write_summary(stage, summary)
        return Output(stage, metadata={**summary, "wall_time_s": round(elapsed(), 2)})

    return pca_genes
