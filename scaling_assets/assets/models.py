"""Stage 5: one trained model per algorithm and setting (PCA, random projection, SCVI, Geneformer)."""


from pathlib import Path

from dagster import AssetExecutionContext, MetadataValue, Output, asset

from scaling_assets.assets.common import (SETTING_KEY_NOTE, image_metadata, new_stage, plain, read_summary, readable,
                                          seal_folder, setting_grid, show_progress, write_summary)
from scaling_assets.assets.devices import step_device
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.data.pools import CorpusRange, CountsRange
from scaling_assets.models.budget import trained_below_rules
from scaling_assets.models.registry import MODELS, reads_corpus
from scaling_assets.layout import PCA_GENES_FILE, EvalCorpusFolder, ModelFolder, work_dir
from scaling_assets.study.spec import parse_setting_key

BUDGET_NOTE = (" Metadata `budget_smoke` is true when the budget's cap, not the study's stopping rules "
               "(epoch rule, early stopping), ended training: a smoke test of the code path, not a result.")

# the summary's fields shown as metadata, under their own names but for those in SHORT_LABELS: the asset
# Overview's key column is as wide as its longest name, and the loss curve must fit the value column beside
# it (names of up to 22 characters leave it 294 px of a 1,280 px window; benchmarks/tools/ui_fit.py measures it)
METADATA_FIELDS = ("parameters", "genes", "training_cells", "zero_umi_training_cells_dropped", "epochs", "steps",
                   "stop_reason", "train_loss", "validation_loss", "wall_time_s", "device", "budget", "budget_smoke")
SHORT_LABELS = {"zero_umi_training_cells_dropped": "zero_umi_cells_dropped"}
LOSS_CURVE_NOTE = " Metadata `loss_curve`: training and validation loss at each epoch or step recorded."


def loss_title(algorithm: str, dataset: str, setting_key: str) -> str:
    """Two short lines: a 280-px image holds "geneformer, development" at the title's 12 pt, not one line more."""
    return f"{algorithm}, {dataset}\n{setting_key}"


def describe(ds: DatasetAssets, algorithm: str, what: str) -> str:
    """A model asset's description: what it is, what its metadata and partition keys mean, its grid."""
    return (what + " Metadata `zero_umi_cells_dropped`: of the n training cells, those left with no UMI at q "
            "(not trained on)." + SETTING_KEY_NOTE + setting_grid(ds.study, ds.name, f"model_{algorithm}", algorithm))


def fit_report_record(report, model, algorithm: str, setting, budget: str) -> dict:
    record = {
        "algorithm": algorithm, "cells": setting.cells, "quality": setting.quality, "seed": setting.seed,
        "budget": budget, "parameters": int(model.n_parameters()), "genes": len(model.gene_ids),
        "embedding_dim": int(model.embedding_dim), "hyperparameters": model.hyperparameters(),
    }
    for field in ("epochs", "steps", "stop_reason", "train_loss", "validation_loss", "wall_time_s", "device"):
        record[field] = plain(getattr(report, field, None))
    return record


def checkpoint_dir(ds: DatasetAssets, name: str, partition_key: str) -> Path:
    """Training checkpoints of one partition, kept across attempts so a retry resumes (removed once
    the model is saved). Under the study root, so every node of a cluster sees it."""
    return work_dir(ds.study.root, [ds.name, name], partition_key)


def _train(ds: DatasetAssets, context, algorithm: str, train, validation, stage: Path, prepare=None):
    import shutil

    from scaling_assets.metrics.plots import plot_loss_curves
    from scaling_assets.models import get_model_class

    setting = parse_setting_key(context.partition_key)
    gene_ids = train.token_dictionary.gene_ids if reads_corpus(algorithm) else train.var_names
    resumable = MODELS[algorithm].resumable
    work = checkpoint_dir(ds, f"model_{algorithm}", context.partition_key)
    with step_device(context, f"model_{algorithm}", len(gene_ids)) as device:
        model = get_model_class(algorithm)(gene_ids, budget=ds.study.budget, seed=setting.seed, device=device)
        if prepare is not None:
            prepare(model)
        options = {"checkpoint_dir": work} if resumable else {}
        report = model.fit(train, validation=validation, progress=show_progress(), **options)
    if getattr(model, "resumed_from_step", None):
        context.log.info(f"{algorithm}: resumed from the checkpoint of step {model.resumed_from_step} in {work}")
    folder = ModelFolder(stage)
    model.save(folder.model)
    if resumable:
        shutil.rmtree(work, ignore_errors=True)
    record = fit_report_record(report, model, algorithm, setting, ds.study.budget)
    # N stays the nominal size; the model trained on the cells with at least one UMI at q (DESIGN §3)
    record["training_cells"] = len(train) if reads_corpus(algorithm) else int(train.n_obs)
    record["zero_umi_training_cells_dropped"] = setting.cells - record["training_cells"]
    record["budget_smoke"] = trained_below_rules(algorithm, ds.study.budget, setting.cells, record["stop_reason"])
    write_summary(stage, record)
    metadata = readable({SHORT_LABELS.get(k, k): record[k] for k in METADATA_FIELDS if record.get(k) is not None})
    history = getattr(report, "history", None)
    if history is not None and len(history):
        history.to_csv(folder.history, index=False)
        if report.stop_reason != "closed_form":  # a closed-form fit is one evaluation: its losses are in the metadata
            plot_loss_curves(history, folder.loss_plot, title=loss_title(algorithm, ds.name, context.partition_key))
            metadata["loss_curve"] = image_metadata(context, folder.loss_plot, "loss")
    metadata["hyperparameters"] = MetadataValue.json(record["hyperparameters"])
    seal_folder(stage)  # last: fingerprints of the model files, checked when the embeddings load them
    context.log.info(
        f"{algorithm}: {record['parameters']:,} parameters, stop={record.get('stop_reason')} "
        f"after {record.get('epochs')} epochs / {record.get('steps')} steps on {record.get('device')}"
    )
    return Output(stage, metadata=metadata)


def model_asset(ds: DatasetAssets, algorithm: str):
    name = f"model_{algorithm}"
    common = dict(
        key=ds.key(name), group_name=ds.name, partitions_def=ds.settings_of(algorithm), kinds={MODELS[algorithm].dagster_kind},
    )

    if reads_corpus(algorithm):
        @asset(
            **common,
            ins={"train_corpus": ds.same_in("train_corpus"),
                 "eval_corpus": ds.quality_seed_in("eval_corpus", algorithm)},
            description=describe(ds, algorithm, "Geneformer (BertForMaskedLM, HF Trainer) trained on the setting's "
                                 f"corpus; early stopping on the validation corpus; budget `{ds.study.budget}`."
                                 + LOSS_CURVE_NOTE + BUDGET_NOTE),
        )
        def model(context: AssetExecutionContext, train_corpus: CorpusRange, eval_corpus: EvalCorpusFolder):
            from scaling_assets.data.corpus import Corpus

            stage = new_stage(ds.study, name)
            return _train(ds, context, algorithm, train_corpus.open(), Corpus(eval_corpus.held_out("validation")), stage)

        return model

    if MODELS[algorithm].hvg_genes:
        @asset(
            **common,
            ins={"train_counts": ds.same_in("train_counts", ds.settings_of(algorithm)),
                 "pca_genes": ds.seed_in("pca_genes", "setting", algorithm)},
            description=describe(ds, algorithm, "PCA fitted on the setting's training counts, on the seed's highly "
                                 "variable genes (closed form: no training budget, no loss curve; `train_loss` is the "
                                 "fraction of the training counts' sum of squares on those genes that the components "
                                 "leave unexplained)."),
        )
        def model(context: AssetExecutionContext, train_counts: CountsRange, pca_genes: Path):
            import numpy as np

            genes = np.load(pca_genes / PCA_GENES_FILE)
            chosen_on = read_summary(pca_genes)["chosen_on"]
            stage = new_stage(ds.study, name)
            with train_counts.open() as reader:  # rows [0, N) of the seed's pool, thinned on read
                return _train(ds, context, algorithm, reader, None, stage,
                              prepare=lambda m: m.use_genes(genes, chosen_on))

        return model

    @asset(
        **common,
        ins={"train_counts": ds.same_in("train_counts", ds.settings_of(algorithm))},
        description=describe(ds, algorithm, f"{algorithm} model fitted on the setting's training counts (rows [0, N) "
                             f"of the seed's pool thinned to q); budget `{ds.study.budget}`."
                             + (LOSS_CURVE_NOTE + BUDGET_NOTE if algorithm == "scvi"
                                else " Closed form: no training budget, no loss curve.")),
    )
    def model(context: AssetExecutionContext, train_counts: CountsRange):
        stage = new_stage(ds.study, name)
        with train_counts.open() as reader:  # rows [0, N) of the seed's pool, thinned on read
            return _train(ds, context, algorithm, reader, None, stage)

    return model
