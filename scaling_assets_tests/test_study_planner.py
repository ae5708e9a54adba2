"""The study planner works from the study file alone and counts what the grid implies."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scaling_assets.study.planner import csr_bytes, nnz_per_cell, plan_study
from scaling_assets.study.spec import load_study


@pytest.fixture(scope="module")
def paper():
    return load_study("paper", check_paths=False)  # no data present: configured cell counts only


def test_paper_plan_counts_runs_cells_and_storage(paper):
    plans = {p.name: p for p in plan_study(paper)}
    assert sum(p.training_runs for p in plans.values()) == 4_800
    dev = plans["development"]
    assert dev.pool == 10_000_000 - 30_000 - 1_000
    assert dev.cells_read["pool_counts"] == 3 * dev.pool  # the pool is written once per seed
    assert dev.cells_read["train_counts"] == sum(s.cells for s in paper.settings("development"))
    # training data: one pool per seed + one corpus per (q, seed) vs a copy per setting
    stored = dev.bytes_by_asset["pool_counts"] + dev.bytes_by_asset["pool_corpus"]
    assert dev.copy_layout_bytes / stored >= 2.0
    assert dev.bytes_by_asset["train_counts"] < 1e6  # records, not cells
    assert dev.bytes_by_asset["pool_counts"] == pytest.approx(3 * csr_bytes(dev.pool, nnz_per_cell(2500, 20_000)))
    assert "genes assumed 20,000" in dev.notes
    # GPU hours scale inversely with a given throughput
    doubled = {p.name: p for p in plan_study(paper, {"geneformer": 300_000.0})}
    assert doubled["development"].gpu_hours["geneformer"] == pytest.approx(dev.gpu_hours["geneformer"] / 2)


def test_plan_command_prints_totals_without_data(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "scaling_assets.cli", "study", "plan", "--study", "paper",
                           "--throughput", "geneformer=300000"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "== total: training runs 4,800" in proc.stdout
    assert "given: geneformer" in proc.stdout and "as per-setting copies" in proc.stdout


def test_laws_gpu_shows_both_laws_within_ten_h100_minutes():
    """Issue 42 item 6: PCA and SCVI from 10^3 to 10^5 cells at >= 4 qualities, priced at <= 10 GPU-minutes."""
    from scaling_assets.study.planner import format_plan, gpu_minutes

    study = load_study("laws_gpu", check_paths=False)
    assert set(study.algorithms) == {"pca", "scvi"}
    for name in study.datasets:
        for algorithm in study.algorithms:
            sizes = study.sizes_of(name, algorithm)
            assert sizes[0] == 1_000 and sizes[-1] == 100_000 and len(sizes) >= 4
            assert len(study.qualities_of(name, algorithm)) >= 4
    plans = plan_study(study, gpu="h100")
    minutes = gpu_minutes(plans)
    assert 5 < minutes <= 10
    text = format_plan(study, plans, gpu="h100")
    assert f"({minutes:,.1f} GPU-minutes on one h100)" in text
    assert "not measured on an H100: awaits a GPU run" in text  # the H100's rates say where they come from


def test_gpu_time_counts_every_gpu_step_at_the_measured_rates(paper):
    from scaling_assets.errors import InputError
    from scaling_assets.study.planner import GPUS

    dev = {p.name: p for p in plan_study(paper)}["development"]
    rates = GPUS["h200"]
    runs = len(paper.settings("development", "scvi"))
    assert dev.gpu_hours["scvi"] * 3600 == pytest.approx(dev.cells_read["model_scvi"] / rates.throughputs["scvi"]
                                                         + runs * rates.scvi_fit_s)
    # every algorithm's MI runs on the GPU: 4 algorithms x 300 settings x 2 signals (day, cell type)
    assert dev.mi_estimates == 2_400
    assert dev.gpu_hours["lmi"] * 3600 == pytest.approx(2_400 / rates.throughputs["lmi"])
    h100 = {p.name: p for p in plan_study(paper, gpu="h100")}["development"]
    assert h100.gpu_hours["scvi"] == pytest.approx(dev.gpu_hours["scvi"])  # launch-bound: the H200's rate
    assert h100.gpu_hours["geneformer"] == pytest.approx(dev.gpu_hours["geneformer"] * 4.8 / 3.35, rel=0.01)
    with pytest.raises(InputError, match=r"unknown GPU 'a100'; the planner has rates for \['h100', 'h200'\]"):
        plan_study(paper, gpu="a100")


def test_geneformer_steps_cap_bounds_its_gpu_time():
    default = load_study("default", check_paths=False)
    cite = {p.name: p for p in plan_study(default)}["cite"]
    # the default budget's one optimiser step of 64 cells, not the epoch rule's 10^8 cells
    assert cite.cells_read["model_geneformer"] == 64
