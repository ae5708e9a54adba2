"""What a study costs before it runs: training runs, cells read, bytes on disk by asset, GPU hours.

Works from the study file alone (configured cell counts; no data needs to be present). Estimates,
each named in the output:

- non-zero entries per cell at q: ``G_eff * (1 - exp(-u_q / G_eff))`` with ``G_eff = genes / 4``
  (UMIs sampled over the quarter of the genes that carry most of the expression), ``u_q = q * u_1``;
  a CSR cell costs ``8 * nnz + 8`` bytes (int32 counts and gene index, int64 indptr), a corpus cell
  ``4 * min(nnz, 512) + 32`` bytes (token ids, offset, length, pool row, cell id).
- epochs are the budget's upper bounds (early stopping ends most runs sooner), so cells read by
  SCVI/Geneformer and GPU hours are upper bounds.
- GPU time: every step that leases a GPU, at one process's rate on a GPU that 8 such processes share
  (how it was measured), so it counts the time the steps hold a GPU, an upper bound on how long the
  GPU is busy when several run at once: SCVI training (a fixed cost a fit plus cells read / rate),
  Geneformer training (tokens / rate), SCVI and Geneformer embeddings (cells / rate) and every MI
  estimate (LMI runs on the GPU for every algorithm, PCA's included).
- rates: ``GPUS`` names them per GPU with their source (``--gpu``); ``--throughput NAME=RATE`` replaces
  one with a measured figure. The H200's are measured (``benchmarks/gpu_check_h200*.json``, 2026-12-04,
  8 processes sharing one H200, 1,000 genes): 36 SCVI fits (paper budget, 100-25,600 cells) took 1.6 s
  + cells read / 24,400 per s (least squares over the fits, an epoch reading the N cells; 20,000 is
  configured, 20% slower); a fast-preset LMI estimate on 3,000 test cells (100 epochs) a median 2.75 s
  (1.6-3.6 s); Geneformer trained 712,000 tokens/s at 1,000 genes and ~190,000 at 20,000 (64 x 512
  tokens a step in 46 and 173 ms), so the configured 150,000 errs long for real datasets. The embedding rate (50,000 cells/s) is assumed: a
  Geneformer embedding measured 4,600 cells/s (3,000 cells of 512 tokens in 0.65 s), an SCVI one was
  not timed apart from its fit. No H100 has run these steps: see ``GPUS["h100"]`` for how its rates
  are derived.
- a study's own model (``models:`` block, entry point): its training is counted as one read of its cells
  (its epochs are its own: a lower bound) and its model holds ``parameter_count(genes)`` parameters (its
  declaration); its GPU hours are priced with ``--throughput <name>=<training cells/s>`` when it declares a
  GPU need, and listed as not priced otherwise. A frozen pretrained model trains nothing: its cost is its
  embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scaling_assets.models.budget import get_budget
from scaling_assets.models.spec import GENEFORMER_BATCH, MAX_TOKENS
from scaling_assets.models.registry import BUILTIN
from scaling_assets.study.spec import Study

ASSUMED_GENES = 20_000  # real datasets whose gene count the study file does not give
ASSUMED_UMIS = 3_000
RECORD_BYTES = 1_024  # a row-range record (train_counts / train_corpus)
LMI_PRESET_MEASURED = "fast"  # the preset whose estimates the LMI rate was measured on


@dataclass(frozen=True)
class GpuRates:
    """One process's rates on a GPU shared by 8 (SCVI training cells/s, Geneformer training tokens/s,
    embedding cells/s, LMI estimates/s), a fixed cost per SCVI fit, and where the figures come from."""

    name: str
    throughputs: dict[str, float]
    scvi_fit_s: float
    source: str


_H200 = {"scvi": 20_000.0, "geneformer": 150_000.0, "embed": 50_000.0, "lmi": round(1 / 2.75, 3)}
# H100 SXM and H200 are the same GH100 chip (132 SMs, same clocks); the H200 has 1.43x the memory
# bandwidth (4.8 against 3.35 TB/s) and 141 against 80 GB. SCVI's and LMI's steps are bound by kernel
# launches, not by the chip: SCVI's 512 x 1,000-gene step (~8 GFLOP) at 26-29 ms ran ~0.3 TFLOP/s of the
# chip's ~60 fp32 TFLOP/s, so their rates are taken as the H200's. Geneformer's tokens/s is scaled by the
# bandwidth ratio (its vocabulary-wide logits are the memory-heavy part): a bound, not a measurement.
GPUS = {
    "h200": GpuRates("h200", _H200, 1.6, "measured on one H200, 8 processes sharing it (benchmarks/gpu_check_h200*.json, "
                     "2026-12-04); embed assumed"),
    "h100": GpuRates("h100", {**_H200, "geneformer": round(_H200["geneformer"] * 3.35 / 4.8, -3)}, 1.6,
                     "derived from the H200's (same GH100 chip; SCVI, LMI and embeddings launch-bound: the H200's "
                     "rates; Geneformer x 3.35/4.8, the memory-bandwidth ratio); not measured on an H100: "
                     "awaits a GPU run (benchmarks/gpu_laws_study.sh)"),
}
DEFAULT_GPU = "h200"
THROUGHPUTS = GPUS[DEFAULT_GPU].throughputs  # the names --throughput accepts, and the default rates


@dataclass
class DatasetPlan:
    name: str
    cells: int
    pool: int
    eval_cells: int
    genes: int
    umis_per_cell: float
    notes: list[str] = field(default_factory=list)
    training_runs: int = 0
    cells_read: dict[str, float] = field(default_factory=dict)
    bytes_by_asset: dict[str, float] = field(default_factory=dict)
    copy_layout_bytes: float = 0.0  # train_counts / train_corpus written per setting (the old layout)
    gpu_hours: dict[str, float] = field(default_factory=dict)
    not_priced: list[str] = field(default_factory=list)  # own models with a GPU need and no given throughput
    mi_estimates: int = 0  # one per training run and signal


def nnz_per_cell(umis: float, genes: int) -> float:
    g_eff = max(genes / 4, 1.0)
    return g_eff * (1.0 - math.exp(-umis / g_eff))


def csr_bytes(cells: float, nnz: float) -> float:
    return cells * (8 * nnz + 8)


def corpus_bytes(cells: float, nnz: float) -> float:
    return cells * (4 * min(nnz, MAX_TOKENS) + 32)


def geneformer_cells_read(budget, cells: int) -> int:
    """Cells a Geneformer fit reads at most: its epochs, or its budget's optimiser steps of 64 cells."""
    bound = cells * budget.geneformer.max_epochs(cells)
    steps = budget.geneformer.max_steps
    return bound if steps is None else min(bound, steps * GENEFORMER_BATCH)


def plan_dataset(study: Study, name: str, throughputs: dict[str, float], scvi_fit_s: float = 0.0) -> DatasetPlan:
    d = study.datasets[name]
    notes = []
    if not d.cells:
        raise ValueError(f"dataset {name}: the study file gives no `cells`; the planner needs the cell count")
    genes = d.genes or ASSUMED_GENES
    if not d.genes:
        notes.append(f"genes assumed {ASSUMED_GENES:,}")
    umis = d.umis_per_cell or ASSUMED_UMIS
    if not d.umis_per_cell:
        notes.append(f"UMIs/cell assumed {ASSUMED_UMIS:,}")
    n_test = study.test_size(name) or 0
    n_eval = n_test + study.validation_size(name)
    p = DatasetPlan(name, d.cells, d.cells - n_eval, n_eval, genes, umis, notes)
    seeds, qualities, algorithms = len(study.all_seeds()), d.qualities, study.algorithms
    runs = {a: study.settings(name, a) for a in algorithms}  # an algorithm's own grid, if it has one
    settings = study.settings(name)  # train_counts: every setting of the dataset
    p.training_runs = sum(len(r) for r in runs.values())
    budget = get_budget(study.budget)
    gf = "geneformer" in algorithms
    gf_qualities = study.qualities_of(name, "geneformer") if gf else ()
    models = study.models
    nnz = {q: nnz_per_cell(q * umis, genes) for q in qualities}

    read = p.cells_read
    read["split"] = seeds * d.cells
    read["pool_counts"] = seeds * p.pool
    read["eval_counts"] = seeds * len(qualities) * n_eval
    hvg = [a for a in algorithms if models[a].hvg_genes]
    if hvg:  # zero-UMI scan + gene statistics of the largest training set of the models that read the genes
        read["pca_genes"] = 2 * seeds * max(max(study.sizes_of(name, a)) for a in hvg)
    if gf:
        read["gene_medians"] = seeds * p.pool  # one table per seed, at full quality
        read["pool_corpus"] = len(study.seeds_of("geneformer")) * len(gf_qualities) * p.pool
    read["train_counts"] = sum(s.cells for s in settings)  # one pass: cells with no UMI, UMIs per cell
    for a, trained in runs.items():
        if a == "pca":
            read["model_pca"] = 2 * sum(s.cells for s in trained)  # gene statistics pass + Gram pass
        elif a == "random_projection":
            read["model_random_projection"] = 0  # the projection needs no data, only the gene count
        elif a == "scvi":
            # an epoch reads the N cells: the 80% it trains on and the 20% it validates on
            read["model_scvi"] = sum(s.cells * budget.scvi.max_epochs(s.cells) for s in trained)
        elif a == "geneformer":
            read["model_geneformer"] = sum(geneformer_cells_read(budget, s.cells) for s in trained)
        else:  # a study's own model: one pass over its training cells (a frozen one reads none)
            read[f"model_{a}"] = sum(s.cells for s in trained)
        read[f"embeddings_{a}"] = len(trained) * n_test

    b = p.bytes_by_asset
    b["raw_counts"] = csr_bytes(d.cells, nnz_per_cell(umis, genes))
    b["pool_counts"] = seeds * csr_bytes(p.pool, nnz_per_cell(umis, genes))
    b["eval_counts"] = seeds * sum(csr_bytes(n_eval, nnz[q]) for q in qualities)
    b["train_counts"] = len(settings) * RECORD_BYTES
    p.copy_layout_bytes = sum(csr_bytes(s.cells, nnz[s.quality]) for s in settings)
    if gf:
        gf_seeds = len(study.seeds_of("geneformer"))
        b["pool_corpus"] = gf_seeds * sum(corpus_bytes(p.pool, nnz[q]) for q in gf_qualities)
        b["eval_corpus"] = gf_seeds * sum(corpus_bytes(n_eval, nnz[q]) for q in gf_qualities)
        b["train_corpus"] = len(runs["geneformer"]) * RECORD_BYTES
        p.copy_layout_bytes += sum(corpus_bytes(s.cells, nnz[s.quality]) for s in runs["geneformer"])
    for a, trained in runs.items():
        # a frozen model's partition is a pointer to its checkpoint, not a copy
        b[f"model_{a}"] = 0 if models[a].pretrained else len(trained) * 4 * models[a].parameters(genes)
        b[f"embeddings_{a}"] = len(trained) * n_test * 4 * models[a].embedding_dim

    if "scvi" in algorithms:
        p.gpu_hours["scvi"] = (read["model_scvi"] / throughputs["scvi"] + len(runs["scvi"]) * scvi_fit_s) / 3600
    if gf:
        tokens = sum(geneformer_cells_read(budget, s.cells) * min(nnz[s.quality], MAX_TOKENS) for s in runs["geneformer"])
        p.gpu_hours["geneformer"] = tokens / throughputs["geneformer"] / 3600
    for a in algorithms:
        if a in BUILTIN or not models[a].gpu_need_mib("model", genes):
            continue
        if a in throughputs:
            p.gpu_hours[a] = read[f"model_{a}"] / throughputs[a] / 3600
        else:
            p.not_priced.append(a)
    gpu_algos = [a for a in algorithms if models[a].gpu_need_mib("embeddings", genes)]
    p.gpu_hours["embeddings"] = sum(read[f"embeddings_{a}"] for a in gpu_algos) / throughputs["embed"] / 3600
    p.mi_estimates = sum(len(trained) for trained in runs.values()) * len(d.signals)
    p.gpu_hours["lmi"] = p.mi_estimates / throughputs["lmi"] / 3600
    return p


def seed_pools(study: Study, name: str) -> dict[int, dict]:
    """The split summary of every seed whose split is materialised: real test, validation and pool sizes."""
    import json

    from scaling_assets.layout import SUMMARY_FILE, partition_dir

    pools = {}
    for seed in study.seeds:
        summary = partition_dir(study.root, [name, "split"], f"s={seed}") / SUMMARY_FILE
        try:
            pools[seed] = json.loads(summary.read_text())
        except (OSError, ValueError):
            continue  # not split yet (or split by a version that wrote no summary)
    return pools


def sizes_report(study: Study, name: str) -> list[str]:
    """Which training sizes the dataset really gets, and why they fit every seed's pool.

    Lineage and spatial splits hold out whole clones and tiles; they never take more than the requested
    test and validation cells, so each seed's pool holds at least the nominal pool (cells - test -
    validation) that tops a log grid. Splits already made give each seed's real pool; a size above one
    (a study whose `cells` is not the raw file's) is named here and refused by that seed's split."""
    d = study.datasets[name]
    sizes = list(d.sizes)
    n_test = study.test_size(name)
    units = {"lineage": "whole clones", "spatial": "whole tiles"}.get(d.task)
    if d.pool is not None:
        how = f"{units} never take more than those, so every seed's pool holds it" if units else "every seed's pool has exactly that"
        lines = [f"sizes {sizes}: largest {sizes[-1]:,} within the nominal pool {d.pool:,} ({d.cells:,} cells - "
                 f"{n_test:,} test - {study.validation_size(name):,} validation; {how})"]
    else:
        lines = [f"sizes {sizes} (the study file gives no `cells`: each seed's split checks that its pool holds "
                 f"{sizes[-1]:,} cells)"]
    pools = seed_pools(study, name)
    if pools:
        lines.append("split: " + ", ".join(
            f"s={seed} pool {p['pool_cells']:,} (test {p['test_cells']:,}, validation {p['validation_cells']:,})"
            for seed, p in pools.items()))
        for seed, p in pools.items():
            above = [n for n in sizes if n > p["pool_cells"]]
            if above:
                lines.append(f"s={seed}: sizes {above} exceed its pool of {p['pool_cells']:,} cells and cannot run")
    return lines


def gpu_rates(gpu: str = DEFAULT_GPU) -> GpuRates:
    from scaling_assets.errors import InputError

    if gpu not in GPUS:
        raise InputError(f"unknown GPU {gpu!r}; the planner has rates for {sorted(GPUS)}")
    return GPUS[gpu]


def plan_study(study: Study, throughputs: dict[str, float] | None = None, gpu: str = DEFAULT_GPU) -> list[DatasetPlan]:
    profile = gpu_rates(gpu)
    rates = dict(profile.throughputs, **(throughputs or {}))
    return [plan_dataset(study, name, rates, profile.scvi_fit_s) for name in study.datasets]


def gpu_minutes(plans: list[DatasetPlan]) -> float:
    """The plan's GPU time in minutes: every GPU step's upper bound, summed over the datasets."""
    return 60 * sum(sum(p.gpu_hours.values()) for p in plans)


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1000
    return ""


def format_plan(study: Study, plans: list[DatasetPlan], throughputs: dict[str, float] | None = None,
                gpu: str = DEFAULT_GPU) -> str:
    profile = gpu_rates(gpu)
    rates = dict(profile.throughputs, **(throughputs or {}))
    given = sorted(k for k in (throughputs or {}))
    lines = [f"study {study.name!r}: budget {study.budget}, seeds {list(study.seeds)}, algorithms {list(study.algorithms)}",
             f"GPU {profile.name}: {', '.join(f'{k} {_rate(v)}/s' for k, v in rates.items())} + {profile.scvi_fit_s:g} s "
             f"a SCVI fit (scvi/embed cells/s, geneformer tokens/s, lmi estimates/s): {profile.source}"
             + (f"; given: {', '.join(given)}" if given else ""),
             "cells read and GPU hours are upper bounds (max epochs; early stopping stops sooner), each step at one "
             "process's rate on a GPU 8 processes share"]
    preset = study.lmi.get("preset", LMI_PRESET_MEASURED)
    if preset != LMI_PRESET_MEASURED and "lmi" not in given:
        lines.append(f"LMI preset {preset!r}: priced at the {LMI_PRESET_MEASURED} preset's measured rate; it costs "
                     "more (more epochs, wider networks), not measured")
    lines.append("")
    total_bytes: dict[str, float] = {}
    totals = {"runs": 0, "read": 0.0, "gpu": 0.0, "copy": 0.0}
    for p in plans:
        disk = sum(p.bytes_by_asset.values())
        gpu = sum(p.gpu_hours.values())
        lines.append(f"== {p.name}: {p.cells:,} cells (pool {p.pool:,}, test+validation {p.eval_cells:,}), "
                     f"{p.genes:,} genes, {p.umis_per_cell:,.0f} UMIs/cell"
                     + (f" [{'; '.join(p.notes)}]" if p.notes else ""))
        lines += [f"   {line}" for line in sizes_report(study, p.name)]
        lines.append(f"   training runs {p.training_runs:,}; MI estimates {p.mi_estimates:,}; cells read "
                     f"{sum(p.cells_read.values()):,.0f}; GPU hours {gpu:,.2f} "
                     f"({', '.join(f'{k} {v:,.2f}' for k, v in p.gpu_hours.items())})"
                     + (f"; not priced: {', '.join(p.not_priced)} (give --throughput NAME=training cells/s)"
                        if p.not_priced else ""))
        lines.append("   cells read by asset: " + ", ".join(f"{k} {v:,.0f}" for k, v in p.cells_read.items()))
        lines.append("   bytes by asset: " + ", ".join(f"{k} {_size(v)}" for k, v in p.bytes_by_asset.items()))
        counted = p.bytes_by_asset.get("pool_counts", 0) + p.bytes_by_asset.get("pool_corpus", 0)
        lines.append(f"   on disk {_size(disk)}; training data {_size(counted)} as pools + row ranges vs "
                     f"{_size(p.copy_layout_bytes)} as per-setting copies ({p.copy_layout_bytes / max(counted, 1):.1f}x)")
        for k, v in p.bytes_by_asset.items():
            total_bytes[k] = total_bytes.get(k, 0) + v
        totals["runs"] += p.training_runs
        totals["read"] += sum(p.cells_read.values())
        totals["gpu"] += gpu
        totals["copy"] += p.copy_layout_bytes
    lines += ["", f"== total: training runs {totals['runs']:,}; cells read {totals['read']:,.0f}; "
              f"GPU hours {totals['gpu']:,.2f} ({60 * totals['gpu']:,.1f} GPU-minutes on one {profile.name}); "
              f"on disk {_size(sum(total_bytes.values()))}",
              "   bytes by asset: " + ", ".join(f"{k} {_size(v)}" for k, v in total_bytes.items())]
    return "\n".join(lines)
