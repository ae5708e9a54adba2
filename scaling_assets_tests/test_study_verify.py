"""Damaged stored files are refused by the stage that reads them, naming the file and the partition to
rebuild; `study verify` finds them and marks them (and what was made from them since) for rebuilding."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from conftest import write_tiny_study
from dagster import AssetKey, DagsterInstance, materialize

from scaling_assets.definitions import build_definitions
from scaling_assets.layout import partition_dir
from scaling_assets.study.serial import root_cause
from scaling_assets.study.spec import load_study

pytestmark = pytest.mark.slow  # a study materialised, then damaged and verified

SEED, SETTING, OTHER = "s=42", "n=100_q=1_s=42", "n=100_q=0.5_s=42"


@pytest.fixture
def tiny(tmp_path):
    path = write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", "integrity")
    study = load_study(path)
    defs = build_definitions(study)
    (tmp_path / "home").mkdir()
    instance = DagsterInstance.local_temp(str(tmp_path / "home"))

    def run(select: list[str], partition: str | None = None):
        result = materialize(list(defs.assets), selection=[AssetKey(["cite", s]) for s in select],
                             partition_key=partition, instance=instance, resources=dict(defs.resources),
                             raise_on_error=False)
        return result.success, "" if result.success else root_cause(result.all_events)  # as `study run` reports it

    assert run(["raw_counts"])[0]
    assert run(["split", "pool_counts", "eval_counts", "pca_genes"], SEED)[0]
    run.study_file = path
    yield study, instance, run
    instance.dispose()


def _flip_pool_count(folder, row: int) -> None:
    from test_data_pools import _flip_count

    _flip_count(folder, row)


def test_flipped_pool_bytes_refused_then_found_marked_and_rebuilt(tiny, capsys, monkeypatch):
    from scaling_assets.cli import main
    from scaling_assets.study.backfills import missing_partitions
    from scaling_assets.study.verify import verify_study

    study, instance, run = tiny
    assert run(["train_counts"], SETTING)[0]
    pool = partition_dir(study.root, ["cite", "pool_counts"], SEED)
    written = (pool / "pool.h5ad").read_bytes()
    _flip_pool_count(pool, 10)  # same size: the size check on open passes

    ok, error = run(["train_counts"], OTHER)  # a new setting reads rows [0, 100) of the pool in order
    assert not ok
    assert "pool.h5ad: the counts of rows" in error and "differ from those written there" in error
    assert "partition cite/pool_counts s=42 must be rebuilt" in error and "study verify" in error

    out = io.StringIO()
    found = verify_study(study, None, mark=False, out=out)  # --dry-run
    assert found["bad"] == ["cite/pool_counts s=42"], out.getvalue()
    assert found["marked"] == [("cite/pool_counts", SEED)]  # train_counts was made before the file changed
    assert "BLAKE2b differs" in out.getvalue() and pool.exists()

    stamp = (pool / "summary.json").stat().st_mtime  # bytes rotted in place keep the file's write time:
    os.utime(pool / "pool.h5ad", (stamp, stamp))   # then everything made from it since is suspect
    monkeypatch.setenv("DAGSTER_HOME", str(instance.root_directory))
    assert main(["study", "verify", "--study", str(run.study_file)]) == 1  # found (and marked): not a clean bill
    out = capsys.readouterr().out
    assert "BAD cite/pool_counts s=42:" in out and "pool.h5ad: BLAKE2b differs" in out
    made = out.split("made from it since it changed (2): ")[1].splitlines()[0]
    assert set(made.split(", ")) == {"cite/train_counts n=100_q=1_s=42", "cite/pca_genes s=42"}, out
    assert "marked 3 partition(s) for rebuilding" in out
    assert not pool.exists() and not partition_dir(study.root, ["cite", "train_counts"], SETTING).exists()
    assert not partition_dir(study.root, ["cite", "pca_genes"], SEED).exists()
    observed = instance.fetch_observations(AssetKey(["cite", "pool_counts"]), limit=1).records[0]
    assert observed.partition_key == SEED  # the UI's partition page says why it was marked
    assert "BLAKE2b differs" in observed.asset_observation.metadata["marked_for_rebuild"].value
    assert partition_dir(study.root, ["cite", "split"], SEED).exists()  # the inputs stay

    # what `study run` submits next: the marked partitions (and the rest of the grid not made yet)
    wanted = missing_partitions(study, instance, build_definitions(study).resolve_asset_graph(), refresh=False)
    assert SEED in wanted.get_partitions_subset(AssetKey(["cite", "pool_counts"])).get_partition_keys()
    assert SETTING in wanted.get_partitions_subset(AssetKey(["cite", "train_counts"])).get_partition_keys()
    assert run(["pool_counts", "pca_genes"], SEED)[0]
    assert (pool / "pool.h5ad").read_bytes() == written  # rebuilt as first written
    assert run(["train_counts"], OTHER)[0] and run(["train_counts"], SETTING)[0]
    assert main(["study", "verify", "--study", str(run.study_file)]) == 0
    assert "every file matches what was written" in capsys.readouterr().out


def test_damaged_model_and_embeddings_name_the_partition_to_rebuild(tiny):
    from scaling_assets.assets.common import load_embeddings
    from scaling_assets.data.integrity import CorruptFileError
    from scaling_assets.study.verify import verify_study

    study, instance, run = tiny
    assert run(["train_counts", "model_pca", "embeddings_pca"], SETTING)[0]
    model = partition_dir(study.root, ["cite", "model_pca"], SETTING)
    embeddings = partition_dir(study.root, ["cite", "embeddings_pca"], SETTING)
    saved = model / "model" / "pca.npz"
    good = saved.read_bytes()

    saved.write_bytes(good[: len(good) // 2])  # truncated
    ok, error = run(["embeddings_pca"], SETTING)
    assert not ok and f"pca.npz: {len(good) // 2} bytes, expected {len(good)}" in error
    assert "partition cite/model_pca n=100_q=1_s=42 must be rebuilt" in error

    saved.write_bytes(good[:100] + bytes(len(good) - 100))  # garbled, same size
    ok, error = run(["embeddings_pca"], SETTING)
    assert not ok and "pca.npz: BLAKE2b differs" in error and "cite/model_pca n=100_q=1_s=42" in error

    (model / "fingerprint.json").unlink()  # a model saved before fingerprints: the reader's error, named
    ok, error = run(["embeddings_pca"], SETTING)
    assert not ok and "cannot be read (BadZipFile" in error and "cite/model_pca n=100_q=1_s=42" in error
    assert "Traceback" not in error.splitlines()[0]

    data = bytearray((embeddings / "embeddings.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (embeddings / "embeddings.npz").write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"embeddings.npz: BLAKE2b differs.*cite/embeddings_pca n=100_q=1_s=42"):
        load_embeddings(embeddings)
    (embeddings / "embeddings.npz").write_bytes(bytes(data[:40]))
    (embeddings / "fingerprint.json").unlink()
    with pytest.raises(CorruptFileError, match=r"embeddings.npz: cannot be read \(BadZipFile.*cite/embeddings_pca"):
        load_embeddings(embeddings)

    shutil.rmtree(embeddings)
    found = verify_study(study, instance, out=io.StringIO())
    assert found["bad"] == []  # the model lost its fingerprints above; nothing recorded is left to differ
    assert run(["model_pca", "embeddings_pca"], SETTING)[0]
    values, ids = load_embeddings(embeddings)
    assert values.shape[0] == len(ids) and np.isfinite(values).all()
    saved.write_bytes(good[:100] + bytes(len(good) - 100))
    found = verify_study(study, instance, out=io.StringIO())
    assert found["bad"] == ["cite/model_pca n=100_q=1_s=42"]
    assert found["marked"] == [("cite/model_pca", SETTING)]  # the embeddings read the model before it changed
    assert not model.exists() and embeddings.exists()


def test_verify_prints_to_the_stdout_of_its_call(tmp_path):
    """Its output goes where ``sys.stdout`` points when it is called, not where it pointed when the module
    was imported (a default bound at import wrote into an earlier test's closed capture: "I/O operation on
    closed file")."""
    import contextlib

    from scaling_assets.study.verify import verify_study

    study = load_study(write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", "printed"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert verify_study(study, None, mark=False)["bad"] == []
    assert "study 'printed': checked 0 partitions" in printed.getvalue()
