"""Stage 6: each model embeds the held-out test cells of its quality (arrays with their cell ids)."""


from pathlib import Path

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, Output, asset

from scaling_assets.assets.common import (SETTING_KEY_NOTE, load_trained_model, new_stage, read_summary, seal_folder,
                                          verify_partition)
from scaling_assets.assets.devices import step_device
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.layout import EmbeddingsFolder, ModelFolder, eval_corpus_dir, eval_counts_file
from scaling_assets.models.registry import reads_corpus
from scaling_assets.study.spec import parse_setting_key


def embeddings_asset(ds: DatasetAssets, algorithm: str):
    name = f"embeddings_{algorithm}"
    key = ds.key(name)
    # A corpus model reads the test corpus of its quality; the others the seed's test counts at that quality.
    eval_in = (ds.quality_seed_in("eval_corpus", algorithm) if reads_corpus(algorithm)
               else ds.seed_in("eval_counts", "setting", algorithm))

    @asset(
        key=key,
        group_name=ds.name,
        partitions_def=ds.settings_of(algorithm),
        ins={"model": ds.same_in(f"model_{algorithm}"), "eval_data": eval_in},
        kinds={"numpy"},
        check_specs=[AssetCheckSpec("finite_embeddings", asset=key, blocking=True, partitions_def=ds.settings_of(algorithm),
                                    description="Every embedding value is finite (no NaN or inf).")],
        description=f"{algorithm} embeddings of the test cells (thinned at the setting's quality)." + SETTING_KEY_NOTE,
    )
    def embeddings(context: AssetExecutionContext, model: ModelFolder, eval_data: Path):
        import numpy as np

        verify_partition(model.folder)  # the model's files against their fingerprints, before reading any
        n_genes = read_summary(model.folder)["genes"]
        with step_device(context, name, n_genes) as device:
            fitted = load_trained_model(model.folder, algorithm)
            fitted.device = device  # embed on the leased device, whatever the model trained on
            if reads_corpus(algorithm):
                from scaling_assets.data.corpus import Corpus

                test = Corpus(eval_corpus_dir(eval_data, "test"))
                values, cell_ids = fitted.embed(test), np.asarray(test.cell_ids, dtype=str)
            else:
                from scaling_assets.data.h5ad_io import CsrReader

                quality = parse_setting_key(context.partition_key).quality
                with CsrReader(eval_counts_file(eval_data, quality, "test")) as test:
                    values, cell_ids = fitted.embed(test), np.asarray(test.obs_names, dtype=str)
        values = np.asarray(values, dtype=np.float32)
        stage = new_stage(ds.study, name)
        np.savez(EmbeddingsFolder(stage).embeddings, embeddings=values, cell_ids=cell_ids)
        seal_folder(stage)
        bad = int((~np.isfinite(values)).sum())
        yield Output(stage, metadata={"cells": values.shape[0], "dimensions": values.shape[1], "device": device})
        yield AssetCheckResult(passed=bad == 0, severity=AssetCheckSeverity.ERROR,
                               metadata={"non_finite_values": bad})

    return embeddings
