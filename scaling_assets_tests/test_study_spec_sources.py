"""A bad source h5ad is refused when the study is loaded (`study show`, `study run`), in seconds, naming the
study field and the file, instead of 40-60 s into the first run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from scaling_assets.cli import main
from scaling_assets.data.h5ad_io import CsrWriter
from scaling_assets.data.loaders import sample_rows

CELLS, GENES = 3_000, 20
LATE_ROW = int(sample_rows(CELLS)[-3])  # a sampled row near the end of the file, far past its head
UNSAMPLED_ROW = int(np.setdiff1d(np.arange(CELLS), sample_rows(CELLS))[-1])


def write_h5ad(path: Path, *, dtype=np.int32, bad: tuple[int, float] | None = None, obs_column="cell_type",
               cells: int = CELLS) -> Path:
    """A CITE-like h5ad; ``bad`` = (row, value) puts one bad count in that row."""
    rng = np.random.default_rng(0)
    X = sp.random(cells, GENES, density=0.3, format="csr", random_state=1, dtype=np.float64)
    X.data = np.ceil(X.data * 5)
    if bad is not None:
        row, value = bad
        X = X.tolil()
        X[row, 3] = value
        X = X.tocsr()
    obs = pd.DataFrame({obs_column: pd.Categorical(rng.choice(["T", "B", "NK"], cells))},
                       index=[f"c{i}" for i in range(cells)])
    with CsrWriter(path, [f"g{j}" for j in range(GENES)], dtype=dtype) as writer:
        if cells:
            writer.append(X, obs, {"protein": rng.poisson(3, (cells, 4)).astype(np.int32)})
    return path


def study_file(tmp_path: Path, data: Path, source: str = "h5ad", **options) -> Path:
    dataset = {"task": "cite", "source": source, "paths": {"path": str(data)}, "cells": CELLS}
    if options:
        dataset["options"] = options
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "sources", "root": str(tmp_path / "root"), "budget": "test",
                                    "algorithms": ["pca"], "sizes": [100], "qualities": [1.0],
                                    "split": {"validation_cells": 50}, "datasets": {"pbmc": dataset}}))
    return path


def refused(capsys, *argv) -> str:
    start = time.perf_counter()
    assert main(list(argv)) == 2
    assert time.perf_counter() - start < 5
    return capsys.readouterr().err


def written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


CASES = {
    "not HDF5": (lambda p: written(p, b"cell,gene\n1,2\n"), "not an HDF5 file"),
    "empty": (lambda p: written(p, b""), r"empty file \(0 bytes\)"),
    "no cells": (lambda p: write_h5ad(p, cells=0), "0 cells x 20 genes"),
    "missing label column": (lambda p: write_h5ad(p, obs_column="celltype"),
                             "no obs column 'cell_type', which task 'cite' needs"),
    "NaN counts": (lambda p: write_h5ad(p, dtype=np.float32, bad=(LATE_ROW, np.nan)), "NaN count"),
    "negative counts": (lambda p: write_h5ad(p, bad=(7, -3)), "negative count"),
    "non-integer counts": (lambda p: write_h5ad(p, dtype=np.float32, bad=(12, 2.5)), "non-integer count"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_h5ad_is_refused_at_study_load_naming_field_and_file(tmp_path, capsys, case):
    make, problem = CASES[case]
    data = make(tmp_path / "pbmc.h5ad")
    study = study_file(tmp_path, data)
    for command in ("show", "run"):
        err = refused(capsys, "study", command, "--study", str(study))
        assert f"study file {study}: datasets.pbmc.paths.path: {data}" in err, err
        assert pd.Series([err]).str.contains(problem).all(), err
    assert not (tmp_path / "root").exists()  # refused before anything was written


def test_format_options_name_their_own_field(tmp_path, capsys):
    data = write_h5ad(tmp_path / "pbmc.h5ad")
    study = study_file(tmp_path, data, source="cite", level="l2", protein_key="protein")
    err = refused(capsys, "study", "show", "--study", str(study))
    assert "datasets.pbmc.options.level" in err and "no obs column 'celltype.l2'" in err
    study = study_file(tmp_path, write_h5ad(tmp_path / "atlas.h5ad", obs_column="celltype.l2"), source="cite",
                       protein_key="adt")
    err = refused(capsys, "study", "show", "--study", str(study))
    assert "datasets.pbmc.options.protein_key" in err and "obsm['adt']" in err


def test_good_h5ad_passes_and_show_skips_files_not_there_yet(tmp_path, capsys):
    study = study_file(tmp_path, write_h5ad(tmp_path / "pbmc.h5ad"))
    assert main(["study", "show", "--study", str(study)]) == 0
    assert "pbmc: task cite (signals cell_type, protein), source h5ad" in capsys.readouterr().out
    study = study_file(tmp_path, tmp_path / "later.h5ad")
    assert main(["study", "show", "--study", str(study)]) == 0


def test_study_run_refuses_in_seconds_from_the_command_line(tmp_path):
    """The whole command, imports included, as a user runs it."""
    data = write_h5ad(tmp_path / "pbmc.h5ad", dtype=np.float32, bad=(LATE_ROW, -1.0))
    study = study_file(tmp_path, data)
    cli = str(Path(sys.executable).with_name("scaling-assets"))
    repo = str(Path(__file__).resolve().parents[1])  # this checkout's code, whatever the venv installed
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path / "home"),
               PYTHONPATH=os.pathsep.join([repo, *filter(None, [os.environ.get("PYTHONPATH")])]))
    start = time.perf_counter()
    proc = subprocess.run([cli, "study", "run", "--study", str(study)], env=env, capture_output=True, text=True,
                          timeout=120)
    wall = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert f"datasets.pbmc.paths.path: {data}" in proc.stderr and "negative count" in proc.stderr
    assert wall < 30, wall  # imports dominate (a few seconds); no Dagster run is started
    print(f"study run refused in {wall:.1f} s")


def test_a_bad_row_outside_the_sample_is_left_to_the_ingest(tmp_path):
    """The check at load reads a sample; the ingest (raw_counts) checks every row."""
    from scaling_assets.data.loaders import ingest
    from scaling_assets.errors import InputError
    from scaling_assets.study.spec import check_sources, load_study

    data = write_h5ad(tmp_path / "pbmc.h5ad", bad=(UNSAMPLED_ROW, -1))
    check_sources(load_study(study_file(tmp_path, data)))
    with pytest.raises(InputError, match=f"negative count \\(cell c{UNSAMPLED_ROW},"):
        ingest("h5ad", tmp_path / "raw.h5ad", path=str(data), task="cite")


def _study_with(tmp_path: Path, dataset: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "headers", "root": str(tmp_path / "root"), "budget": "test",
                                    "algorithms": ["pca"], "sizes": [100], "qualities": [1.0],
                                    "split": {"validation_cells": 50}, "datasets": {"d": dataset}}))
    return path


def test_larry_and_merfish_headers_are_checked_at_load(tmp_path, capsys):
    cbg, meta = tmp_path / "cell_by_gene.csv", tmp_path / "cell_metadata.csv"
    cbg.write_text("cell,g1,g2,Blank-1\nc1,1,0,0\n")
    meta.write_text("cell,center_x,fov\nc1,0.5,1\n")
    merfish = {"task": "spatial", "source": "merfish", "cells": 3000,
               "paths": {"cell_by_gene": str(cbg), "cell_metadata": str(meta)}}
    err = refused(capsys, "study", "show", "--study", str(_study_with(tmp_path, merfish)))
    assert f"datasets.d.paths.cell_metadata: {meta}: missing signal column(s) ['center_y']" in err, err

    files = {name: tmp_path / name for name in ("counts.mtx", "genes.txt", "metadata.txt", "clones.mtx")}
    files["counts.mtx"].write_text("%%MatrixMarket matrix array real general\n2 2\n1\n2\n3\n4\n")
    files["genes.txt"].write_text("g1\ng2\n")
    files["metadata.txt"].write_text("Time point\tWell\tCell type annotation\tSPRING-x\tSPRING-y\n2\t0\tA\t0\t0\n")
    files["clones.mtx"].write_text("%%MatrixMarket matrix coordinate integer general\n1 1 1\n1 1 1\n")
    larry = {"task": "lineage", "source": "larry", "cells": 3000,
             "paths": {"counts": str(files["counts.mtx"]), "genes": str(files["genes.txt"]),
                       "metadata": str(files["metadata.txt"]), "clones": str(files["clones.mtx"])}}
    err = refused(capsys, "study", "run", "--study", str(_study_with(tmp_path, larry)))
    assert f"datasets.d.paths.counts: {files['counts.mtx']}: MatrixMarket 'array' format is not supported" in err


def test_a_datasets_own_signals_are_checked_at_load(tmp_path, capsys):
    data = write_h5ad(tmp_path / "pbmc.h5ad")
    study = study_file(tmp_path, data)
    raw = yaml.safe_load(study.read_text())
    raw["datasets"]["pbmc"].pop("task")
    raw["datasets"]["pbmc"]["signals"] = ["cell_type", "region"]  # `region` is not in the file
    study.write_text(yaml.safe_dump(raw))
    err = refused(capsys, "study", "show", "--study", str(study))
    assert "datasets.pbmc.paths.path" in err and "no obs column 'region', which the dataset's signals need" in err
    raw["datasets"]["pbmc"]["signals"] = ["cell_type", "obsm:adt"]  # the file's matrix is obsm['protein']
    study.write_text(yaml.safe_dump(raw))
    assert "no obsm['adt'], which a signal needs" in refused(capsys, "study", "show", "--study", str(study))
    raw["datasets"]["pbmc"]["signals"] = ["cell_type", "obsm:protein"]
    study.write_text(yaml.safe_dump(raw))
    assert main(["study", "show", "--study", str(study)]) == 0
