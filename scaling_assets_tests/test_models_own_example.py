"""The out-of-tree example (``examples/own_model``): installed as a package (into a folder of its own with
pip --target: the shared environment is left alone), its entry point makes ``linear_ae`` an algorithm, and
a study of ``pca``, a scikit-learn NMF from the study file and ``linear_ae`` runs through the real daemon
(``study run``: backfill, queue, launcher, a process per run) to MI rows, law fits and hyperparameters."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO
from scaling_assets_tests.test_study_backfills import instance_at, make_study, restore_dagster_home, study_run  # noqa: F401

from scaling_assets.layout import result_paths
from scaling_assets.study.spec import load_study

pytestmark = pytest.mark.slow

NMF8 = {"sklearn": "sklearn.decomposition.NMF", "params": {"n_components": 8, "init": "nndsvda", "max_iter": 400},
        "input": "log1p"}


def install_example(tmp_path):
    """pip install of a copy of examples/own_model (its build files stay out of the repository) into a folder
    that goes on PYTHONPATH: what `pip install ./examples/own_model` does to an environment, kept apart."""
    source = tmp_path / "own_model_src"
    shutil.copytree(REPO / "examples" / "own_model", source)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True)
    return site


def test_the_example_package_is_studied_through_the_daemon(tmp_path, monkeypatch, restore_dagster_home):  # noqa: F811
    site = install_example(tmp_path)
    assert (site / "own_model-0.1.0.dist-info" / "entry_points.txt").read_text().split() == [
        "[scaling_assets.models]", "linear_ae", "=", "own_model.models:LinearAutoencoder"]
    monkeypatch.syspath_prepend(str(site))  # this process reads the study too
    path, home, env = make_study(tmp_path, "example", algorithms=["pca", "nmf8", "linear_ae"],
                                 models={"nmf8": NMF8}, qualities=[1.0, 0.5, 0.25])
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    study = load_study(path)
    assert study.models["linear_ae"].origin == "entry point own_model.models:LinearAutoencoder (package own-model)"
    instance_at(home)  # before the command: two processes creating SQLite storage at once can race
    process = study_run(path, env, tmp_path)
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    assert re.search(r"COMPLETED_SUCCESS, (\d+)/\1 partitions", out), out

    paths = result_paths(study)
    mi = pd.read_parquet(paths["mi_table"])
    signals = sorted(mi["signal"].unique())
    print(mi.pivot_table(index=["algorithm", "cells"], columns=["signal", "quality"], values="mi_bits").round(3)
          .to_string())
    for algorithm in study.algorithms:  # every setting of every model, each signal once
        rows = mi[mi.algorithm == algorithm]
        assert len(rows) == len(study.settings("cite", algorithm)) * len(signals), algorithm
        assert rows["mi_bits"].notna().all() and (rows["mi_bits"] >= 0).all() and (rows["pairs"] > 0).all()
    noise = pd.read_parquet(paths["noise_law_fits"])
    size = pd.read_parquet(paths["size_law_fits"])
    for fits, per in ((noise, "cells"), (size, "quality")):  # a fit row per series, fitted or saying why not
        for algorithm in study.algorithms:
            rows = fits[fits.algorithm == algorithm]
            assert len(rows) == len(signals) * mi[mi.algorithm == algorithm][per].nunique(), (algorithm, per)
            assert rows["reason"].notna().all() or rows["fitted"].all()
    assert size["reason"].str.startswith("too few points: 2 distinct cell counts").all()  # 2 sizes: no size law
    assert noise["fitted"].any()  # 3 qualities: noise laws are fitted
    hyper = pd.read_parquet(paths["hyperparameter_table"])
    nmf = hyper[hyper.algorithm == "nmf8"].set_index("hyperparameter")["value"]
    assert nmf["estimator"] == "sklearn.decomposition.NMF" and nmf["input"] == "log1p"
    assert nmf["params"] == str({"init": "nndsvda", "max_iter": 400, "n_components": 8, "random_state": 42})
    ae = hyper[hyper.algorithm == "linear_ae"].set_index("hyperparameter")["value"]
    assert (ae["latent"], ae["optimizer"], ae["early_stopping_patience"]) == ("8", "Adam", "5")
    params = pd.read_parquet(paths["parameter_table"]).set_index("algorithm")["parameters"]
    assert params["linear_ae"] == 2 * 40 * 8 + 8 + 40 and params["nmf8"] == 8 * 40
