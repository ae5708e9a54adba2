"""A study with models of its own, materialised through Dagster (in this process, ``study run --serial``'s
path): a class model that breaks on some partitions (they fail naming the model and the partition; the
others go on), a corpus model of the user's, and a frozen pretrained checkpoint (n=0: MI and the noise
law, no size law)."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from conftest import write_tiny_study
from dagster import AssetKey, DagsterInstance
from scaling_assets_tests.test_models_pretrained import write_checkpoint

from scaling_assets.layout import result_paths
from scaling_assets.study.serial import run_study
from scaling_assets.study.spec import load_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    write_checkpoint(tmp / "ckpt", known=[f"G{j:05d}" for j in range(1, 51)])  # the simulator's gene ids
    path = write_tiny_study(
        tmp / "study.yaml", tmp / "root", "own", algorithms=["pca", "top", "ranks", "frozen"], sizes=[100, 200],
        qualities=[1.0, 0.5, 0.25], lmi={"epochs": 10},
        models={"top": {"class": "own_models:TopGenes", "params": {"fail": "nan", "fail_above": 150}},
                "ranks": {"class": "own_models:TokenRanks"},
                "frozen": {"pretrained": "ckpt"}},
        datasets={"cite": {"task": "cite", "source": "simulated", "cells": 500, "genes": 60, "seed": 1}})
    study = load_study(path)
    instance = DagsterInstance.ephemeral()
    out = io.StringIO()
    result = run_study(study, instance, out=out)
    return study, instance, result, out.getvalue()


def test_a_model_that_embeds_nan_fails_those_partitions_only_naming_the_model_and_partition(run):
    study, instance, result, log = run
    failed = {label: message for label, message in result["failed"].items()}
    assert set(failed) == {f"cite n=200_q={q}_s=42" for q in ("1", "0.5", "0.25")}, log
    for label, message in failed.items():
        partition = label.split()[1]
        assert message.startswith(f"cite__embeddings_top: scaling_assets.errors.InputError: model 'top' embedded the test cells of cite "
                                  f"{partition} wrongly: "), message
        assert "NaN and 0 infinite values" in message
    for name, keys in (("mi_pca", study.setting_keys("cite")), ("mi_ranks", study.setting_keys("cite")),
                       ("mi_frozen", study.setting_keys("cite", "frozen")),
                       ("mi_top", [k for k in study.setting_keys("cite") if k.startswith("n=100")])):
        assert set(instance.get_materialized_partitions(AssetKey(["cite", name]))) == set(keys), name


def test_the_tables_fits_and_plots_take_the_studys_own_models(run):
    study, _, _, _ = run
    paths = result_paths(study)
    mi = pd.read_parquet(paths["mi_table"])
    signals = mi["signal"].nunique()
    counts = mi.groupby("algorithm").size().to_dict()
    assert counts == {"pca": 6 * signals, "ranks": 6 * signals, "top": 3 * signals, "frozen": 3 * signals}
    frozen = mi[mi.algorithm == "frozen"]
    assert set(frozen["cells"]) == {0} and set(frozen["training_cells"]) == {0}
    assert sorted(frozen["quality"].unique()) == [0.25, 0.5, 1.0]
    noise = pd.read_parquet(paths["noise_law_fits"])
    assert set(noise[noise.algorithm == "frozen"]["cells"]) == {0}  # a noise law per signal at n=0
    assert len(noise[noise.algorithm == "frozen"]) == signals
    size = pd.read_parquet(paths["size_law_fits"])
    assert "frozen" not in set(size["algorithm"]) and {"pca", "ranks"} <= set(size["algorithm"])
    hyper = pd.read_parquet(paths["hyperparameter_table"])
    rows = hyper[hyper.algorithm == "frozen"].set_index("hyperparameter")["value"]
    assert rows["frozen"] == "True" and rows["genes_in_vocabulary"] == "50" and rows["layer"] == "-1"
    assert set(hyper[hyper.algorithm == "ranks"]["hyperparameter"]) == {"algorithm", "weights", "components"}
    params = pd.read_parquet(paths["parameter_table"]).set_index("algorithm")["parameters"]
    assert params["top"] == 4 and params["ranks"] == 3 * 62
    for path in (p for name, p in paths.items() if name.startswith("plot_")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
