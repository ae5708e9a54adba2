"""The layout module: the one place that names a study's folders and files, readable without Dagster."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, build_output_context

import scaling_assets.layout as layout
from scaling_assets.assets.storage import StudyIOManager
from scaling_assets.study.spec import load_study
from scaling_assets_tests.test_study_spec import MINIMAL, write


def study(tmp_path):
    return load_study(write(tmp_path, MINIMAL.format(root=tmp_path / "out")))


def test_result_paths_are_where_the_io_manager_writes_the_tables(tmp_path):
    s = study(tmp_path)
    io = StudyIOManager(root=str(s.root))
    io.handle_output(build_output_context(asset_key=AssetKey([layout.RESULTS, "mi_table"])), pd.DataFrame({"a": [1]}))
    paths = layout.result_paths(s)
    assert pd.read_parquet(paths["mi_table"])["a"].tolist() == [1]
    # one figure per (dataset, signal): the cite task measures cell type and proteins
    assert set(paths) == {*layout.RESULT_TABLES, "plot_cite_cell_type", "plot_cite_protein"}
    assert paths["plot_cite_protein"] == Path(s.root) / "results" / "scaling_plots" / "all" / "scaling_cite_protein.png"


def test_held_out_files_by_quality_and_set():
    assert layout.eval_counts_file(Path("e"), 0.25, "validation") == Path("e/q=0.25/validation.h5ad")
    assert layout.eval_counts_file(Path("e"), 1.0) == Path("e/q=1/test.h5ad")
    assert layout.eval_corpus_dir(Path("c"), "validation") == Path("c/validation")
    with pytest.raises(ValueError, match="held-out set 'train'"):
        layout.eval_counts_file(Path("e"), 1.0, "train")
    assert layout.work_dir("/r", ["cite", "model_geneformer"], "n=1_q=1_s=2") == \
        Path("/r/.work/cite/model_geneformer/n=1_q=1_s=2")


def test_gene_count_of_an_ingested_dataset_comes_from_its_raw_counts_summary(tmp_path):
    s = study(tmp_path)
    assert layout.dataset_gene_count(s, "cite") == 50  # simulated: the study says
    ingested = study(tmp_path)
    ingested.datasets["cite"] = dataclasses.replace(ingested.datasets["cite"], genes=None)  # as an ingested file
    assert layout.dataset_gene_count(ingested, "cite") is None  # not ingested yet
    summary = layout.partition_dir(ingested.root, ["cite", "raw_counts"], None) / layout.SUMMARY_FILE
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"genes": 1234}))
    assert layout.dataset_gene_count(ingested, "cite") == 1234


def test_the_layout_and_the_run_coordinator_import_no_dagster_asset_module():
    tree = ast.parse(Path(layout.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m and (m.startswith("dagster") or m.startswith("scaling_assets.assets"))]


def test_the_gpu_package_runs_without_dagster(tmp_path):
    """Every module of scaling_assets.gpu (NVML, leases, needs, the gpus command) imports in a process where importing dagster fails."""
    import subprocess
    import sys

    code = ("import sys\n"
            "class NoDagster:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'dagster' or name.startswith('dagster.') or name.startswith('dagster_'):\n"
            "            raise ImportError('dagster blocked')\n"
            "sys.meta_path.insert(0, NoDagster())\n"
            "import importlib, pkgutil, scaling_assets.gpu, scaling_assets.layout\n"
            "names = sorted(m.name for m in pkgutil.iter_modules(scaling_assets.gpu.__path__))\n"
            "for name in names:\n"
            "    importlib.import_module('scaling_assets.gpu.' + name)\n"
            "print(' '.join(names))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    # every module of the package, so a new one cannot slip in a Dagster import
    assert done.returncode == 0 and done.stdout.strip() == "commands leases needs nvml placement schedule_bounds", done.stderr[-2000:]


def test_a_partition_folder_parses_back_to_its_asset_and_partition_key(tmp_path):
    folder = layout.partition_dir(tmp_path, ["cite", "model_scvi"], "n=300_q=0.1_s=42")
    assert folder == tmp_path / "cite" / "model_scvi" / "n=300_q=0.1_s=42"
    assert layout.parse_partition_dir(tmp_path, folder) == (["cite", "model_scvi"], "n=300_q=0.1_s=42")
    table = layout.partition_dir(tmp_path, [layout.RESULTS, "mi_table"], None)
    assert table.name == "all" and layout.parse_partition_dir(tmp_path, table) == ([layout.RESULTS, "mi_table"], None)
    with pytest.raises(ValueError, match="not an asset partition folder"):
        layout.parse_partition_dir(tmp_path, tmp_path / "cite")


def test_handles_name_the_files_the_assets_write(tmp_path):
    assert layout.EvalCountsFolder(tmp_path).held_out(0.1, "validation") == tmp_path / "q=0.1" / "validation.h5ad"
    assert layout.EvalCorpusFolder(tmp_path).held_out() == tmp_path / "test"
    model = layout.ModelFolder(tmp_path)
    assert (model.model, model.history, model.loss_plot, model.summary) == (
        tmp_path / "model", tmp_path / "history.csv", tmp_path / "loss.png", tmp_path / "summary.json")
    assert layout.EmbeddingsFolder(tmp_path).embeddings == tmp_path / "embeddings.npz"
    assert layout.TableFolder(tmp_path).csv == tmp_path / "table.csv"


def _typed_input(asset_path, annotation):
    from dagster import DagsterType, build_input_context

    kind = DagsterType(lambda _, value: isinstance(value, annotation), name=annotation.__name__, typing_type=annotation)
    return build_input_context(asset_key=AssetKey(asset_path), dagster_type=kind)


def test_the_io_manager_hands_back_the_handle_the_annotation_asks_for(tmp_path):
    io = StudyIOManager(root=str(tmp_path))
    folder = layout.partition_dir(tmp_path, ["cite", "model_pca"], None)
    folder.mkdir(parents=True)
    handle = io.load_input(_typed_input(["cite", "model_pca"], layout.ModelFolder))
    assert type(handle) is layout.ModelFolder and handle.folder == folder
    assert io.load_input(_typed_input(["cite", "model_pca"], Path)) == folder
    io.handle_output(build_output_context(asset_key=AssetKey(["cite", "table"])), pd.DataFrame({"a": [1]}))
    table = io.load_input(_typed_input(["cite", "table"], layout.TableFolder))  # a table's folder, not the frame
    assert pd.read_csv(table.csv)["a"].tolist() == [1]
    with pytest.raises(FileNotFoundError, match="has not been materialised"):
        io.load_input(_typed_input(["cite", "model_rp"], layout.ModelFolder))


def test_staging_folders_are_under_the_single_study_root(tmp_path):
    from scaling_assets.assets.common import new_stage

    s = study(tmp_path)
    stage = new_stage(s, "pool")
    assert stage.parent == layout.staging_root(s.root) == Path(s.root) / ".staging"
    from scaling_assets.definitions import build_definitions

    io = build_definitions(s).resources["io_manager"]  # the IO manager's root is the same study root
    assert layout.staging_root(io.root) == stage.parent


def test_folders_of_grid_points_removed_from_the_study_are_listed_and_removed(tmp_path, capsys):
    """Issue 26 item 8: ``study show`` lists the partition folders (and checkpoints) the study no longer
    has: a size or dataset dropped from the study file; ``--remove-stale`` deletes exactly those."""
    from conftest import write_tiny_study

    from scaling_assets.cli import main

    root = tmp_path / "root"
    path = write_tiny_study(tmp_path / "study.yaml", root, "shrunk", sizes=[100])
    s = load_study(path, check_paths=False)
    kept = [layout.partition_dir(root, ["cite", "mi_pca"], "n=100_q=1_s=42"),
            layout.partition_dir(root, ["cite", "raw_counts"], None),
            layout.partition_dir(root, ["results", "mi_table"], None),
            layout.work_dir(root, ["cite", "model_pca"], "n=100_q=1_s=42"),
            root / layout.STAGING / "stage-x"]
    stale = [layout.partition_dir(root, ["cite", "mi_pca"], "n=200_q=1_s=42"),  # a size dropped
             root / "pbmc",  # a dataset dropped
             layout.work_dir(root, ["cite", "model_pca"], "n=200_q=1_s=42")]
    assert set(s.setting_keys("cite")) >= {"n=100_q=1_s=42"} and "n=200_q=1_s=42" not in s.setting_keys("cite")
    for folder in kept + [stale[0], stale[1] / "raw_counts" / "all", stale[2]]:
        folder.mkdir(parents=True)
        (folder / "f.bin").write_bytes(b"x" * 1000)

    assert main(["study", "show", "--study", str(path)]) == 0
    out = capsys.readouterr().out
    assert "stale: 3 folder(s)" in out and "--remove-stale deletes them" in out, out
    for folder in stale:
        assert f"  {folder.relative_to(root)}\n" in out
    assert all(folder.exists() for folder in stale)

    assert main(["study", "show", "--study", str(path), "--remove-stale"]) == 0
    assert "removed 3 folder(s)" in capsys.readouterr().out
    assert not any(folder.exists() for folder in stale) and all(folder.exists() for folder in kept)
    assert main(["study", "show", "--study", str(path)]) == 0
    assert "stale" not in capsys.readouterr().out
