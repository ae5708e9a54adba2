"""What a study costs before it runs: training runs, cells read, bytes on disk by asset, GPU hours.

Works from the study file alone (configured cell counts; no data needs to be present). Estimates,
each named in the output:

- non-zero entries per cell at q: ``G_eff * (1 - exp(-u_q / G_eff))`` with ``G_eff = genes / 4``
  (UMIs sampled over the quarter of the genes that carry most of the expression), ``u_q = q * u_1``;
  a CSR cell costs ``8 * nnz + 8`` bytes (int32 counts and gene index, int64 indptr), a corpus cell
  ``4 * min(nnz, 512) + 32`` bytes (token ids, offset, length, pool row, cell id).
- epochs are the budget's upper bounds (early stopping ends most runs sooner), so cells read by
  SCVI/Geneformer and GPU hours are upper bounds.
- throughputs: ``THROUGHPUTS`` below are configured assumptions for one data-centre GPU; pass measured
  ones with ``--throughput scvi=..`` etc.
- a study's own model (``models:`` block, entry point): its training is counted as one read of its cells
  (its epochs are its own: a lower bound) and its model holds ``parameter_count(genes)`` parameters (its declaration); its GPU hours are
  priced with ``--throughput <name>=<training cells/s>`` when it declares a GPU need, and listed as not
  priced otherwise. A frozen pretrained model trains nothing: its cost is its embeddings. On an H200 (``benchmarks/gpu_check_h200*.json``, 2026-12-04)
  SCVI's 25,600-cell paper fit read ~20,000 cells/s (105 epochs of ~21,000 training cells in 110 s,
  8 processes sharing the GPU), as assumed; Geneformer trained 712,000 tokens/s at 1,000 genes and
  ~190,000 at 20,000 (64 x 512 tokens a step in 46 and 173 ms), so 150,000 errs long for real datasets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scaling_assets.models.budget import get_budget
from scaling_assets.models.spec import MAX_TOKENS
from scaling_assets.models.registry import BUILTIN
from scaling_assets.study.spec import Study

ASSUMED_GENES = 20_000  # real datasets whose gene count the study file does not give
ASSUMED_UMIS = 3_000
RECORD_BYTES = 1_024  # a row-range record (train_counts / train_corpus)
# configured GPU throughputs (assumptions, checked on an H200: see the module doc): SCVI training cells/s, Geneformer
# training tokens/s, embedding cells/s for both
THROUGHPUTS = {"scvi": 20_000.0, "geneformer": 150_000.0, "embed": 50_000.0}


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


def nnz_per_cell(umis: float, genes: int) -> float:
    g_eff = max(genes / 4, 1.0)
    return g_eff * (1.0 - math.exp(-umis / g_eff))


def csr_bytes(cells: float, nnz: float) -> float:
    return cells * (8 * nnz + 8)


def corpus_bytes(cells: float, nnz: float) -> float:
    return cells * (4 * min(nnz, MAX_TOKENS) + 32)


def plan_dataset(study: Study, name: str, throughputs: dict[str, float]) -> DatasetPlan:
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
    seeds, qualities, algorithms = len(study.seeds), d.qualities, study.algorithms
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
        read["pool_corpus"] = seeds * len(gf_qualities) * p.pool
    read["train_counts"] = sum(s.cells for s in settings)  # one pass: cells with no UMI, UMIs per cell
    for a, trained in runs.items():
        if a == "pca":
            read["model_pca"] = 2 * sum(s.cells for s in trained)  # gene statistics pass + Gram pass
        elif a == "random_projection":
            read["model_random_projection"] = 0  # the projection needs no data, only the gene count
        elif a == "scvi":
            read["model_scvi"] = sum(s.cells * budget.scvi.max_epochs(s.cells) for s in trained)
        elif a == "geneformer":
            read["model_geneformer"] = sum(s.cells * budget.geneformer.max_epochs(s.cells) for s in trained)
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
        b["pool_corpus"] = seeds * sum(corpus_bytes(p.pool, nnz[q]) for q in gf_qualities)
        b["eval_corpus"] = seeds * sum(corpus_bytes(n_eval, nnz[q]) for q in gf_qualities)
        b["train_corpus"] = len(runs["geneformer"]) * RECORD_BYTES
        p.copy_layout_bytes += sum(corpus_bytes(s.cells, nnz[s.quality]) for s in runs["geneformer"])
    for a, trained in runs.items():
        # a frozen model's partition is a pointer to its checkpoint, not a copy
        b[f"model_{a}"] = 0 if models[a].pretrained else len(trained) * 4 * models[a].parameters(genes)
        b[f"embeddings_{a}"] = len(trained) * n_test * 4 * models[a].embedding_dim

    if "scvi" in algorithms:
        p.gpu_hours["scvi"] = read["model_scvi"] / throughputs["scvi"] / 3600
    if gf:
        tokens = sum(s.cells * budget.geneformer.max_epochs(s.cells) * min(nnz[s.quality], MAX_TOKENS)
                     for s in runs["geneformer"])
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


def plan_study(study: Study, throughputs: dict[str, float] | None = None) -> list[DatasetPlan]:
    rates = dict(THROUGHPUTS, **(throughputs or {}))
    return [plan_dataset(study, name, rates) for name in study.datasets]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1000
    return ""


def format_plan(study: Study, plans: list[DatasetPlan], throughputs: dict[str, float] | None = None) -> str:
    rates = dict(THROUGHPUTS, **(throughputs or {}))
    measured = sorted(k for k in (throughputs or {}))
    lines = [f"study {study.name!r}: budget {study.budget}, seeds {list(study.seeds)}, algorithms {list(study.algorithms)}",
             f"throughputs: {', '.join(f'{k} {v:,.0f}/s' for k, v in rates.items())} "
             f"({'given: ' + ', '.join(measured) if measured else 'configured assumptions, not measured'}; "
             "scvi/embed in cells/s, geneformer in tokens/s)",
             "cells read and GPU hours are upper bounds (max epochs; early stopping stops sooner)"
             + ("; a study's own models read their training cells once here (their epochs are their own: a lower "
                "bound)" if any(a not in BUILTIN for a in study.algorithms) else ""), ""]
    total_bytes: dict[str, float] = {}
    totals = {"runs": 0, "read": 0.0, "gpu": 0.0, "copy": 0.0}
    for p in plans:
        disk = sum(p.bytes_by_asset.values())
        gpu = sum(p.gpu_hours.values())
        lines.append(f"== {p.name}: {p.cells:,} cells (pool {p.pool:,}, test+validation {p.eval_cells:,}), "
                     f"{p.genes:,} genes, {p.umis_per_cell:,.0f} UMIs/cell"
                     + (f" [{'; '.join(p.notes)}]" if p.notes else ""))
        lines += [f"   {line}" for line in sizes_report(study, p.name)]
        lines.append(f"   training runs {p.training_runs:,}; cells read {sum(p.cells_read.values()):,.0f}; "
                     f"GPU hours {gpu:,.1f} ({', '.join(f'{k} {v:,.1f}' for k, v in p.gpu_hours.items())})"
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
              f"GPU hours {totals['gpu']:,.1f}; on disk {_size(sum(total_bytes.values()))}",
              "   bytes by asset: " + ", ".join(f"{k} {_size(v)}" for k, v in total_bytes.items())]
    return "\n".join(lines)
