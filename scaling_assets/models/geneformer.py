"""Geneformer (DESIGN §5): ``transformers.BertForMaskedLM`` pre-trained with the HF ``Trainer`` on
a rank-value corpus (scaling_assets.data.corpus), then cells embedded as the mean over non-padding
tokens of the second-to-last layer (Geneformer's ``emb_layer=-1``, as the reference ran it; 256-d).

Data: training and validation are ``Corpus`` directories; cells are read from the memory-mapped
token file one at a time by the DataLoader, so corpus size is bounded by disk, not memory (the
per-cell lengths, 4 bytes a cell, are in memory for the length-grouped sampler).
Masking: BERT 15% with 80% <mask> / 10% random gene / 10% unchanged over the (never padded)
tokens, at least one position per cell. Training masks come from a generator seeded with the run
seed; validation masks are fixed per cell (seeded by cell index) so eval losses are comparable.
Checkpoints go to a checkpoint directory (a temp dir unless given); each complete one gets a
``COMPLETE`` marker, so an interrupted run leaves its last complete checkpoint identifiable. Given a
checkpoint directory that holds one (a killed or failed earlier attempt), ``fit`` resumes from the
newest complete checkpoint: weights, optimiser, scheduler, step and data order. The final model path
is only written by ``save`` (atomic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import (BertConfig, BertForMaskedLM, EarlyStoppingCallback, Trainer, TrainerCallback,
                          TrainingArguments)
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.utils import logging as hf_logging

from scaling_assets.errors import InputError
from scaling_assets.models.base import FitReport, RepresentationModel
from scaling_assets.models.budget import get_budget
from scaling_assets.models.spec import (
    GENEFORMER_BERT,
    GENEFORMER_TRAINING,
    MLM_PROBABILITY,
    geneformer_embed_mib,
    geneformer_micro_batch,
    geneformer_parameters,
    geneformer_train_mib,
)
from scaling_assets.data.corpus import MASK_ID, PAD_ID, Corpus, TokenDictionary

BERT_CONFIG, TRAINING = GENEFORMER_BERT, GENEFORMER_TRAINING  # the reference's settings (models/spec.py)
# Cell embedding layer in Geneformer's `emb_layer` convention (0 = last layer, -1 = second-to-last),
# the reference's call: hidden_states[num_hidden_layers + EMB_LAYER], mean over non-padding tokens.
EMB_LAYER = -1
COMPLETE_MARKER = "COMPLETE"


def masked_lm_loss(outputs, labels, num_items_in_batch=None):
    """The loss of CPU micro-batches that accumulate into one step (spec.geneformer_micro_batch):
    cross-entropy summed over the masked tokens, divided by the masked tokens of the whole
    (accumulated) batch, which the Trainer counts; a lone batch divides by its own count."""
    logits = outputs.logits
    total = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).to(logits.device),
        ignore_index=-100, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
    return total / count


def mask_tokens(tokens: np.ndarray, rng: np.random.Generator, vocab_size: int):
    """BERT masking of one cell: returns (input_ids, labels) with labels -100 where unmasked."""
    tokens = np.asarray(tokens, dtype=np.int64)
    selected = rng.random(len(tokens)) < MLM_PROBABILITY
    if not selected.any():  # every cell contributes at least one prediction
        selected[rng.integers(len(tokens))] = True
    labels = np.where(selected, tokens, -100)
    inputs = tokens.copy()
    r = rng.random(len(tokens))
    inputs[selected & (r < 0.8)] = MASK_ID
    swap = selected & (r >= 0.8) & (r < 0.9)
    inputs[swap] = rng.integers(2, vocab_size, size=int(swap.sum()))
    return inputs, labels


class MaskingCollator:
    """Pads a batch (pad id 0, labels -100) and masks cells that are not pre-masked."""

    def __init__(self, vocab_size: int, seed: int):
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(seed)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        pairs = [(f["input_ids"], f["labels"]) if "labels" in f
                 else mask_tokens(f["input_ids"], self.rng, self.vocab_size) for f in features]
        width = max(len(x) for x, _ in pairs)
        input_ids = np.full((len(pairs), width), PAD_ID, dtype=np.int64)
        labels = np.full((len(pairs), width), -100, dtype=np.int64)
        for i, (x, y) in enumerate(pairs):
            input_ids[i, : len(x)] = x
            labels[i, : len(y)] = y
        input_ids = torch.from_numpy(input_ids)
        return {"input_ids": input_ids, "attention_mask": (input_ids != PAD_ID).long(),
                "labels": torch.from_numpy(labels)}


class _CorpusDataset(torch.utils.data.Dataset):
    def __init__(self, corpus: Corpus, limit: int | None = None, fixed_mask_seed: int | None = None):
        self.corpus = corpus
        self.n = len(corpus) if limit is None else min(limit, len(corpus))
        self.fixed_mask_seed = fixed_mask_seed
        self.vocab_size = len(corpus.token_dictionary)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        tokens = self.corpus[i]
        if self.fixed_mask_seed is None:
            return {"input_ids": tokens}
        x, y = mask_tokens(tokens, np.random.default_rng([self.fixed_mask_seed, i]), self.vocab_size)
        return {"input_ids": x, "labels": y}


class _LengthGroupedTrainer(Trainer):
    """Batches of cells of similar length (less padding), with the lengths taken from the corpus index
    rather than from a pass over the tokens."""

    def __init__(self, *args, lengths: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self._lengths = lengths

    def _get_train_sampler(self, train_dataset=None):
        g = torch.Generator().manual_seed(self.args.data_seed)
        return LengthGroupedSampler(self.args.train_batch_size, lengths=self._lengths, generator=g)


class _MarkComplete(TrainerCallback):
    """Marks each checkpoint once written in full, so a retry resumes only from a complete one."""

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if path.is_dir():
            (path / COMPLETE_MARKER).touch()


def _length_grouping() -> dict:
    """transformers 5 names the length-grouped sampler a strategy; 4.x has a boolean flag."""
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "train_sampling_strategy" in fields:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def _stop_reason(state, max_steps: int | None) -> str:
    steps = int(state.global_step)
    if steps < state.max_steps:
        return "early_stopping"
    return "max_steps" if max_steps is not None and steps == max_steps else "max_epochs"


def _history_with_final_eval(trainer) -> pd.DataFrame:
    """The logged losses; a run shorter than one evaluation interval gets its final validation loss."""
    state = trainer.state
    history = _history(state.log_history)
    if history["validation_loss"].notna().sum() == 0:
        final = trainer.evaluate()["eval_loss"]
        history = pd.concat([history, pd.DataFrame(
            {"epoch": [state.epoch], "step": [state.global_step],
             "train_loss": [np.nan], "validation_loss": [final]})], ignore_index=True)
    return history


class GeneformerModel(RepresentationModel):
    algorithm = "geneformer"
    embedding_dim = GENEFORMER_BERT["hidden_size"]
    reads = "corpus"
    dagster_kind = "pytorch"

    @classmethod
    def gpu_mib(cls, stage: str, n_genes: int, params: dict) -> int:
        return {"model": geneformer_train_mib, "embeddings": geneformer_embed_mib}.get(stage, lambda g: 0)(n_genes)

    @classmethod
    def parameter_count(cls, n_genes: int, params: dict) -> int:
        return geneformer_parameters(n_genes)

    def __init__(self, gene_ids, budget="default", seed=0, device=None):
        super().__init__(gene_ids, budget, seed, device)
        self.token_dictionary = TokenDictionary(self.gene_ids)
        self.model = None  # BertForMaskedLM once built
        self._num_train_epochs: int | None = None
        self._micro_batch: int | None = None  # cells per forward pass while training (set by fit)
        self.resumed_from_step: int | None = None  # set by fit when it resumed from a checkpoint

    def config(self):
        return BertConfig(vocab_size=len(self.token_dictionary), **BERT_CONFIG)

    def _build(self):
        torch.manual_seed(self.seed)
        return BertForMaskedLM(self.config())

    def n_parameters(self) -> int:
        model = self.model if self.model is not None else self._build()
        # parameters() yields the tied word-embedding / LM-decoder matrix once
        return int(sum(p.numel() for p in model.parameters()))

    def hyperparameters(self) -> dict:
        b = get_budget(self.budget).geneformer
        return {"algorithm": self.algorithm, "bert": {**BERT_CONFIG, "vocab_size": len(self.token_dictionary)},
                "training": TRAINING, "micro_batch_size": self._micro_batch,
                "gradient_accumulation_steps": self._accumulation_steps(),
                "loss": "sum over masked tokens / masked tokens of the 64-cell batch", "mlm_probability": MLM_PROBABILITY, "mask_token_id": MASK_ID,
                "group_by_length": True, "warmup_steps": b.warmup_steps, "eval_steps": b.eval_steps,
                "early_stopping_patience": b.early_stopping_patience, "metric": "eval_loss",
                "load_best_model_at_end": True, "max_epochs_rule": "max(1, floor(10 * 1e7 / N))",
                "num_train_epochs": self._num_train_epochs, "max_steps": b.max_steps,
                "eval_max_cells": b.eval_max_cells, "budget": self.budget, "seed": self.seed,
                "emb_layer": EMB_LAYER,
                "embedding": "mean over non-padding tokens of the second-to-last layer (Geneformer emb_layer=-1)"}

    def _accumulation_steps(self) -> int | None:
        return None if self._micro_batch is None else TRAINING["per_device_train_batch_size"] // self._micro_batch

    def _check_corpus(self, corpus, what: str) -> Corpus:
        if not isinstance(corpus, Corpus):
            raise InputError(f"geneformer: the {what} must be a tokenized Corpus (see "
                             f"scaling_assets.data.corpus.build_corpus), got {type(corpus).__name__}")
        if corpus.token_dictionary != self.token_dictionary:
            raise InputError(
                f"geneformer: the {what} at {corpus.directory} was built with a different token "
                f"dictionary than the model ({corpus.token_dictionary.difference(self.token_dictionary)})")
        return corpus

    def fit(self, train, validation=None, progress=False, checkpoint_dir=None) -> FitReport:
        start = time.perf_counter()
        self._check_fit_inputs(train, validation)
        b = get_budget(self.budget).geneformer
        self._num_train_epochs = b.max_epochs(len(train))
        self._micro_batch = geneformer_micro_batch(int(np.max(train.lengths)), self.device)
        own_ckpt = checkpoint_dir is None  # a caller's folder outlives a killed attempt: resume from it
        ckpt = Path(tempfile.mkdtemp(prefix="geneformer-ckpt-") if own_ckpt else checkpoint_dir)
        self.model = self._build()
        resume = latest_complete_checkpoint(ckpt) if not own_ckpt else None
        self.resumed_from_step = int(resume.name.split("-")[1]) if resume is not None else None
        with _quiet_transformers():
            trainer = self._trainer(train, validation, b, ckpt, progress)
            if not progress:  # without tqdm the Trainer prints every log dict to stdout
                trainer.remove_callback(PrinterCallback)
            trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
            history = _history_with_final_eval(trainer)
        self.model = trainer.model.to(self.device if self.device.startswith("cuda") else "cpu").eval()
        if own_ckpt:
            shutil.rmtree(ckpt, ignore_errors=True)
        state = trainer.state
        best = state.best_metric if state.best_metric is not None else history["validation_loss"].dropna().iloc[-1]
        train_losses = history["train_loss"].dropna()
        self.fit_report = FitReport(
            float(state.epoch or 0), int(state.global_step), _stop_reason(state, b.max_steps),
            float(train_losses.iloc[-1]) if len(train_losses) else None, float(best),
            time.perf_counter() - start, self.device, self.budget, history)
        return self.fit_report

    def _check_fit_inputs(self, train, validation) -> None:
        self._check_corpus(train, "training corpus")
        if len(train) == 0:
            raise InputError("geneformer: the training corpus is empty (0 cells)")
        if validation is None:
            raise InputError("geneformer: a validation corpus is required (its loss drives early stopping)")
        self._check_corpus(validation, "validation corpus")
        if len(validation) < 1:
            raise InputError("geneformer: the validation corpus has no cells with tokens; "
                             "at least 1 is needed to evaluate the masked-LM loss")

    def _training_arguments(self, b, ckpt: Path, progress: bool) -> TrainingArguments:
        """The reference's Trainer settings (models/spec.py) with the budget's length and this run's batch."""
        cuda = self.device.startswith("cuda")
        return TrainingArguments(
            output_dir=str(ckpt), **{**TRAINING, "per_device_train_batch_size": self._micro_batch,
                                     "per_device_eval_batch_size": min(TRAINING["per_device_eval_batch_size"],
                                                                       4 * self._micro_batch)},
            gradient_accumulation_steps=self._accumulation_steps(), warmup_steps=b.warmup_steps,
            num_train_epochs=self._num_train_epochs, max_steps=b.max_steps or -1,
            eval_strategy="steps", eval_steps=b.eval_steps, save_strategy="steps", save_steps=b.eval_steps,
            save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="eval_loss",
            greater_is_better=False, logging_strategy="steps", logging_steps=b.eval_steps,
            report_to="none", seed=self.seed, data_seed=self.seed, use_cpu=not cuda,
            bf16=cuda and torch.cuda.is_bf16_supported(), dataloader_num_workers=0,
            remove_unused_columns=False, disable_tqdm=not progress, save_only_model=False,
            prediction_loss_only=True,  # never gather (cells × 512 × vocab) logits during eval
            **_length_grouping())

    def _trainer(self, train: Corpus, validation: Corpus, b, ckpt: Path, progress: bool) -> Trainer:
        return _LengthGroupedTrainer(
            model=self.model, args=self._training_arguments(b, ckpt, progress),
            lengths=np.asarray(train.lengths).tolist(),
            train_dataset=_CorpusDataset(train),
            eval_dataset=_CorpusDataset(validation, b.eval_max_cells, fixed_mask_seed=self.seed),
            data_collator=MaskingCollator(len(self.token_dictionary), self.seed),
            compute_loss_func=masked_lm_loss,
            callbacks=[EarlyStoppingCallback(early_stopping_patience=b.early_stopping_patience), _MarkComplete()])

    def embed(self, data, batch_size: int | None = None) -> np.ndarray:
        self._require_fitted()
        corpus = self._check_corpus(data, "corpus to embed")
        # no backward: activations of one layer at a time, so 4x the training micro-batch fits the budget
        bs = batch_size or min(100, 4 * geneformer_micro_batch(int(np.max(corpus.lengths, initial=1)), self.device))
        return embed_token_cells(self.model.bert, np.asarray(corpus.lengths), corpus.__getitem__,
                                 self.model.config.num_hidden_layers + EMB_LAYER, PAD_ID, self.device, bs)

    def _save_native(self, directory: Path) -> None:
        self.model.save_pretrained(directory / "hf")
        self.token_dictionary.save(directory / "dictionary.json")

    @classmethod
    def _load_native(cls, directory: Path, meta: dict) -> GeneformerModel:
        model = cls(meta["gene_ids"], meta["budget"], meta["seed"])
        saved = TokenDictionary.load(directory / "dictionary.json")
        if saved != model.token_dictionary:
            raise InputError(f"{directory}: dictionary.json does not match the model's genes")
        model.model = BertForMaskedLM.from_pretrained(directory / "hf").eval()
        model._num_train_epochs = meta["hyperparameters"].get("num_train_epochs")
        model._micro_batch = meta["hyperparameters"].get("micro_batch_size")
        return model


@torch.no_grad()
def embed_token_cells(encoder, lengths: np.ndarray, cell_tokens, hidden_layer: int, pad_id: int, device: str,
                      batch_size: int) -> np.ndarray:
    """Each cell's mean over its tokens of ``hidden_states[hidden_layer]`` (``hidden_states[0]`` is the token
    embedding) of a BERT encoder, in batches of cells of similar length (less padding). ``cell_tokens(i)``:
    cell i's token ids. A cell without tokens keeps a zero row."""
    encoder = encoder.to(device).eval()
    out = np.zeros((len(lengths), encoder.config.hidden_size), dtype=np.float32)
    order = np.argsort(lengths, kind="stable")
    order = order[np.asarray(lengths)[order] > 0]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        cells = [cell_tokens(i) for i in idx]
        ids = np.full((len(cells), max(len(c) for c in cells)), pad_id, dtype=np.int64)
        for j, c in enumerate(cells):
            ids[j, : len(c)] = c
        ids = torch.from_numpy(ids).to(device, non_blocking=True)
        mask = (ids != pad_id)
        hidden = encoder(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states[hidden_layer]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        out[idx] = ((hidden * m).sum(1) / m.sum(1)).float().cpu().numpy()
    return out


def _history(log_history: list[dict]) -> pd.DataFrame:
    """One row per evaluation: the step, epoch, last logged train loss and the eval loss."""
    rows, last_train = [], np.nan
    for entry in log_history:
        if "loss" in entry:
            last_train = entry["loss"]
        if "eval_loss" in entry:
            rows.append({"epoch": entry.get("epoch"), "step": entry.get("step"),
                         "train_loss": last_train, "validation_loss": entry["eval_loss"]})
    return pd.DataFrame(rows, columns=["epoch", "step", "train_loss", "validation_loss"])


def latest_complete_checkpoint(checkpoint_dir) -> Path | None:
    """The newest ``checkpoint-N`` that was fully written (has the COMPLETE marker)."""
    done = [p for p in Path(checkpoint_dir).glob("checkpoint-*") if (p / COMPLETE_MARKER).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


@contextlib.contextmanager
def _quiet_transformers():
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
