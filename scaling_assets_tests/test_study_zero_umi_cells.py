"""Cells left with no UMI after thinning, through the whole study (DESIGN §3): dropped from the training,
validation and test sets of every algorithm, counted in each setting's records and in the MI table, with
N kept at the nominal size. A small external dataset in which half the cells carry ~10 UMIs, so at
q = 0.05 many of them thin to nothing; the expected counts are recomputed here from the raw file and the
split with the thinning function itself."""

import io
import json
import textwrap

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance

from scaling_assets.data.h5ad_io import CsrReader
from scaling_assets.data.splits import Split
from scaling_assets.data.thinning import thin_counts
from scaling_assets.layout import COUNTS_FILE, RECORD_FILE, SPLIT_FILE, SUMMARY_FILE, partition_dir, result_paths
from scaling_assets.study.serial import run_study
from scaling_assets.study.spec import load_study

pytestmark = pytest.mark.slow  # a whole study

ALGORITHMS = ["pca", "random_projection", "scvi", "geneformer"]


def _zero_umi_cells(raw: CsrReader, rows: np.ndarray, q: float) -> int:
    X = raw.read_subset(rows)
    X = thin_counts(X, rows, q=q, seed=42) if q < 1 else X
    return int((np.asarray(X.sum(axis=1)).ravel() == 0).sum())


def test_zero_umi_cells_are_dropped_from_every_training_and_validation_set(tmp_path):
    from scaling_assets.data.h5ad_io import write_rows
    from scaling_assets.data.simulate import simulate

    simulated = tmp_path / "simulated.h5ad"
    simulate("development", 600, 30, seed=9, out_path=simulated, median_umis=3000.0)  # odd cells: ~10 UMIs
    shallow = tmp_path / "shallow.h5ad"

    def shallow_odd_cells(X, rows):  # every other cell sequenced ~300 times less deeply
        deep = thin_counts(X, rows, q=0.003, seed=7)
        return deep.multiply((rows % 2 == 1)[:, None]).tocsr() + X.multiply((rows % 2 == 0)[:, None]).tocsr()

    with CsrReader(simulated) as src:
        write_rows(src, None, shallow, transform=shallow_odd_cells)
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(f"""
        name: zero_umi
        root: {tmp_path / 'root'}
        budget: test
        algorithms: {ALGORITHMS}
        split: {{test_cells: 150, validation_cells: 60}}
        sizes: [200]
        qualities: [1.0, 0.05]
        lmi: {{epochs: 5}}
        datasets:
          atlas: {{task: development, source: h5ad, paths: {{path: {shallow}}}}}
    """))
    study = load_study(path)
    out = io.StringIO()
    result = run_study(study, DagsterInstance.ephemeral(), out=out)
    assert result["failed"] == {}, out.getvalue()

    root = study.root
    split = Split.load(partition_dir(root, ["atlas", "split"], "s=42") / SPLIT_FILE)
    with CsrReader(partition_dir(root, ["atlas", "raw_counts"], None) / COUNTS_FILE) as raw:
        training = {q: _zero_umi_cells(raw, split.pool_order[:200], q) for q in study.datasets["atlas"].qualities}
        validation = {q: _zero_umi_cells(raw, split.validation, q) for q in training}
        test = {q: _zero_umi_cells(raw, split.test, q) for q in training}
    assert training[1.0] == validation[1.0] == 0 and training[0.05] > 20 and validation[0.05] > 5

    mi = pd.read_parquet(result_paths(study)["mi_table"])
    eval_summary = json.loads((partition_dir(root, ["atlas", "eval_counts"], "s=42") / SUMMARY_FILE).read_text())
    for q in training:
        key = f"n=200_q={q:g}_s=42"
        record = json.loads((partition_dir(root, ["atlas", "train_counts"], key) / RECORD_FILE).read_text())
        assert record["cells"] == 200 and record["zero_umi_training_cells_dropped"] == training[q]
        assert record["training_cells"] == 200 - training[q] == 200 - len(record["zero_umi_rows"])
        held_out = eval_summary[f"q={q:g}"]
        assert held_out["validation"]["zero_umi_cells_dropped"] == validation[q]
        assert held_out["validation"]["cells"] == len(split.validation) - validation[q]
        assert held_out["test"]["zero_umi_cells_dropped"] == test[q]
        for algorithm in ALGORITHMS:  # every algorithm trained on the nonzero cells only
            model = json.loads((partition_dir(root, ["atlas", f"model_{algorithm}"], key) / SUMMARY_FILE).read_text())
            assert model["cells"] == 200 and model["training_cells"] == 200 - training[q], (algorithm, q)
            rows = mi[(mi["algorithm"] == algorithm) & (mi["quality"] == q)]
            assert len(rows) and (rows["cells"] == 200).all()  # N stays the nominal size
            assert (rows["training_cells"] == 200 - training[q]).all()
            assert (rows["zero_umi_training_cells_dropped"] == training[q]).all()
            assert (rows["zero_umi_validation_cells_dropped"] == validation[q]).all()
            assert (rows["zero_umi_test_cells_dropped"] == test[q]).all()
