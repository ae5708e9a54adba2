"""Stage 5: one trained model per algorithm and setting: the built-in four and a study's own models.

Each model asset is made from the algorithm's ``ModelEntry``: what it reads decides its inputs (training
counts, a training corpus, the seed's highly variable genes), its class builds the model, and a frozen
pretrained model reads no training data (it is bound to the dataset's genes at n=0).
"""

from contextlib import contextmanager
from pathlib import Path

from dagster import AssetExecutionContext, MetadataValue, Output, asset

from scaling_assets.assets.common import (SETTING_KEY_NOTE, image_metadata, new_stage, plain, read_summary, readable,
                                          seal_folder, setting_grid, show_progress, write_summary)
from scaling_assets.assets.devices import step_device
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.layout import PCA_GENES_FILE, EvalCorpusFolder, EvalCountsFolder, ModelFolder, work_dir
from scaling_assets.models.budget import trained_below_rules
from scaling_assets.models.registry import ModelEntry
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


def model_inputs(ds: DatasetAssets, entry: ModelEntry, settings) -> dict:
    """What the model of ``entry`` is fitted on at its ``settings``: its training set and the seed's validation
    set at the setting's quality (a frozen model: the evaluation counts, for the dataset's genes)."""
    if entry.reads_corpus:
        ins = {"eval_corpus": ds.quality_seed_in("eval_corpus", entry.name)}
        if not entry.pretrained:
            ins["train_corpus"] = ds.same_in("train_corpus", settings)
        return ins
    ins = {"eval_counts": ds.seed_in("eval_counts", "setting", entry.name)}
    if not entry.pretrained:
        ins["train_counts"] = ds.same_in("train_counts", settings)
    if entry.hvg_genes:
        ins["pca_genes"] = ds.seed_in("pca_genes", "setting", entry.name)
    return ins


@contextmanager
def training_data(entry: ModelEntry, inputs: dict, quality: float):
    """(training set, validation set, genes) of a setting: row-range readers or corpora; no training set
    for a frozen model."""
    if entry.reads_corpus:
        from scaling_assets.data.corpus import Corpus

        validation = Corpus(EvalCorpusFolder(inputs["eval_corpus"]).held_out("validation"))
        train = inputs["train_corpus"].open() if "train_corpus" in inputs else None
        yield train, validation, validation.token_dictionary.gene_ids
        return
    from scaling_assets.data.h5ad_io import CsrReader

    with CsrReader(EvalCountsFolder(inputs["eval_counts"]).held_out(quality, "validation")) as validation:
        if "train_counts" not in inputs:
            yield None, validation, validation.var_names
            return
        with inputs["train_counts"].open() as train:  # rows [0, N) of the seed's pool, thinned on read
            yield train, validation, train.var_names


def _train(ds: DatasetAssets, context, entry: ModelEntry, inputs: dict, stage: Path):
    import shutil

    import numpy as np

    from scaling_assets.metrics.plots import plot_loss_curves

    algorithm = entry.name
    setting = parse_setting_key(context.partition_key)
    work = checkpoint_dir(ds, f"model_{algorithm}", context.partition_key)
    with training_data(entry, inputs, setting.quality) as (train, validation, gene_ids):
        with step_device(context, f"model_{algorithm}", entry.gpu_need_mib("model", len(gene_ids))) as device:
            model = entry.build(gene_ids, budget=ds.study.budget, seed=setting.seed, device=device)
            if entry.hvg_genes:  # the seed's highly variable genes, chosen once for every setting
                model.use_genes(np.load(inputs["pca_genes"] / PCA_GENES_FILE),
                                read_summary(inputs["pca_genes"])["chosen_on"])
            options = {"checkpoint_dir": work} if entry.resumable else {}
            report = model.fit(train, validation=validation, progress=show_progress(), **options)
        training_cells = 0 if train is None else len(train) if entry.reads_corpus else int(train.n_obs)
    if getattr(model, "resumed_from_step", None):
        context.log.info(f"{algorithm}: resumed from the checkpoint of step {model.resumed_from_step} in {work}")
    folder = ModelFolder(stage)
    model.save(folder.model)
    if entry.resumable:
        shutil.rmtree(work, ignore_errors=True)
    record = fit_report_record(report, model, algorithm, setting, ds.study.budget)
    # N stays the nominal size; the model trained on the cells with at least one UMI at q (DESIGN §3)
    record["training_cells"] = training_cells
    record["zero_umi_training_cells_dropped"] = setting.cells - training_cells
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


def _description(ds: DatasetAssets, entry: ModelEntry) -> str:
    if entry.pretrained:
        what = (f"{entry.name} ({entry.origin}): a pretrained model evaluated frozen, bound to the dataset's genes; "
                "trained on none of the study's cells, so its partitions are n=0 at each quality and seed (no loss "
                "curve).")
    elif entry.name == "pca":
        what = ("PCA fitted on the setting's training counts, on the seed's highly variable genes (closed form: no "
                "training budget, no loss curve; `train_loss` is the fraction of the training counts' sum of squares "
                "on those genes that the components leave unexplained).")
    elif entry.name == "geneformer":
        what = ("Geneformer (BertForMaskedLM, HF Trainer) trained on the setting's corpus; early stopping on the "
                f"validation corpus; budget `{ds.study.budget}`." + LOSS_CURVE_NOTE + BUDGET_NOTE)
    elif entry.name == "random_projection":
        what = ("random_projection model fitted on the setting's training counts (rows [0, N) of the seed's pool "
                "thinned to q). Closed form: no training budget, no loss curve.")
    else:
        data = "corpus" if entry.reads_corpus else "training counts (rows [0, N) of the seed's pool thinned to q)"
        what = (f"{entry.name} model ({entry.origin}) fitted on the setting's {data}; budget `{ds.study.budget}`."
                + (LOSS_CURVE_NOTE + BUDGET_NOTE if entry.name == "scvi" else ""))
    return describe(ds, entry.name, what)


def model_asset(ds: DatasetAssets, entry: ModelEntry):
    name = f"model_{entry.name}"
    settings = ds.settings_of(entry.name)

    @asset(key=ds.key(name), group_name=ds.name, partitions_def=settings, kinds={entry.dagster_kind},
           ins=model_inputs(ds, entry, settings), description=_description(ds, entry))
    def model(context: AssetExecutionContext, **inputs):
        return _train(ds, context, entry, inputs, new_stage(ds.study, name))

    return model
