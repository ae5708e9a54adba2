"""Stage 3: what every model of a (quality, seed) is evaluated on.

- ``eval_counts``: the test and validation cells thinned to quality q (DESIGN §3: evaluation data is
  thinned at the same q as the training data of the model it evaluates). Test cells left with no
  UMI at q are dropped here, so every algorithm is scored on the same cells (the count is recorded).
- ``gene_medians`` (per seed): Geneformer's per-gene nonzero medians over the full-quality (q = 1)
  training pool (never test or validation cells), streamed chunk by chunk; one table per dataset and
  seed, used by the corpora of every quality, as Geneformer and the reference do (medians of thinned
  data tie and vanish at ~10 UMIs per cell).
- ``eval_corpus``: the test and validation sets as rank-value token corpora.
"""


from functools import partial
from pathlib import Path

from dagster import AssetExecutionContext, Output, asset

from scaling_assets.assets.common import COUNTS_FILE, count_metadata, new_stage, show_progress, timed, write_summary
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.assets.splits import load_split
from scaling_assets.study import parse_quality_seed_key

TEST_FILE = "test.h5ad"
VALIDATION_FILE = "validation.h5ad"
MEDIANS_FILE = "medians.npy"
DICTIONARY_FILE = "dictionary.json"


def thinning(quality: float, seed: int):
    from scaling_assets.data.thinning import thin_counts

    return None if quality >= 1.0 else partial(thin_counts, q=quality, seed=seed)


def eval_counts_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("eval_counts"),
        group_name=ds.name,
        partitions_def=ds.quality_seeds,
        ins={"raw": ds.raw_in(), "split": ds.split_in("quality_seed")},
        kinds={"h5ad"},
        description="Test and validation cells thinned to the partition's quality.",
    )
    def eval_counts(context: AssetExecutionContext, raw: Path, split: Path):
        from scaling_assets.data.h5ad_io import CsrReader, write_rows
        from scaling_assets.data.thinning import rows_with_counts

        quality, seed = parse_quality_seed_key(context.partition_key)
        sets = load_split(split)
        stage = new_stage(ds.study, "eval")
        with CsrReader(raw / COUNTS_FILE) as reader, timed() as elapsed:
            test_rows = rows_with_counts(reader, sets.test, quality, seed, chunk_size=ds.study.chunk_size)
            test = write_rows(reader, test_rows, stage / TEST_FILE, transform=thinning(quality, seed),
                              chunk_size=ds.study.chunk_size, progress=show_progress())
            test["zero_umi_cells_dropped"] = int(len(sets.test) - len(test_rows))
            val = write_rows(reader, sets.validation, stage / VALIDATION_FILE, transform=thinning(quality, seed),
                             chunk_size=ds.study.chunk_size, progress=show_progress())
        summary = {"test": test, "validation": val, "quality": quality, "seed": seed}
        write_summary(stage, summary)
        return Output(stage, metadata={
            **count_metadata(test), "validation_cells": val["cells"], "quality": quality,
            "zero_umi_test_cells_dropped": test["zero_umi_cells_dropped"],
            "wall_time_s": round(elapsed(), 2),
        })

    return eval_counts


def gene_medians_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("gene_medians"),
        group_name=ds.name,
        partitions_def=ds.seeds,
        ins={"raw": ds.raw_in(), "split": ds.same_in("split")},
        kinds={"numpy"},
        description="Per-gene nonzero medians of normalised counts over the full-quality training pool "
        "(Geneformer normalisation; test and validation cells excluded; used at every quality), and the "
        "token dictionary.",
    )
    def gene_medians(context: AssetExecutionContext, raw: Path, split: Path):
        import numpy as np

        from scaling_assets.data.h5ad_io import CsrReader
        from scaling_assets.tokenize import TokenDictionary, gene_nonzero_medians

        pool = np.sort(load_split(split).pool_order)
        stage = new_stage(ds.study, "medians")
        with CsrReader(raw / COUNTS_FILE) as reader, timed() as elapsed:
            medians = gene_nonzero_medians(reader, rows=pool, chunk_size=ds.study.chunk_size)
            dictionary = TokenDictionary(reader.var_names)
        np.save(stage / MEDIANS_FILE, medians)
        dictionary.save(stage / DICTIONARY_FILE)
        expressed = int(np.isfinite(medians).sum())
        return Output(stage, metadata={
            "pool_cells": len(pool), "quality": 1.0, "genes": len(medians), "genes_expressed": expressed,
            "wall_time_s": round(elapsed(), 2),
        })

    return gene_medians


def tokenize_counts(ds: DatasetAssets, counts_file: Path, out_dir: Path, gene_medians: Path) -> dict:
    """Rank-value corpus of one count file, with the medians and dictionary of a gene_medians partition."""
    import numpy as np

    from scaling_assets.data.h5ad_io import CsrReader
    from scaling_assets.tokenize import TokenDictionary, build_corpus

    medians = np.load(gene_medians / MEDIANS_FILE)
    dictionary = TokenDictionary.load(gene_medians / DICTIONARY_FILE)
    with CsrReader(counts_file) as reader:
        return build_corpus(reader, out_dir, medians, dictionary, chunk_size=ds.study.chunk_size,
                            progress=show_progress())


def eval_corpus_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("eval_corpus"),
        group_name=ds.name,
        partitions_def=ds.quality_seeds_of("geneformer"),
        ins={"eval_counts": ds.same_in("eval_counts", ds.quality_seeds_of("geneformer")),
             "gene_medians": ds.seed_in("gene_medians", "quality_seed", "geneformer")},
        kinds={"numpy"},
        description="Test and validation cells as Geneformer rank-value token corpora.",
    )
    def eval_corpus(context: AssetExecutionContext, eval_counts: Path, gene_medians: Path):
        stage = new_stage(ds.study, "eval-corpus")
        summaries = {
            name: tokenize_counts(ds, eval_counts / file, stage / name, gene_medians)
            for name, file in (("test", TEST_FILE), ("validation", VALIDATION_FILE))
        }
        write_summary(stage, summaries)
        return Output(stage, metadata={
            "test_cells": summaries["test"].get("cells"), "validation_cells": summaries["validation"].get("cells"),
            "test_cells_dropped": summaries["test"].get("dropped", 0),
        })

    return eval_corpus
