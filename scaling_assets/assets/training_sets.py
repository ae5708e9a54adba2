"""Stage 4: training data without copies (layout in ``scaling_assets.data.pools``).

- ``pool_counts`` (per seed): the training pool's raw rows, written once in the seed's pool order.
- ``train_counts`` (per setting): a small record, not a file: rows [0, N) of the pool, thinned to q as
  they are read, less the cells left with no UMI at q (listed in the record, counted in
  ``zero_umi_training_cells_dropped``). The IO manager hands it to the models as a ``CountsRange`` handle.
- ``pool_corpus`` (per quality x seed of Geneformer's grid): the pool thinned to q and tokenized, in
  pool order (cells with no UMI at q have no tokens and are left out); ``train_corpus`` (per setting):
  the corpus cells of pool rows [0, N), a ``CorpusRange``.
- ``pca_genes`` (per seed): PCA's highly variable genes.

Sizes are nested (a prefix of one order) and thinning keys on the raw cell index, so a cell looks the
same in every setting that contains it.
"""


from pathlib import Path

from dagster import AssetExecutionContext, Output, asset

from scaling_assets.assets.common import (SETTING_KEY_NOTE, count_metadata, load_split, new_stage, read_summary,
                                          rounded, show_progress, timed, tokenize_source, write_summary)
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.layout import COUNTS_FILE, CORPUS_DIR, PCA_GENES_FILE
from scaling_assets.study.spec import parse_quality_seed_key, parse_seed_key, parse_setting_key



def pool_counts_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("pool_counts"),
        group_name=ds.name,
        partitions_def=ds.seeds,
        ins={"raw": ds.raw_in(), "split": ds.same_in("split")},
        kinds={"h5ad"},
        description="The seed's training pool in pool order at full quality, written once; every setting "
        "of the seed trains on rows [0, N) of it, thinned to its quality on read.",
    )
    def pool_counts(context: AssetExecutionContext, raw: Path, split: Path):
        from scaling_assets.data.h5ad_io import CsrReader
        from scaling_assets.data.pools import POOL_FILE, write_pool

        seed = parse_seed_key(context.partition_key)
        stage = new_stage(ds.study, "pool")
        with CsrReader(raw / COUNTS_FILE) as reader, timed() as elapsed:
            summary = write_pool(reader, load_split(split).pool_order, stage, chunk_size=ds.study.chunk_size,
                                 progress=show_progress())
        write_summary(stage, dict(summary, seed=seed))
        return Output(stage, metadata={**count_metadata(summary), "bytes": summary["fingerprints"][POOL_FILE]["bytes"],
                                       "wall_time_s": rounded("wall_time_s", elapsed())})

    return pool_counts


def train_counts_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("train_counts"),
        group_name=ds.name,
        partitions_def=ds.settings,
        ins={"pool_counts": ds.seed_in("pool_counts", "setting")},
        kinds={"h5ad"},
        description="Training cells of the setting: rows [0, N) of the seed's pool, thinned to quality q on "
        "read (a record, not a copy), without the cells left with no UMI at q (counted in "
        "`zero_umi_training_cells_dropped`; N in the key stays the nominal size)." + SETTING_KEY_NOTE,
    )
    def train_counts(context: AssetExecutionContext, pool_counts: Path):
        from scaling_assets.data.pools import CountsRange, check_size, find_zero_umi_rows

        setting = parse_setting_key(context.partition_key)
        pool_cells = int(read_summary(pool_counts)["cells"])
        check_size(setting.cells, pool_cells, f"training pool of {ds.name} s={setting.seed}")
        with timed() as elapsed:  # one read: the cells left with no UMI at q, and the UI's UMIs per cell
            handle, umis = find_zero_umi_rows(CountsRange(str(pool_counts), setting.cells, setting.quality,
                                                          setting.seed), chunk_size=ds.study.chunk_size)
            with handle.open() as source:
                genes = source.n_vars
        dropped = len(handle.zero_umi_rows)
        record = dict(handle.to_record(), genes=genes, umis_per_cell=umis, pool_cells=pool_cells,
                      rows=[0, setting.cells], training_cells=handle.training_cells,
                      zero_umi_training_cells_dropped=dropped)
        if dropped:
            context.log.info(f"{dropped} of the {setting.cells} training cells have no UMI at q={setting.quality}: "
                             "left out of the training set")
        return Output(record, metadata={
            **count_metadata(dict(record, cells=handle.training_cells)), "nominal_cells": setting.cells,
            "zero_umi_training_cells_dropped": dropped, "quality": setting.quality,
            "pool_rows": f"[0, {setting.cells})", "pool_cells": pool_cells,
            "wall_time_s": rounded("wall_time_s", elapsed()),
        })

    return train_counts


def pool_corpus_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("pool_corpus"),
        group_name=ds.name,
        partitions_def=ds.quality_seeds_of(ds.corpus_grid),
        ins={"pool_counts": ds.seed_in("pool_counts", "quality_seed", ds.corpus_grid),
             "gene_medians": ds.seed_in("gene_medians", "quality_seed", ds.corpus_grid)},
        kinds={"numpy"},
        description="The training pool thinned to q as a Geneformer rank-value corpus, in pool order; a "
        "setting's corpus is the cells of its first N pool rows.",
    )
    def pool_corpus(context: AssetExecutionContext, pool_counts: Path, gene_medians: Path):
        from scaling_assets.data.corpus import CORPUS_FILES
        from scaling_assets.data.pools import CountsRange, record_fingerprints

        quality, seed = parse_quality_seed_key(context.partition_key)
        pool_cells = int(read_summary(pool_counts)["cells"])
        stage = new_stage(ds.study, "pool-corpus")
        with CountsRange(str(pool_counts), pool_cells, quality, seed).open() as source, timed() as elapsed:
            summary = tokenize_source(source, stage / CORPUS_DIR, gene_medians, ds.study.chunk_size)
        summary["fingerprints"] = record_fingerprints(stage, [f"{CORPUS_DIR}/{f}" for f in CORPUS_FILES])
        write_summary(stage, summary)
        return Output(stage, metadata={
            "cells": summary.get("cells"), "zero_umi_pool_cells_dropped": summary.get("dropped", 0),
            "tokens": summary.get("tokens"), "wall_time_s": rounded("wall_time_s", elapsed()),
        })

    return pool_corpus


def train_corpus_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("train_corpus"),
        group_name=ds.name,
        partitions_def=ds.settings_of(ds.corpus_grid),
        ins={"pool_corpus": ds.quality_seed_in("pool_corpus", ds.corpus_grid)},
        kinds={"numpy"},
        description="The setting's Geneformer corpus: the cells of pool rows [0, N) of the pool corpus at q "
        "(a record, not a copy)." + SETTING_KEY_NOTE,
    )
    def train_corpus(context: AssetExecutionContext, pool_corpus: Path):
        from scaling_assets.data.pools import CorpusRange

        setting = parse_setting_key(context.partition_key)
        handle = CorpusRange(str(pool_corpus / CORPUS_DIR), setting.cells)
        corpus = handle.open()  # refuses N above the pool, a missing or truncated corpus
        tokens = int(corpus.offsets[-1])
        record = dict(handle.to_record(), cells=len(corpus), input_cells=setting.cells, tokens=tokens)
        record["zero_umi_training_cells_dropped"] = setting.cells - len(corpus)  # pool cells have no token iff no UMI
        return Output(record, metadata={
            "cells": len(corpus), "zero_umi_training_cells_dropped": setting.cells - len(corpus), "tokens": tokens,
            "pool_rows": f"[0, {setting.cells})",
        })

    return train_corpus


def pca_genes_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("pca_genes"),
        group_name=ds.name,
        partitions_def=ds.seeds,
        ins={"pool_counts": ds.same_in("pool_counts")},
        kinds={"numpy"},
        description="PCA's 750 highly variable genes (Seurat-flavour dispersion, as scanpy flavor='seurat'), "
        "chosen once per seed on the largest full-quality training set and used by every PCA model of the seed.",
    )
    def pca_genes(context: AssetExecutionContext, pool_counts: Path):
        import numpy as np

        from scaling_assets.data.pools import CountsRange, find_zero_umi_rows
        from scaling_assets.models.hvg import seurat_highly_variable
        from scaling_assets.models.pca import N_HVG

        # the largest training set of the models that read these genes (PCA's own grid, if it has one)
        cells = max(max(ds.study.sizes_of(ds.name, e.name)) for e in ds.study.models.values() if e.hvg_genes)
        seed = parse_seed_key(context.partition_key)
        stage = new_stage(ds.study, "pca-genes")
        with timed() as elapsed:
            handle, _ = find_zero_umi_rows(CountsRange(str(pool_counts), cells, 1.0, seed), ds.study.chunk_size)
            with handle.open() as train:  # the training set PCA's largest setting reads: no zero-UMI cell
                genes = seurat_highly_variable(train, min(N_HVG, train.n_vars), chunk_size=ds.study.chunk_size)
        np.save(stage / PCA_GENES_FILE, genes)
        summary = {"genes": len(genes), "chosen_on": f"largest full-quality training set (n={cells}, q=1)",
                   "cells": cells, "zero_umi_training_cells_dropped": len(handle.zero_umi_rows)}
        write_summary(stage, summary)
        return Output(stage, metadata={**summary, "wall_time_s": rounded("wall_time_s", elapsed())})

    return pca_genes
