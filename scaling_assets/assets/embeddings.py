"""Stage 6: each model embeds the held-out test cells of its quality (arrays with their cell ids)."""


from pathlib import Path

from dagster import AssetExecutionContext, Output, asset

from scaling_assets.assets.common import (SETTING_KEY_NOTE, load_trained_model, new_stage, read_summary, seal_folder,
                                          verify_partition)
from scaling_assets.assets.devices import step_device
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.errors import InputError
from scaling_assets.layout import EmbeddingsFolder, ModelFolder, eval_corpus_dir, eval_counts_file
from scaling_assets.models.registry import ModelEntry
from scaling_assets.study.spec import parse_setting_key


def check_embedding(values, cells: int, width: int, algorithm: str, where: str):
    """The embedding a model returned, as float32, refused (naming the model and the partition) when it
    is not one finite row of the declared width per test cell: the MI of anything else means nothing."""
    import numpy as np

    values = np.asarray(values)
    problem = None
    if values.ndim != 2 or values.shape != (cells, width):
        problem = f"shape {values.shape}, expected ({cells}, {width}): one row per test cell, its declared width"
    elif not np.issubdtype(values.dtype, np.number):
        problem = f"dtype {values.dtype}, expected numbers"
    else:
        bad = ~np.isfinite(values)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            problem = (f"{int(np.isnan(values).sum())} NaN and {int(np.isinf(values).sum())} infinite values in "
                       f"{len(rows)} of {cells} rows (first rows {rows[:5].tolist()})")
    if problem:
        raise InputError(f"model {algorithm!r} embedded the test cells of {where} wrongly: {problem}")
    return values.astype(np.float32)


def embeddings_asset(ds: DatasetAssets, entry: ModelEntry):
    algorithm = entry.name
    name = f"embeddings_{algorithm}"
    # A corpus model reads the test corpus of its quality; the others the seed's test counts at that quality.
    eval_in = (ds.quality_seed_in("eval_corpus", algorithm) if entry.reads_corpus
               else ds.seed_in("eval_counts", "setting", algorithm))

    @asset(
        key=ds.key(name),
        group_name=ds.name,
        partitions_def=ds.settings_of(algorithm),
        ins={"model": ds.same_in(f"model_{algorithm}"), "eval_data": eval_in},
        kinds={"numpy"},
        description=f"{algorithm} embeddings of the test cells (thinned at the setting's quality): one finite row "
        "of the model's width per test cell, or the partition fails naming the model." + SETTING_KEY_NOTE,
    )
    def embeddings(context: AssetExecutionContext, model: ModelFolder, eval_data: Path):
        import numpy as np

        verify_partition(model.folder)  # the model's files against their fingerprints, before reading any
        n_genes = read_summary(model.folder)["genes"]
        with step_device(context, name, entry.gpu_need_mib("embeddings", n_genes)) as device:
            fitted = load_trained_model(model.folder, entry)
            fitted.device = device  # embed on the leased device, whatever the model trained on
            if entry.reads_corpus:
                from scaling_assets.data.corpus import Corpus

                test = Corpus(eval_corpus_dir(eval_data, "test"))
                values, cell_ids = fitted.embed(test), np.asarray(test.cell_ids, dtype=str)
            else:
                from scaling_assets.data.h5ad_io import CsrReader

                quality = parse_setting_key(context.partition_key).quality
                with CsrReader(eval_counts_file(eval_data, quality, "test")) as test:
                    values, cell_ids = fitted.embed(test), np.asarray(test.obs_names, dtype=str)
        values = check_embedding(values, len(cell_ids), entry.embedding_dim, algorithm,
                                 f"{ds.name} {context.partition_key}")
        stage = new_stage(ds.study, name)
        np.savez(EmbeddingsFolder(stage).embeddings, embeddings=values, cell_ids=cell_ids)
        seal_folder(stage)
        return Output(stage, metadata={"cells": values.shape[0], "dimensions": values.shape[1], "device": device})

    return embeddings
