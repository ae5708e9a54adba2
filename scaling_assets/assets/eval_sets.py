"""Stage 3: what every model of a seed is evaluated on, at each quality.

- ``eval_counts`` (per seed): the test and validation cells thinned to each quality of the dataset's
  grid, one folder per quality (evaluation data is thinned at the same q as the training data of the
  model it evaluates). Test and validation cells left with no UMI at q are dropped there (DESIGN §3),
  so every algorithm is scored on the same cells (the counts are recorded). Per seed, not per quality, so that a setting's
  whole chain (training record, model, embeddings, MI) depends only on per-seed assets and runs as
  one Dagster run once its seed is ready.
- ``gene_medians`` (per seed): Geneformer's per-gene nonzero medians over the full-quality (q = 1)
  training pool (never test or validation cells), streamed chunk by chunk; one table per dataset and
  seed, used by the corpora of every quality, as Geneformer and the reference do (medians of thinned
  data tie and vanish at ~10 UMIs per cell).
- ``eval_corpus``: the test and validation sets as rank-value token corpora.
"""


from functools import partial
from pathlib import Path

from dagster import AssetExecutionContext, Output, asset

from scaling_assets.assets.common import (load_split, new_stage, rounded, show_progress, timed, tokenize_source,
                                          write_summary)
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.layout import (COUNTS_FILE, DICTIONARY_FILE, EVAL_SETS, MEDIANS_FILE, EvalCountsFolder,
                                   eval_corpus_dir, eval_counts_file, eval_dir)
from scaling_assets.study.spec import parse_quality_seed_key, parse_seed_key


def thinning(quality: float, seed: int):
    from scaling_assets.data.thinning import thin_counts

    return None if quality >= 1.0 else partial(thin_counts, q=quality, seed=seed)


def eval_counts_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("eval_counts"),
        group_name=ds.name,
        partitions_def=ds.seeds,
        ins={"raw": ds.raw_in(), "split": ds.same_in("split")},
        kinds={"h5ad"},
        description="The seed's test and validation cells, thinned to each quality of the dataset's grid "
        "(one folder per quality, `q=0.1/test.h5ad`, `q=0.1/validation.h5ad`). Test and validation cells left "
        "with no UMI at a quality are dropped there (counted per quality), so every algorithm is scored on the "
        "same cells.",
    )
    def eval_counts(context: AssetExecutionContext, raw: Path, split: Path):
        from scaling_assets.data.h5ad_io import CsrReader, write_rows
        from scaling_assets.data.thinning import rows_with_counts

        seed = parse_seed_key(context.partition_key)
        sets = load_split(split)
        stage = new_stage(ds.study, "eval")
        summary: dict = {"seed": seed}
        chunk = ds.study.chunk_size
        with CsrReader(raw / COUNTS_FILE) as reader, timed() as elapsed:
            for quality in ds.study.qualities_of(ds.name):
                out = eval_dir(stage, quality)
                test_rows = rows_with_counts(reader, sets.test, quality, seed, chunk_size=chunk)
                test = write_rows(reader, test_rows, eval_counts_file(stage, quality, "test"), transform=thinning(quality, seed),
                                  chunk_size=chunk, progress=show_progress())
                test["zero_umi_cells_dropped"] = int(len(sets.test) - len(test_rows))
                val_rows = rows_with_counts(reader, sets.validation, quality, seed, chunk_size=chunk)
                val = write_rows(reader, val_rows, eval_counts_file(stage, quality, "validation"), transform=thinning(quality, seed),
                                 chunk_size=chunk, progress=show_progress())
                val["zero_umi_cells_dropped"] = int(len(sets.validation) - len(val_rows))
                summary[out.name] = {"test": test, "validation": val, "quality": quality, "seed": seed}
        write_summary(stage, summary)
        per_quality = {k: v for k, v in summary.items() if k.startswith("q=")}
        return Output(stage, metadata={
            "test_cells": len(sets.test), "validation_cells": len(sets.validation),
            "qualities": len(per_quality),
            **{f"umis_per_test_cell {k}": rounded("umis_per_cell", v["test"]["umis_per_cell"]) for k, v in per_quality.items()},
            **{f"zero_umi_test_cells_dropped {k}": v["test"]["zero_umi_cells_dropped"] for k, v in per_quality.items()},
            **{f"zero_umi_validation_cells_dropped {k}": v["validation"]["zero_umi_cells_dropped"]
               for k, v in per_quality.items()},
            "wall_time_s": rounded("wall_time_s", elapsed()),
        })

    return eval_counts


def gene_medians_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("gene_medians"),
        group_name=ds.name,
        partitions_def=ds.seeds,
        ins={"pool_counts": ds.same_in("pool_counts")},
        kinds={"numpy"},
        description="Per-gene nonzero medians of normalised counts over the full-quality training pool "
        "(Geneformer normalisation; test and validation cells excluded; used at every quality), and the "
        "token dictionary.",
    )
    def gene_medians(context: AssetExecutionContext, pool_counts: Path):
        import numpy as np

        from scaling_assets.assets.common import read_summary
        from scaling_assets.data.pools import CountsRange
        from scaling_assets.data.corpus import TokenDictionary, gene_nonzero_medians

        stage = new_stage(ds.study, "medians")
        pool_cells = int(read_summary(pool_counts)["cells"])
        # the whole pool at q = 1, read in order: its row blocks are checked against their digests
        with CountsRange(str(pool_counts), pool_cells, 1.0, parse_seed_key(context.partition_key)).open() as reader, \
                timed() as elapsed:
            pool = np.arange(reader.n_obs)
            medians = gene_nonzero_medians(reader, chunk_size=ds.study.chunk_size)
            dictionary = TokenDictionary(reader.var_names)
        np.save(stage / MEDIANS_FILE, medians)
        dictionary.save(stage / DICTIONARY_FILE)
        expressed = int(np.isfinite(medians).sum())
        return Output(stage, metadata={
            "pool_cells": len(pool), "quality": 1.0, "genes": len(medians), "genes_expressed": expressed,
            "wall_time_s": rounded("wall_time_s", elapsed()),
        })

    return gene_medians


def tokenize_counts(ds: DatasetAssets, counts_file: Path, out_dir: Path, gene_medians: Path) -> dict:
    """Rank-value corpus of one count file, with the medians and dictionary of a gene_medians partition."""
    from scaling_assets.data.h5ad_io import CsrReader

    with CsrReader(counts_file) as reader:
        return tokenize_source(reader, out_dir, gene_medians, ds.study.chunk_size)


def eval_corpus_asset(ds: DatasetAssets):
    @asset(
        key=ds.key("eval_corpus"),
        group_name=ds.name,
        partitions_def=ds.quality_seeds_of(ds.corpus_grid),
        ins={"eval_counts": ds.seed_in("eval_counts", "quality_seed", ds.corpus_grid),
             "gene_medians": ds.seed_in("gene_medians", "quality_seed", ds.corpus_grid)},
        kinds={"numpy"},
        description="Test and validation cells at the partition's quality (`q=…_s=…`) as Geneformer "
        "rank-value token corpora.",
    )
    def eval_corpus(context: AssetExecutionContext, eval_counts: EvalCountsFolder, gene_medians: Path):
        quality, _ = parse_quality_seed_key(context.partition_key)
        stage = new_stage(ds.study, "eval-corpus")
        summaries = {
            name: tokenize_counts(ds, eval_counts.held_out(quality, name), eval_corpus_dir(stage, name),
                                  gene_medians)
            for name in EVAL_SETS
        }
        write_summary(stage, summaries)
        return Output(stage, metadata={
            "test_cells": summaries["test"].get("cells"), "validation_cells": summaries["validation"].get("cells"),
            "test_cells_dropped": summaries["test"].get("dropped", 0),
            "validation_cells_dropped": summaries["validation"].get("dropped", 0),
        })

    return eval_corpus
