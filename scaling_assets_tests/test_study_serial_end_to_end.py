"""A small study materialised end to end through Dagster: all four tasks, all four algorithms, 2 sizes x
2 qualities. Checks the tables, re-runs (skips), and a failed partition that is retried alone."""

import io
import re
import textwrap

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance

from scaling_assets.layout import result_paths
from scaling_assets.data.tasks import TASKS
from scaling_assets.study.serial import run_study
from scaling_assets.study.spec import load_study

pytestmark = pytest.mark.slow  # end-to-end studies (in-process)

STUDY = """
name: e2e
root: {root}
budget: test
seeds: [42]
algorithms: [pca, random_projection, scvi, geneformer]
split: {{validation_cells: 100}}
sizes: [100, 400]
qualities: [1.0, 0.05]
lmi: {{epochs: 30}}
algorithm_grids: {{geneformer: {{sizes: [400], qualities: [1.0, 0.05], label: smoke test}}}}
datasets:
  cite:        {{task: cite,        source: simulated, cells: 800, genes: 200, seed: 1}}
  lineage:     {{task: lineage,     source: simulated, cells: 1800, genes: 200, seed: 2, split: {{test_cells: 800}}}}
  spatial:     {{task: spatial,     source: simulated, cells: 800, genes: 200, seed: 3}}
  development: {{task: development, source: simulated, cells: 800, genes: 200, seed: 4}}
"""


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    path = tmp / "study.yaml"
    path.write_text(textwrap.dedent(STUDY.format(root=tmp / "root")))
    study = load_study(path)
    instance = DagsterInstance.ephemeral()
    out = io.StringIO()
    result = run_study(study, instance, out=out)
    return study, instance, result, out.getvalue()


def test_whole_study_materialises(study_run):
    study, instance, result, log = study_run
    assert result["failed"] == {}, log
    for ds in study.datasets:
        key = AssetKey([ds, "mi_geneformer"])
        assert set(instance.get_materialized_partitions(key)) == set(study.setting_keys(ds, "geneformer"))
        assert len(study.setting_keys(ds, "geneformer")) == 2 < len(study.setting_keys(ds))
    assert "MI (bits) at each algorithm's largest training size" in log


def test_mi_table_has_one_row_per_partition_and_signal(study_run):
    study, _, _, _ = study_run
    mi = pd.read_parquet(result_paths(study)["mi_table"])
    expected = sum(len(TASKS[d.task].mi_signals) * len(study.settings(name, a))
                   for name, d in study.datasets.items() for a in study.algorithms)
    assert len(mi) == expected
    assert not mi.duplicated(["dataset", "signal", "algorithm", "cells", "quality", "seed"]).any()
    assert mi["mi_bits"].between(0, np.log2(mi["pairs"])).all()
    assert (mi["pairs"] > 0).all()
    # every algorithm is scored on the same test cells at a quality (zero-UMI cells dropped for all)
    assert (mi.groupby(["dataset", "quality"])["test_cells"].nunique() == 1).all()
    assert set(mi[mi.algorithm == "geneformer"]["grid"]) == {"smoke test"} and set(mi[mi.algorithm == "pca"]["grid"]) == {"study"}
    assert (mi["zero_umi_test_cells_dropped"] >= 0).all()
    # the noise law's x: round(q * the dataset's mean UMIs per cell at q = 1)
    from scaling_assets.assets.common import read_summary
    from scaling_assets.layout import partition_dir

    for dataset, rows in mi.groupby("dataset"):
        mean = read_summary(partition_dir(study.root, [dataset, "raw_counts"], None))["umis_per_cell"]
        assert (rows["umis_nominal"] == (rows["quality"] * mean).round()).all()
    csv = pd.read_csv(result_paths(study)["mi_table"].with_suffix(".csv"))
    assert len(csv) == len(mi)


def test_mi_falls_with_quality_on_average(study_run):
    study, _, _, _ = study_run
    mi = pd.read_parquet(result_paths(study)["mi_table"])
    by_quality = mi.groupby("quality")["mi_bits"].mean()
    assert by_quality[1.0] > by_quality[0.05]


def test_parameter_and_fit_tables(study_run):
    study, _, _, _ = study_run
    paths = result_paths(study)
    params = pd.read_parquet(paths["parameter_table"])
    assert set(params["algorithm"]) == set(study.algorithms)
    assert set(params["dataset"]) == set(study.datasets)
    assert (params[params.algorithm == "random_projection"]["parameters"] == 200 * 16).all()
    hyper = pd.read_parquet(paths["hyperparameter_table"])
    assert set(hyper["algorithm"]) == set(study.algorithms) | {"lmi", "tokenize", "data", "signals", "laws"}
    noise = pd.read_parquet(paths["noise_law_fits"])
    # 2 qualities per group are too few for the noise law: reported as not fitted, not dropped
    assert len(noise) > 0 and not noise["fitted"].any()
    assert {"identified", "reason", "fit_rules"} <= set(noise.columns) and (noise["fit_rules"] == "reference").all()
    plots = [p for name, p in paths.items() if name.startswith("plot_")]
    assert len(plots) == sum(len(TASKS[d.task].mi_signals) for d in study.datasets.values())  # per (dataset, signal)
    for path in plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_corpora_at_every_quality_use_the_full_quality_pool_medians(study_run):
    from scaling_assets.assets.common import load_split
    from scaling_assets.layout import partition_dir
    from scaling_assets.data.counts import TransformedCounts
    from scaling_assets.data.h5ad_io import CsrReader
    from scaling_assets.data.thinning import thin_counts
    from scaling_assets.data.corpus import gene_nonzero_medians

    study, _, _, _ = study_run
    where = lambda asset, key: partition_dir(study.root, ["cite", asset], key)  # noqa: E731
    table = np.load(where("gene_medians", "s=42") / "medians.npy")
    pool = np.sort(load_split(where("split", "s=42")).pool_order)  # the medians' order does not matter
    with CsrReader(where("raw_counts", None) / "counts.h5ad") as raw:
        full = gene_nonzero_medians(raw, rows=pool)
        thinned = gene_nonzero_medians(TransformedCounts(raw, lambda X, rows: thin_counts(X, rows, q=0.05, seed=42)),
                                       rows=pool)
    np.testing.assert_array_equal(table, full)
    assert not np.array_equal(np.nan_to_num(thinned), np.nan_to_num(full))  # the old per-quality table differs
    for corpus in (where("pool_corpus", "q=0.05_s=42") / "corpus", where("eval_corpus", "q=0.05_s=42") / "test"):
        np.testing.assert_array_equal(np.load(corpus / "medians.npy"), full)


def test_every_pca_model_of_a_seed_uses_the_genes_of_the_largest_full_quality_training_set(study_run):
    from scaling_assets.assets.common import read_summary
    from scaling_assets.layout import partition_dir
    from scaling_assets.models import load_model

    study, _, _, _ = study_run
    genes = np.load(partition_dir(study.root, ["cite", "pca_genes"], "s=42") / "genes.npy")
    for key in study.setting_keys("cite"):
        folder = partition_dir(study.root, ["cite", "model_pca"], key)
        np.testing.assert_array_equal(load_model(folder / "model").hvg_idx, genes)
        assert read_summary(folder)["hyperparameters"]["hvg_chosen_on"] == "largest full-quality training set (n=400, q=1)"


def test_second_run_skips_everything_but_the_tables(study_run):
    study, instance, _, _ = study_run
    out = io.StringIO()
    again = run_study(study, instance, out=out)
    assert again["failed"] == {}
    assert again["materialised"] == 0
    assert "already materialised" in out.getvalue()


def test_failed_partition_leaves_others_intact_and_is_retried_alone(study_run):
    from dagster import materialize

    from scaling_assets.layout import partition_dir
    from scaling_assets.definitions import build_definitions

    study, instance, _, _ = study_run
    defs = build_definitions(study)
    setting = "n=100_q=0.05_s=42"
    model = partition_dir(study.root, ["cite", "model_pca"], setting)
    before = (model / "summary.json").read_text()
    other = partition_dir(study.root, ["cite", "model_pca"], "n=400_q=0.05_s=42")
    other_before = (other / "summary.json").read_text()

    # Lose an upstream partition: re-materialising the setting fails with the missing partition named.
    evals = partition_dir(study.root, ["cite", "eval_counts"], "s=42")
    evals.rename(evals.with_name("moved-away"))
    keys = [AssetKey(["cite", n]) for n in ("model_pca", "embeddings_pca", "mi_pca")]
    failed = materialize(list(defs.assets), selection=keys, partition_key=setting, instance=instance,
                         resources=dict(defs.resources), raise_on_error=False)
    assert not failed.success
    from scaling_assets.study.serial import root_cause

    message = root_cause(failed.all_events)
    # the model reads its validation cells from it: it fails first, and its partition is left as it was
    assert message.startswith("cite__model_pca: FileNotFoundError: upstream asset cite/eval_counts "
                              "partition s=42 has not been materialised"), message
    assert (model / "summary.json").read_text() == before
    assert (other / "summary.json").read_text() == other_before
    assert not any(p.name.startswith(".") for p in model.parent.iterdir())  # no half-written folders

    # Retry alone: restore the upstream partition, re-run just this setting.
    evals.with_name("moved-away").rename(evals)
    retried = materialize(list(defs.assets), selection=keys, partition_key=setting, instance=instance,
                          resources=dict(defs.resources))
    assert retried.success
    assert before != "" and (model / "summary.json").exists()


def test_a_real_format_dataset_goes_through_the_loader(tmp_path):
    from scaling_assets.data.simulate import simulate

    source = tmp_path / "external.h5ad"
    simulate("development", 700, 40, seed=9, out_path=source)
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(f"""
        name: external
        root: {tmp_path / 'root'}
        budget: test
        algorithms: [pca]
        split: {{validation_cells: 50}}
        sizes: [200]
        qualities: [1.0]
        datasets:
          atlas: {{task: development, source: h5ad, cells: 700, paths: {{path: {source}}}}}
    """))
    study = load_study(path)
    out = io.StringIO()
    result = run_study(study, DagsterInstance.ephemeral(), out=out)
    assert result["failed"] == {}, out.getvalue()
    mi = pd.read_parquet(result_paths(study)["mi_table"])
    assert sorted(mi["signal"]) == ["cell_type", "day"]


def _latest_metadata(instance, key: AssetKey, partition: str | None = None) -> dict:
    from dagster import AssetRecordsFilter

    filt = AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None)
    records = instance.fetch_materializations(filt, limit=1).records
    assert records, f"{key.to_user_string()} {partition} has no materialisation"
    return records[0].asset_materialization.metadata


def test_every_asset_kind_carries_readable_metadata(study_run):
    """What the UI shows: standard entries, paths, rounded floats, loss images, budget smoke."""
    from dagster import MarkdownMetadataValue, PathMetadataValue, TableMetadataValue

    study, instance, _, _ = study_run
    raw = _latest_metadata(instance, AssetKey(["cite", "raw_counts"]))
    assert raw["dagster/row_count"].value == raw["cells"].value == 800
    assert isinstance(raw["path"], PathMetadataValue)
    key = "n=400_q=1.0_s=42" if "n=400_q=1.0_s=42" in study.setting_keys("cite") else study.setting_keys("cite")[-1]
    for algorithm, smoke in (("pca", False), ("random_projection", False), ("scvi", True), ("geneformer", True)):
        model = _latest_metadata(instance, AssetKey(["cite", f"model_{algorithm}"]), key)
        assert model["budget"].value == "test" and model["budget_smoke"].value is smoke, algorithm
        assert model["wall_time_s"].value == round(model["wall_time_s"].value, 1)
        if algorithm in ("scvi", "geneformer"):  # iterative fits; PCA and random projection are closed form
            image = model["loss_curve"]
            assert isinstance(image, MarkdownMetadataValue) and "data:image/png;base64," in image.value
        else:  # as their descriptions say: no loss curve (PCA's one evaluation is its train_loss)
            assert "loss_curve" not in model and "zero_umi_cells_dropped" in model, algorithm
        mi = _latest_metadata(instance, AssetKey(["cite", f"mi_{algorithm}"]), key)
        bits = [v.value for k, v in mi.items() if k.startswith("mi_") and k.endswith("_bits")]
        assert bits and all(b == round(b, 3) for b in bits)
        assert mi["budget_smoke"].value is smoke
    for table in ("mi_table", "noise_law_fits", "size_law_fits"):
        meta = _latest_metadata(instance, AssetKey(["results", table]))
        assert meta["dagster/row_count"].value > 0
        assert "budget_smoke" in [c.name for c in meta["dagster/column_schema"].schema.columns]
        assert isinstance(meta["preview"], TableMetadataValue)
    plots = _latest_metadata(instance, AssetKey(["results", "scaling_plots"]))
    images = {k: v.value for k, v in plots.items() if isinstance(v, MarkdownMetadataValue)}
    # one image per (dataset, signal) (embedded: no local compute logs here)
    assert set(images) == {f"{d}/{s}" for d, c in study.datasets.items() for s in TASKS[c.task].mi_signals}
    fits = _latest_metadata(instance, AssetKey(["results", "size_law_fits"]))
    assert all(f"identified_{d}" in fits for d in study.datasets)  # identified fits per dataset
    assert all("data:image/png;base64," in md for md in images.values())
    mi_table = pd.read_parquet(result_paths(study)["mi_table"])
    assert set(mi_table.loc[mi_table.budget_smoke, "algorithm"]) == {"scvi", "geneformer"}


def test_loss_images_plot_what_was_recorded(study_run):
    from scaling_assets.metrics.plots import loss_points
    from scaling_assets.layout import partition_dir

    study, _, _, _ = study_run
    for algorithm in ("scvi", "geneformer"):
        key = study.setting_keys("cite", algorithm)[-1]
        folder = partition_dir(study.root, ["cite", f"model_{algorithm}"], key)
        x, series = loss_points(pd.read_csv(folder / "history.csv"))
        assert sum(len(p) for p in series.values()) >= 1, algorithm  # the plotted lines have points
        assert (folder / "loss.png").stat().st_size > 5000


def test_asset_checks_record_their_partition(study_run):
    from dagster import AssetCheckKey

    study, instance, _, _ = study_run
    for asset, check, keys in (("split", "disjoint_sets", ["s=42"]),
                               ("mi_pca", "mi_in_range", study.setting_keys("cite", "pca"))):
        history = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(AssetKey(["cite", asset]), check), limit=100)
        assert {r.partition for r in history} == set(keys), check  # the UI's partition column


def test_a_log_grid_tops_out_within_every_seed_pool_of_lineage_and_spatial_splits(tmp_path, capsys):
    """With `sizes: {grid: log}` the largest size is the nominal pool (cells - test - validation). Splits
    that took whole clones or tiles until *at least* the test size left some seeds a few cells short
    (pca_genes failed: "setting N=2300 exceeds the training pool of 2287 cells"); now every seed's shared
    data and its largest training set are made, and `study show` reports each seed's real pool."""
    from dagster import materialize

    from scaling_assets.cli import main
    from scaling_assets.definitions import build_definitions

    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(f"""
        name: loggrid
        root: {tmp_path / 'root'}
        budget: test
        seeds: [42, 1404, 2701]
        algorithms: [pca]
        split: {{test_cells: 600, validation_cells: 100}}
        sizes: {{grid: log, count: 2, smallest: 100}}
        qualities: [1.0]
        datasets:
          lineage: {{task: lineage, source: simulated, cells: 3000, genes: 30, seed: 2}}
          spatial: {{task: spatial, source: simulated, cells: 3000, genes: 30, seed: 2}}
    """))
    study = load_study(path)
    defs = build_definitions(study)
    instance = DagsterInstance.ephemeral()
    top = 3000 - 600 - 100
    for ds in study.datasets:
        assert study.datasets[ds].sizes == (100, top)
        k = lambda name: AssetKey([ds, name])  # noqa: E731
        runs = [([k("raw_counts")], None)]
        runs += [([k("split"), k("pool_counts"), k("eval_counts"), k("pca_genes")], f"s={seed}") for seed in study.seeds]
        runs += [([k("train_counts"), k("model_pca")], f"n={top}_q=1_s={seed}") for seed in study.seeds]
        for keys, partition in runs:
            result = materialize(list(defs.assets), selection=keys, partition_key=partition, instance=instance,
                                 resources=dict(defs.resources), raise_on_error=False)
            assert result.success, (ds, partition, [str(e.event_specific_data.error.message)
                                                    for e in result.all_events if e.is_step_failure])
    capsys.readouterr()
    assert main(["study", "show", "--study", str(path)]) == 0
    shown = capsys.readouterr().out
    for ds in study.datasets:
        assert f"largest {top:,} within the nominal pool {top:,}" in shown
    pools = [int(n.replace(",", "")) for n in re.findall(r"s=\d+ pool ([\d,]+)", shown)]
    assert len(pools) == 6 and min(pools) >= top, shown
    assert "cannot run" not in shown


def test_a_grid_larger_than_the_real_pool_is_refused_at_the_split(tmp_path):
    """A study file whose `cells` overstates the raw file: the split names the real pool and the fix
    before any pool or evaluation set of the seed is written."""
    from dagster import materialize

    from scaling_assets.data.simulate import simulate
    from scaling_assets.definitions import build_definitions

    source = tmp_path / "external.h5ad"
    simulate("development", 700, 20, seed=9, out_path=source)
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(f"""
        name: overstated
        root: {tmp_path / 'root'}
        budget: test
        algorithms: [pca]
        split: {{test_cells: 100, validation_cells: 50}}
        sizes: {{grid: log, count: 3, smallest: 100}}
        qualities: [1.0]
        datasets:
          atlas: {{task: development, source: h5ad, cells: 800, paths: {{path: {source}}}}}
    """))
    study = load_study(path)
    defs = build_definitions(study)
    instance = DagsterInstance.ephemeral()
    assert materialize(list(defs.assets), selection=[AssetKey(["atlas", "raw_counts"])], instance=instance,
                       resources=dict(defs.resources)).success
    result = materialize(list(defs.assets), selection=[AssetKey(["atlas", n]) for n in ("split", "pool_counts")],
                         partition_key="s=42", instance=instance, resources=dict(defs.resources), raise_on_error=False)
    assert not result.success
    from scaling_assets.study.serial import root_cause

    assert ("atlas s=42: the largest training size 650 exceeds this seed's training pool of 550 cells (700 cells in "
            "the raw file - 100 test - 50 validation); the study file gives `cells: 800`: set it to 700, or give "
            "sizes up to 550") in root_cause(result.all_events)
    assert not list((tmp_path / "root" / "atlas").glob("pool_counts/*"))
