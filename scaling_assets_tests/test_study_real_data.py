"""Real cells end to end: a small grid of ``studies/example_real.yaml`` (CBMC CITE-seq RNA, 8,617 cells x
500 genes, the dataset's own ``cell_type`` signal, no task) through ``scaling-assets study run``: a real
dagster-daemon and queued runs, as test_study_backfills.py. About a minute on 2 cores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO

from scaling_assets.layout import result_paths
from scaling_assets.study.spec import builtin_study_path, load_study

EXAMPLE = builtin_study_path("example_real")


def _cbmc_path() -> Path:
    return Path(load_study(EXAMPLE, check_paths=False).datasets["cbmc"].paths["path"])


def test_the_example_study_finds_the_shared_data_from_the_repository():
    # the path is relative to the study file: <repo>/../shared/data, wherever the command runs from
    assert _cbmc_path() == (REPO.parent / "shared" / "data" / "cbmc_8k_500genes.h5ad").resolve()
    study = load_study(EXAMPLE, check_paths=False)
    cbmc = study.datasets["cbmc"]
    assert cbmc.task is None and cbmc.signal_names == ["cell_type"]
    assert len(cbmc.sizes) >= 5 and len(cbmc.qualities) >= 5
    assert study.algorithms == ("pca", "random_projection", "scvi")


@pytest.mark.slow
@pytest.mark.skipif(not _cbmc_path().is_file(), reason=f"{_cbmc_path()} not present (../shared/data beside the repo)")
def test_a_small_grid_of_the_real_data_study_runs_through_the_queue(tmp_path):
    raw = yaml.safe_load(EXAMPLE.read_text())
    cbmc = raw["datasets"]["cbmc"]
    cbmc["paths"]["path"] = str(_cbmc_path())  # the copy moves; its data stays where it is (read only)
    cbmc.update(sizes=[300, 2000], qualities=[1.0, 0.01])
    raw.update(name="real_small", root=str(tmp_path / "root"), algorithms=["pca", "random_projection"],
               lmi={"epochs": 20})
    path = tmp_path / "example_real_small.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = dict(os.environ, DAGSTER_HOME=str(home), SCALING_ASSETS_PROGRESS="0", SCALING_ASSETS_HOME=str(tmp_path))
    run = subprocess.run([sys.executable, "-m", "scaling_assets.cli", "study", "run", "--study", str(path)],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "started dagster-daemon" in out and "COMPLETED_SUCCESS" in out, out

    study = load_study(path)
    mi = pd.read_parquet(result_paths(study)["mi_table"])
    assert len(mi) == 2 * 2 * 2 and set(mi.signal) == {"cell_type"} and set(mi.dataset) == {"cbmc"}
    assert mi.task.isna().all()  # no task: the dataset's own signal
    # 13 cell types: H(cell type) = 2.61 bits bounds the MI (estimates a little above it are noise)
    assert (mi.mi_bits < 3.0).all()
    full = mi[mi.quality == 1.0].set_index(["algorithm", "cells"]).mi_bits
    shallow = mi[mi.quality == 0.01].set_index(["algorithm", "cells"]).mi_bits
    assert (full > 1.0).all(), mi
    assert (full > shallow + 0.3).all(), mi  # MI rises with UMIs on real cells (~14 vs ~1,400 per cell)
    assert mi.pairs.min() >= 1700  # the held-out 20% (1,723 cells), every one labelled
    assert result_paths(study)["plot_cbmc_cell_type"].is_file()
    assert not any((Path(study.root) / ".staging").glob("*"))
