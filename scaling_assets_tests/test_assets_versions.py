"""Code versions: a change of settings or budget marks the partitions it affects stale."""

import dataclasses

import pytest
from conftest import write_tiny_study
from dagster import AssetKey, DagsterInstance, Definitions, StaticPartitionsDefinition, asset, materialize
from dagster._core.definitions.events import AssetKeyPartitionKey

from scaling_assets.assets.versions import outdated_partitions
from scaling_assets.definitions import build_definitions
from scaling_assets.models import budget as budgets
from scaling_assets.models.versions import settings_source, settings_version
from scaling_assets.study.spec import load_study


def versions(study):
    graph = build_definitions(study).resolve_asset_graph()
    return {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}


def test_every_asset_has_a_code_version_and_the_budget_is_in_the_models(monkeypatch):
    study = load_study("default")
    before = versions(study)
    assert all(before.values()), [k for k, v in before.items() if not v]
    cheaper = dataclasses.replace(budgets.BUDGETS["default"], scvi=budgets.ScviBudget(max_epochs_cap=3))
    monkeypatch.setitem(budgets.BUDGETS, "default", cheaper)
    after = versions(study)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {f"{ds}/model_scvi" for ds in study.datasets}  # PCA etc. do not use the SCVI budget
    lmi = versions(dataclasses.replace(study, lmi={"preset": "reference"}))
    assert {k for k in after if after[k] != lmi[k]} == {f"{ds}/mi_{a}" for ds in study.datasets
                                                        for a in study.algorithms}


def test_a_new_simulator_marks_simulated_raw_counts_stale_and_nothing_else(monkeypatch, tmp_path):
    from scaling_assets.assets import versions as versions_mod
    from scaling_assets.data.simulate import simulate

    study = load_study("default")
    source = tmp_path / "cells.h5ad"  # a real source (its own file, not the shared data), written before the bump
    simulate("cite", 300, 20, seed=1, out_path=source)
    real = load_study(write_tiny_study(tmp_path / "real.yaml", tmp_path / "root", "real", datasets={
        "cells": {"task": "cite", "source": "h5ad", "cells": 300, "paths": {"path": str(source)}}}))
    before, real_before = versions(study), versions(real)
    monkeypatch.setattr(versions_mod, "SIMULATOR_VERSION", versions_mod.SIMULATOR_VERSION + 1)
    after = versions(study)
    assert {k for k in before if before[k] != after[k]} == {f"{ds}/raw_counts" for ds in study.datasets}
    assert versions(real) == real_before  # a real source does not depend on the simulator


def test_budgets_change_only_the_models_that_use_them():
    assert settings_version("scvi", "default") != settings_version("scvi", "paper")
    assert settings_version("geneformer", "default") != settings_version("geneformer", "test")
    assert settings_version("pca", "default") == settings_version("pca", "paper")


MODEL_SOURCE = '''
from scaling_assets.models.spec import HIDDEN
LR = 1e-3  # learning rate
CHUNK = 1000
NET = dict(hidden=HIDDEN)
class M:
    def hyperparameters(self):
        """What the model records."""
        return {"lr": LR, "net": NET, "seed": self.seed}
    def fit(self):
        return CHUNK
'''
SPEC_SOURCE = "HIDDEN = 512\nOTHER = 3\n"


def test_settings_fingerprint_sees_settings_not_comments_or_other_code():
    def source(model=MODEL_SOURCE, spec=SPEC_SOURCE):
        return settings_source(model, "M", read_module={"scaling_assets.models.spec": spec}.__getitem__)

    base = source()
    assert "HIDDEN = 512" in base and "OTHER" not in base  # followed through the import, and only that
    assert source(MODEL_SOURCE.replace("# learning rate", "# step size")
                  .replace("What the model records.", "Recorded.")) == base
    assert source(MODEL_SOURCE.replace("CHUNK = 1000", "CHUNK = 5")) == base  # not recorded
    assert source(spec=SPEC_SOURCE.replace("OTHER = 3", "OTHER = 4")) == base
    assert source(MODEL_SOURCE.replace("LR = 1e-3", "LR = 1e-4")) != base
    assert source(spec=SPEC_SOURCE.replace("HIDDEN = 512", "HIDDEN = 256")) != base
    assert source(MODEL_SOURCE.replace('"seed": self.seed', '"seed": 0')) != base
    with pytest.raises(ValueError, match="no hyperparameters"):
        settings_source(MODEL_SOURCE, "Other")


def toy_assets(model_version: str | None, data_version: str | None = "1"):
    parts = StaticPartitionsDefinition(["a", "b"])

    @asset(partitions_def=parts, code_version=data_version)
    def counts():
        return 1

    @asset(partitions_def=parts, code_version=model_version)
    def model(counts):
        return counts + 1

    @asset(partitions_def=parts, code_version=data_version)
    def embeddings(model):
        return model + 1

    @asset(code_version=model_version)
    def table():
        return 0

    return [counts, model, embeddings, table]


def test_partitions_of_an_older_code_version_are_outdated_with_their_downstream():
    instance = DagsterInstance.ephemeral()
    for pk in ("a", "b"):
        assert materialize(toy_assets("v1")[:3], partition_key=pk, instance=instance).success
    assert materialize(toy_assets("v1")[3:], instance=instance).success
    graph = Definitions(assets=toy_assets("v1")).resolve_asset_graph()
    assert outdated_partitions(instance, graph) == set()  # everything current
    graph = Definitions(assets=toy_assets("v2")).resolve_asset_graph()
    assert outdated_partitions(instance, graph) == {
        AssetKeyPartitionKey(AssetKey(name), pk) for name in ("model", "embeddings") for pk in ("a", "b")
    } | {AssetKeyPartitionKey(AssetKey("table"))}


def test_partitions_made_before_code_versions_are_not_redone():
    instance = DagsterInstance.ephemeral()
    assert materialize(toy_assets(None, None)[:3], partition_key="a", instance=instance).success
    assert materialize(toy_assets(None, None)[3:], instance=instance).success
    assert outdated_partitions(instance, Definitions(assets=toy_assets("v2")).resolve_asset_graph()) == set()
