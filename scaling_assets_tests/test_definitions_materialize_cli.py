"""The `dagster asset materialize` example of docs/assets.md, run for real in a subprocess on a small study."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write_tiny_study

pytestmark = pytest.mark.slow  # `dagster asset materialize` in subprocesses

DAGSTER = str(Path(sys.executable).with_name("dagster"))


@pytest.fixture
def env(tmp_path):
    write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", "cli")
    home = tmp_path / "dagster_home"
    home.mkdir()
    return dict(os.environ, SCALING_ASSETS_STUDY=str(tmp_path / "study.yaml"), DAGSTER_HOME=str(home),
                SCALING_ASSETS_PROGRESS="0")


def materialize(env, select, partition=None):
    cmd = [DAGSTER, "asset", "materialize", "-m", "scaling_assets", "--select", select]
    if partition:
        cmd += ["--partition", partition]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_materialize_a_partition_chain_from_the_cli(env, tmp_path):
    for select, partition in [("cite/raw_counts", None),
                              ("cite/split,cite/pool_counts,cite/eval_counts,cite/pca_genes", "s=42"),
                              ("cite/train_counts,cite/model_pca,cite/embeddings_pca,cite/mi_pca", "n=100_q=0.5_s=42")]:
        proc = materialize(env, select, partition)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    train = tmp_path / "root" / "cite" / "train_counts" / "n=100_q=0.5_s=42"
    summary = json.loads((train / "record.json").read_text())  # a row-range record, not a copy of the cells
    assert summary["cells"] == 100 and summary["rows"] == [0, 100] and summary["kind"] == "counts_range"
    assert not list(train.glob("*.h5ad"))
    raw = json.loads((tmp_path / "root" / "cite" / "raw_counts" / "all" / "summary.json").read_text())
    # thinning at q=0.5 keeps about half of the molecules
    assert 0.4 < summary["umis_per_cell"] / raw["umis_per_cell"] < 0.6
    # the MI step took a device lease (CPU here: no NVML) and recorded an estimate per cite signal
    record = json.loads((tmp_path / "root" / "cite" / "mi_pca" / "n=100_q=0.5_s=42" / "record.json").read_text())
    assert [s["signal"] for s in record["signals"]] == ["cell_type", "protein"]
    # 100 cells of 60 genes carry little of the simulator's signal: an estimate within its range per signal
    assert all(math.isfinite(s["mi_bits_raw"]) and 0 <= s["mi_bits"] <= math.log2(s["pairs"]) for s in record["signals"])
    assert "running on CPU" in proc.stdout + proc.stderr


def test_partition_not_in_the_grid_is_refused(env):
    proc = materialize(env, "cite/split", "s=7")
    assert proc.returncode != 0
    assert "s=7" in proc.stdout + proc.stderr
