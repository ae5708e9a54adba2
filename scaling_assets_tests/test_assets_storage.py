"""The study IO manager's storage layout: staged folders renamed into place, replaced whole."""

import pandas as pd
import pytest
from dagster import AssetKey, build_input_context, build_output_context

from scaling_assets.assets.storage import StudyIOManager, replace_dir, stage_dir
from scaling_assets.layout import partition_dir


def test_replace_dir_swaps_whole_folders(tmp_path):
    dst = tmp_path / "cite" / "model_pca" / "n=1_q=1_s=1"
    first = stage_dir(tmp_path)
    (first / "a.txt").write_text("old")
    replace_dir(first, dst)
    second = stage_dir(tmp_path)
    (second / "b.txt").write_text("new")
    replace_dir(second, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["b.txt"]  # nothing of the old partition is left
    assert not first.exists() and not second.exists()
    assert [p.name for p in dst.parent.iterdir()] == ["n=1_q=1_s=1"]  # no trash left behind


def test_io_manager_round_trips_each_kind(tmp_path):
    io = StudyIOManager(root=str(tmp_path))
    key = AssetKey(["cite", "mi_pca"])
    record = {"signals": [{"signal": "cell_type", "mi_bits": 1.5}]}
    io.handle_output(build_output_context(asset_key=key, partition_key="n=1_q=1_s=1"), record)
    assert io.load_input(build_input_context(asset_key=key, partition_key="n=1_q=1_s=1")) == record

    table = pd.DataFrame({"a": [1, 2]})
    tkey = AssetKey(["results", "mi_table"])
    io.handle_output(build_output_context(asset_key=tkey), table)
    pd.testing.assert_frame_equal(io.load_input(build_input_context(asset_key=tkey)), table)
    assert (tmp_path / "results" / "mi_table" / "all" / "table.csv").exists()

    staged = stage_dir(tmp_path)
    (staged / "counts.h5ad").write_bytes(b"x")
    mkey = AssetKey(["cite", "pool_counts"])
    io.handle_output(build_output_context(asset_key=mkey, partition_key="s=1"), staged)
    folder = io.load_input(build_input_context(asset_key=mkey, partition_key="s=1"))
    assert folder == partition_dir(tmp_path, ["cite", "pool_counts"], "s=1")
    assert (folder / "counts.h5ad").read_bytes() == b"x"

    # a training-set record comes back as the row-range handle the model opens
    from scaling_assets.data.pools import CountsRange

    handle = CountsRange(str(folder), 2, 0.5, 1)
    tkey = AssetKey(["cite", "train_counts"])
    io.handle_output(build_output_context(asset_key=tkey, partition_key="n=2_q=0.5_s=1"),
                     dict(handle.to_record(), umis_per_cell=3.0))
    assert io.load_input(build_input_context(asset_key=tkey, partition_key="n=2_q=0.5_s=1")) == handle


def test_inputs_get_the_type_their_annotation_asks_for(tmp_path):
    from pathlib import Path

    from dagster._core.types.dagster_type import resolve_dagster_type

    from scaling_assets.data.pools import CountsRange

    io = StudyIOManager(root=str(tmp_path))
    staged = stage_dir(tmp_path)
    key = AssetKey(["cite", "pool_counts"])
    io.handle_output(build_output_context(asset_key=key, partition_key="s=1"), staged)
    as_path = build_input_context(asset_key=key, partition_key="s=1", dagster_type=resolve_dagster_type(Path))
    assert io.load_input(as_path) == partition_dir(tmp_path, ["cite", "pool_counts"], "s=1")
    # a folder read where a row range is expected: the mismatch is named, not passed on to the model
    as_range = build_input_context(asset_key=key, partition_key="s=1", dagster_type=resolve_dagster_type(CountsRange))
    with pytest.raises(TypeError, match=r"annotated CountsRange reads cite/pool_counts, which is stored as a \w*Path"):
        io.load_input(as_range)


def test_missing_upstream_partition_is_named(tmp_path):
    io = StudyIOManager(root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"cite/split partition s=42 has not been materialised"):
        io.load_input(build_input_context(asset_key=AssetKey(["cite", "split"]), partition_key="s=42"))


def test_unsupported_output_type_is_refused(tmp_path):
    io = StudyIOManager(root=str(tmp_path))
    with pytest.raises(TypeError, match="stores staged folders"):
        io.handle_output(build_output_context(asset_key=AssetKey(["x"])), 42)


_WRITER = """
import sys, time
from scaling_assets.assets.storage import stage_dir
folder = stage_dir(sys.argv[1], "pool")
print(folder, flush=True)
while True:  # a long write into staging, as a pool or model partition would be
    with open(folder / "counts.h5ad", "ab") as f:
        f.write(b"x" * 1024)
    time.sleep(0.05)
"""


def _start_writer(root):
    import subprocess
    import sys

    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(root)], stdout=subprocess.PIPE, text=True)
    return writer, type(root)(writer.stdout.readline().strip())


def test_sweep_removes_staging_of_killed_writers_only(tmp_path):
    from scaling_assets.assets.storage import sweep_staging

    killed, killed_folder = _start_writer(tmp_path)
    running, running_folder = _start_writer(tmp_path)
    mine = stage_dir(tmp_path, "model_scvi")  # this process: still writing
    try:
        killed.kill()  # SIGKILL mid-write: no cleanup code runs in the writer
        killed.wait()
        assert (killed_folder / "counts.h5ad").exists()
        assert sweep_staging(tmp_path) == [killed_folder]
        assert not killed_folder.exists() and running_folder.exists() and mine.exists()
        assert sweep_staging(tmp_path) == []  # live writers are never swept
    finally:
        running.kill()
        running.wait()
    assert sweep_staging(tmp_path) == [running_folder]
    replace_dir(mine, tmp_path / "cite" / "model_scvi" / "n=1_q=1_s=1")  # a finished folder leaves no owner record
    assert list((tmp_path / ".staging").iterdir()) == []


def test_sweep_keeps_other_hosts_folders_and_removes_ownerless_ones(tmp_path):
    import os

    from scaling_assets.assets.storage import OWNER_SUFFIX, sweep_staging

    staging = tmp_path / ".staging"
    remote = staging / "pool-remote"
    remote.mkdir(parents=True)  # written by a Ray node sharing the study root: its pid means nothing here
    (staging / f"pool-remote{OWNER_SUFFIX}").write_text(f"some-other-node {os.getpid() + 10**6} 1.0")
    legacy = staging / "model_pca-abc"  # left by a version that wrote no owner record
    legacy.mkdir()
    assert sweep_staging(tmp_path) == [legacy]
    assert remote.exists()


def test_tables_carry_dagster_standard_metadata():
    import numpy as np

    from scaling_assets.assets.results import _table_metadata

    df = pd.DataFrame({"cells": [100, 200], "mi_bits": [1.23456789, np.nan], "algorithm": ["pca", "scvi"]})
    meta = _table_metadata(df, missing=["cite/mi_pca/n=1_q=1_s=1"])
    assert meta["dagster/row_count"] == 2
    assert [(c.name, c.type) for c in meta["dagster/column_schema"].columns] == [
        ("cells", "int"), ("mi_bits", "float"), ("algorithm", "string")]
    assert [r.data for r in meta["preview"].records] == [
        {"cells": 100, "mi_bits": 1.2346, "algorithm": "pca"}, {"cells": 200, "mi_bits": None, "algorithm": "scvi"}]
    assert meta["missing_partitions"] == 1
