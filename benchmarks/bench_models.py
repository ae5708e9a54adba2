"""Throughput of the models on this machine: corpus building (cells/s), SCVI training (cells/s),
Geneformer training (tokens/s), and wall time of one fit per algorithm under a budget.

    .venv/bin/python benchmarks/bench_models.py [--cells 3000] [--genes 1000] [--budget default]
        [--fits-only | --throughput-only] [--algorithms pca,scvi] [--device cuda]

Data: scaling_assets.models.synthetic.simulate_counts (clustered negative binomial, ~2,000 UMIs
per cell). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

from scaling_assets.models import get_model_class
from scaling_assets.models.base import resolve_device
from scaling_assets.models.synthetic import simulate_counts
from scaling_assets.data.corpus import Corpus, TokenDictionary, build_corpus, gene_nonzero_medians


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def make_corpora(src, n_train, tmp):
    train_rows, val_rows = np.arange(n_train), np.arange(n_train, src.n_obs)
    t = time.perf_counter()
    medians = gene_nonzero_medians(src, train_rows)
    t_med = time.perf_counter() - t
    td = TokenDictionary(src.var_names)
    t = time.perf_counter()
    summary = build_corpus(src, f"{tmp}/train", medians, td, rows=train_rows)
    t_build = time.perf_counter() - t
    build_corpus(src, f"{tmp}/val", medians, td, rows=val_rows)
    return Corpus(f"{tmp}/train"), Corpus(f"{tmp}/val"), {
        "medians_cells_per_s": n_train / t_med, "corpus_cells_per_s": n_train / t_build,
        "corpus_mean_tokens_per_cell": summary["mean_length"]}


def scvi_throughput(src, device, epochs=3):
    """Cells/s over a few epochs of SCVI training (the 80% train split counts as the cells seen)."""
    from scaling_assets.data.counts import InMemoryCounts
    from scaling_assets.models.scvi import SCVIModel

    m = SCVIModel(src.var_names, budget="test", seed=0, device=device)
    m.fit(InMemoryCounts(src.read_rows(0, min(src.n_obs, 512)), var_names=src.var_names))  # warm-up
    t = time.perf_counter()
    report = m.fit(src)
    dt = time.perf_counter() - t
    return {"scvi_train_cells_per_s": report.epochs * int(np.ceil(0.8 * src.n_obs)) / dt,
            "scvi_epochs_timed": report.epochs}


def geneformer_throughput(train, device, steps=3):
    """Training tokens/s (non-padding tokens seen) over a few optimisation steps, no evaluation."""
    from transformers import BertForMaskedLM

    from scaling_assets.models.geneformer import MaskingCollator, GeneformerModel

    gm = GeneformerModel(train.token_dictionary.gene_ids, device=device)
    model: BertForMaskedLM = gm._build().to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.001)
    collate = MaskingCollator(len(train.token_dictionary), 0)
    rng = np.random.default_rng(0)
    tokens, elapsed = 0, 0.0
    for step in range(steps + 1):  # step 0 warms up
        batch = collate([{"input_ids": train[int(i)]} for i in rng.integers(0, len(train), 64)])
        batch = {k: v.to(device) for k, v in batch.items()}
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step:
            elapsed += time.perf_counter() - t
            tokens += int(batch["attention_mask"].sum())
    return {"geneformer_train_tokens_per_s": tokens / elapsed, "geneformer_steps_timed": steps}


def fit_times(src, train, val, budget, device, algorithms):
    from scaling_assets.data.counts import InMemoryCounts

    n_train = len(train.rows)
    pool = InMemoryCounts(src.read_rows(0, n_train), var_names=src.var_names)
    out = {}
    for name in algorithms:
        model = get_model_class(name)(src.var_names, budget=budget, seed=0, device=device)
        t = time.perf_counter()
        report = model.fit(train, val) if name == "geneformer" else model.fit(pool)
        out[name] = {"fit_s": round(time.perf_counter() - t, 2), "epochs": report.epochs,
                     "steps": report.steps, "stop_reason": report.stop_reason}
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--cells", type=int, default=3000)
    p.add_argument("--genes", type=int, default=1000)
    p.add_argument("--budget", default="default")
    p.add_argument("--device", default=None)
    p.add_argument("--fits-only", action="store_true")
    p.add_argument("--throughput-only", action="store_true")
    p.add_argument("--algorithms", default="pca,random_projection,scvi,geneformer")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    src = simulate_counts(a.cells + 1000, a.genes, seed=0)
    result = {"device": device, "device_name": device_name(device), "cells": a.cells, "genes": a.genes}
    # libraries print progress to stdout: keep stdout for the JSON result
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        train, val, corpus_stats = make_corpora(src, a.cells, tmp)
        result.update(corpus_stats)
        if not a.fits_only:
            from scaling_assets.data.counts import InMemoryCounts

            result.update(scvi_throughput(InMemoryCounts(src.read_rows(0, a.cells), var_names=src.var_names), device))
            result.update(geneformer_throughput(train, device))
        if not a.throughput_only:
            result["fits"] = {"budget": a.budget, **fit_times(src, train, val, a.budget, device, a.algorithms.split(","))}
    result["load_average_1min"] = os.getloadavg()[0]  # the machine may be shared
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
