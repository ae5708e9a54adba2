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
    doubled = {p.name: p for p in plan_study(paper, {"scvi": 40_000.0})}
    assert doubled["development"].gpu_hours["scvi"] == pytest.approx(dev.gpu_hours["scvi"] / 2)


def test_plan_command_prints_totals_without_data(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "scaling_assets.cli", "study", "plan", "--study", "paper",
                           "--throughput", "geneformer=300000"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "== total: training runs 4,800" in proc.stdout
    assert "given: geneformer" in proc.stdout and "as per-setting copies" in proc.stdout
