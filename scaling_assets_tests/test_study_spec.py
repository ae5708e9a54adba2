"""Study files: the grid, readable partition keys, and clear errors for invalid studies."""

import textwrap

import pytest

from scaling_assets.data.splits import default_test_size, quality_grid, size_grid
from scaling_assets.errors import StudyConfigError
from scaling_assets.study.spec import (
    Setting,
    load_study,
    parse_quality_seed_key,
    parse_setting_key,
)


def write(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """
name: tiny
root: {root}
seeds: [7]
algorithms: [pca]
sizes: [100, 400]
qualities: [1.0, 0.25]
split: {{validation_cells: 200}}
datasets:
  cite: {{task: cite, source: simulated, cells: 1000, genes: 50}}
"""


def test_default_study_shows_both_laws_with_geneformer_as_a_smoke_test():
    study = load_study("default")
    assert set(study.datasets) == {"cite", "lineage", "spatial", "development"}
    assert study.algorithms == ("pca", "random_projection", "scvi", "geneformer")
    for name in study.datasets:
        # PCA: enough points for both law fits; SCVI and random projection: the noise law's qualities
        assert len(study.sizes_of(name, "pca")) >= 4
        for algorithm in ("pca", "random_projection", "scvi"):
            assert len(study.qualities_of(name, algorithm)) >= 4 and study.grid_label(algorithm) == ""
        assert len(study.sizes_of(name, "random_projection")) == 1  # its embedding does not depend on N
        assert len(study.settings(name, "geneformer")) < len(study.settings(name))
    assert study.grid_label("geneformer") == "smoke test"
    assert study.budget == "default" and study.seeds == (42,)
    assert study.seeds_of("scvi") == (42, 1404)  # SCVI's curves carry the scatter of two seeds


def test_paper_study_is_the_reference_grid(monkeypatch):
    monkeypatch.setenv("SCALING_ASSETS_DATA", "/data")
    study = load_study("paper", check_paths=False)
    assert study.seeds == (42, 1404, 2701) and study.budget == "paper"
    assert study.lmi == {"preset": "reference"}  # the reference's LMI call (docs/laws.md: Presets)
    assert len(study.datasets) == 4
    for d in study.datasets.values():
        assert len(d.sizes) == 10 and d.sizes[0] == 100
        assert len(d.qualities) == 10 and d.qualities[0] == 1.0
        # the smallest quality leaves ~10 UMIs per cell
        assert d.qualities[-1] * d.umis_per_cell == pytest.approx(10, rel=0.01)
    assert study.n_training_runs() == 4 * 10 * 10 * 3 * 4
    # the largest size is the whole training pool: cells - 30,000 test - 1,000 validation
    assert study.datasets["cite"].sizes[-1] == 161764 - 30000 - 1000


def test_keys_are_readable_and_round_trip(tmp_path):
    study = load_study(write(tmp_path, MINIMAL.format(root=tmp_path / "out")))
    keys = study.setting_keys("cite")
    assert keys == ["n=100_q=1_s=7", "n=400_q=1_s=7", "n=100_q=0.25_s=7", "n=400_q=0.25_s=7"]
    assert parse_setting_key("n=400_q=0.25_s=7") == Setting(400, 0.25, 7)
    assert parse_quality_seed_key("q=0.25_s=7") == (0.25, 7)
    assert study.quality_seed_keys("cite") == ["q=1_s=7", "q=0.25_s=7"]
    assert study.root == tmp_path / "out"


def test_grids():
    assert size_grid(10_000, 3, 100) == [100, 1000, 10_000]
    q = quality_grid(1000.0, 3, 10)
    assert q == [1.0, 0.1, 0.01]
    assert default_test_size(1_000_000) == 30_000
    assert default_test_size(5_000) == 1_000


@pytest.mark.parametrize(
    "change, message",
    [
        ("algorithms: [pca, umap]", "unknown algorithm 'umap'"),
        ("qualities: [1.0, 1.5]", "quality 1.5 is outside (0, 1]"),
        ("qualities: [0.0]", "quality 0.0 is outside (0, 1]"),
        ("sizes: [100, 5000]", "size 5000 is larger than the training pool (600 = 1000 cells - 200 test - 200 validation)"),
        ("budget: huge", "'huge' is not one of"),
    ],
)
def test_invalid_studies_name_the_problem(tmp_path, change, message):
    text = MINIMAL.format(root=tmp_path)
    key = change.split(":")[0]
    lines = [line for line in text.splitlines() if not line.startswith(key + ":")]
    path = write(tmp_path, "\n".join(lines) + "\n" + change + "\n")
    with pytest.raises(StudyConfigError) as err:
        load_study(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_an_algorithm_can_have_its_own_smaller_grid(tmp_path):
    text = MINIMAL.format(root=tmp_path).replace("algorithms: [pca]", "algorithms: [pca, scvi]")
    study = load_study(write(tmp_path, text + "algorithm_grids: {scvi: {sizes: [400], qualities: [0.25]}}\n"))
    assert study.setting_keys("cite", "scvi") == ["n=400_q=0.25_s=7"]
    assert len(study.setting_keys("cite", "pca")) == 4 == len(study.setting_keys("cite"))
    assert study.quality_seed_keys("cite", "scvi") == ["q=0.25_s=7"]
    assert study.n_training_runs() == 5 and study.grid_label("scvi") == ""  # no label unless given
    with pytest.raises(StudyConfigError, match=r"algorithm_grids.scvi: \[300\] not on dataset 'cite'"):
        load_study(write(tmp_path, text + "algorithm_grids: {scvi: {sizes: [300]}}\n"))
    with pytest.raises(StudyConfigError, match="'geneformer' is not one of the study's algorithms"):
        load_study(write(tmp_path, text + "algorithm_grids: {geneformer: {sizes: [400]}}\n"))


def test_an_algorithm_can_have_its_own_seeds(tmp_path):
    text = MINIMAL.format(root=tmp_path).replace("algorithms: [pca]", "algorithms: [pca, scvi]")
    study = load_study(write(tmp_path, text + "algorithm_grids: {scvi: {sizes: [400], seeds: [7, 1404]}}\n"))
    assert study.setting_keys("cite", "scvi") == ["n=400_q=1_s=7", "n=400_q=0.25_s=7",
                                                  "n=400_q=1_s=1404", "n=400_q=0.25_s=1404"]
    # every other algorithm keeps the study's seeds (a grid of its own within the union below)
    assert study.seeds_of("pca") == (7,) and study.setting_keys("cite", "pca") == [
        "n=100_q=1_s=7", "n=400_q=1_s=7", "n=100_q=0.25_s=7", "n=400_q=0.25_s=7"]
    # the extra seed gets its own split, pools and evaluation sets ...
    assert study.all_seeds() == (7, 1404) and study.seed_keys() == ["s=7", "s=1404"]
    # ... and training sets only where an algorithm trains with it
    assert study.setting_keys("cite") == ["n=100_q=1_s=7", "n=400_q=1_s=7", "n=100_q=0.25_s=7", "n=400_q=0.25_s=7",
                                          "n=400_q=1_s=1404", "n=400_q=0.25_s=1404"]
    assert study.quality_seed_keys("cite") == ["q=1_s=7", "q=0.25_s=7"]  # the study's seeds
    assert study.n_training_runs() == 8
    for seeds, message in [("[]", "expected a non-empty list of integer seeds, got []"),
                           ("[7, 7]", "seed(s) [7] given twice"), ("[1.5]", "seeds must be non-negative integers, got [1.5]"),
                           ("3", "expected a non-empty list of integer seeds, got 3")]:
        path = write(tmp_path, text + f"algorithm_grids: {{scvi: {{seeds: {seeds}}}}}\n")
        with pytest.raises(StudyConfigError) as err:
            load_study(path)
        assert str(err.value) == f"study file {path}: algorithm_grids.scvi.seeds: {message}"


def test_missing_data_path_is_named(tmp_path):
    path = write(tmp_path, f"""
        name: real
        root: {tmp_path}
        sizes: [100]
        qualities: [1.0]
        datasets:
          pbmc: {{task: cite, source: cite, paths: {{path: {tmp_path}/nope.h5ad}}}}
    """)
    with pytest.raises(StudyConfigError, match=r"datasets.pbmc.paths.path: missing data path .*nope.h5ad"):
        load_study(path)
    # a format that holds one task's data cannot feed another task
    with pytest.raises(StudyConfigError, match=r"datasets.pbmc.task: source 'larry' holds 'lineage' data, not 'cite'"):
        load_study(write(tmp_path, path.read_text().replace("source: cite", "source: larry")))


def test_unknown_study_name_and_missing_file():
    with pytest.raises(StudyConfigError, match="no built-in study named 'nosuch'"):
        load_study("nosuch")
    with pytest.raises(StudyConfigError, match="does not exist"):
        load_study("/tmp/definitely/not/here.yaml")


def test_show_and_plan_say_which_sizes_a_dataset_really_gets(tmp_path):
    import json

    from scaling_assets.layout import SUMMARY_FILE, partition_dir
    from scaling_assets.study.planner import format_plan, plan_study, sizes_report

    path = write(tmp_path, f"""
        name: sized
        root: {tmp_path / 'root'}
        seeds: [1, 2]
        algorithms: [pca]
        sizes: {{grid: log, count: 3, smallest: 100}}
        qualities: [1.0]
        split: {{test_cells: 600, validation_cells: 100}}
        datasets:
          lineage: {{task: lineage, source: simulated, cells: 3000, genes: 50}}
          cite: {{task: cite, source: simulated, cells: 3000, genes: 50}}
    """)
    study = load_study(path)
    assert study.datasets["lineage"].pool == 2300 and study.largest_size("lineage") == 2300
    assert sizes_report(study, "lineage") == [
        "sizes [100, 480, 2300]: largest 2,300 within the nominal pool 2,300 (3,000 cells - 600 test - 100 "
        "validation; whole clones never take more than those, so every seed's pool holds it)"]
    assert "every seed's pool has exactly that" in sizes_report(study, "cite")[0]
    # once split, each seed's real pool; a size above one (the study file changed since) is named
    for seed, pool in ((1, 2302), (2, 2250)):
        folder = partition_dir(study.root, ["lineage", "split"], f"s={seed}")
        folder.mkdir(parents=True)
        (folder / SUMMARY_FILE).write_text(json.dumps({"pool_cells": pool, "test_cells": 598, "validation_cells": 100}))
    report = sizes_report(study, "lineage")
    assert report[1] == "split: s=1 pool 2,302 (test 598, validation 100), s=2 pool 2,250 (test 598, validation 100)"
    assert report[2] == "s=2: sizes [2300] exceed its pool of 2,250 cells and cannot run"
    assert "   s=2: sizes [2300] exceed" in format_plan(study, plan_study(study))
