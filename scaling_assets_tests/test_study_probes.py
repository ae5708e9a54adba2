"""What probing a study as a hostile user found (issue 43 item 5): a read-only root, a binary study file
and a full disk each end in one line naming the file; a test set too small for a pair signal is refused
before anything trains; a rebuilt partition rebuilds what was made from it; the progress counter never
goes backwards; a rerun after ``kill -9`` does not wait for Dagster's start timeout."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_tiny_study

from scaling_assets.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip()


# -- bad input and a bad place: one line naming the file --------------------------------------------
@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8", b"name: x\n\x00\x01\x02",
                                     "name: caf\xe9\n".encode("latin-1")])
@pytest.mark.parametrize("command", ["show", "run", "plan", "verify"])
def test_a_binary_or_undecodable_study_file_is_one_line_naming_it(tmp_path, capsys, content, command):
    path = tmp_path / "study.yaml"
    path.write_bytes(content)
    code, err = run_cli(capsys, "study", command, "--study", str(path))
    assert code == 2
    assert err.startswith(f"error: study file {path} is not a YAML text file: ") and "\n" not in err, err
    assert err.endswith("expected a study written as UTF-8 YAML"), err


def test_invalid_yaml_is_one_line_naming_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text("name: x\ndatasets: [a\n  b: 1\n")
    code, err = run_cli(capsys, "study", "show", "--study", str(path))
    assert code == 2 and "\n" not in err
    assert err.startswith(f"error: study file {path} is not valid YAML: while parsing a flow sequence in "
                          f'"{path}", line 2, column 11'), err


def immutable(folder: Path):
    """A folder nobody can write into, root included (``chattr +i``), as a read-only mount is; else skip."""
    folder.mkdir()
    if os.getuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("running as root without chattr +i: no way to make a folder read-only here")
    return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("command", ["run", "verify"])
def test_a_read_only_study_root_is_refused_in_one_line_naming_it(tmp_path, capsys, monkeypatch, command):
    locked = tmp_path / "mount"
    release = immutable(locked)
    try:
        path = write_tiny_study(tmp_path / "study.yaml", locked / "root", "ro")
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
        code, err = run_cli(capsys, "study", command, "--study", str(path))
    finally:
        release()
    assert code == 2, err
    reason = "Permission denied" if os.getuid() else "Operation not permitted"
    assert err == (f"error: study root {locked / 'root'} is not writable ({reason}); give the study root a folder "
                   "this user can write"), err


def test_a_read_only_mount_is_named_as_such(tmp_path, monkeypatch):
    """A bind mount mounted read-only fails every write with EROFS, whatever the permission bits say."""
    from scaling_assets.errors import InputError
    from scaling_assets.fs import check_writable

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "touch", read_only)
    with pytest.raises(InputError) as caught:
        check_writable(tmp_path / "root", "study root")
    root = tmp_path / "root"
    assert re.fullmatch(rf"study root {root} is not writable \(Read-only file system: {root}/\.\.write-check\.tmp-"
                        r"\d+-[0-9a-f]{8}\); give the study root a folder this user can write", str(caught.value)), caught
    assert not list(root.iterdir())  # nothing left behind


def test_a_full_disk_in_the_command_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import scaling_assets.fs

    lock = tmp_path / "root" / ".study-run.lock"

    def full(folder, what):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(lock))

    monkeypatch.setattr(scaling_assets.fs, "check_writable", full)
    path = write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", "full")
    code, err = run_cli(capsys, "study", "run", "--study", str(path))
    assert code == 1  # not bad input
    assert err == f"error: {lock}: No space left on device (errno 28)"


# HDF5's message for a write on a full disk (h5py 3, on a 64 KiB tmpfs): a newline follows its time field
HDF5_DISK_FULL = ("[Errno 28] Can't synchronously write data (file write failed: time = Mon Dec  7 19:31:20 2026\n"
                  ", filename = '{path}', file descriptor = 3, errno = 28, error message = 'No space left on device', "
                  "buf = 0x7f9d55cb7810, total write size = 736512, bytes this sub-write = 736512, offset = 65536)")


def test_a_step_that_fills_the_disk_is_reported_in_one_line_that_starts_with_what_failed(tmp_path):
    from dagster import DagsterInstance, asset, materialize

    from scaling_assets.study.serial import root_cause

    target = tmp_path / "root" / "cite" / "model_pca" / "a.h5"

    @asset
    def model_pca():
        raise OSError(28, HDF5_DISK_FULL.format(path=target).split("] ", 1)[1])

    with DagsterInstance.ephemeral() as instance:
        result = materialize([model_pca], instance=instance, raise_on_error=False)
    message = root_cause(result.all_events)
    assert message == ("model_pca: OSError: [Errno 28] Can't synchronously write data (file write failed: time = Mon "
                       f"Dec 7 19:31:20 2026, filename = '{target}', file descriptor = 3, errno = 28, error message = "
                       "'No space left on device', buf = 0x7f9d55cb7810, total write size = 736512, bytes this "
                       "sub-write = 736512, offset = 65536)"), message


# -- a partition made again: what was made from it is made again -------------------------------------
SEED, SETTING = "s=42", "n=100_q=1_s=42"
CHAIN = ("train_counts", "model_pca", "embeddings_pca", "mi_pca")


@pytest.fixture
def tiny_chain(tmp_path):
    """A tiny study with its shared data and one setting's chain materialised; ``run(names, partition)``
    materialises more, ``wanted()`` is what the next `study run` submits as {asset name: partitions}."""
    from dagster import AssetKey, DagsterInstance, materialize

    from scaling_assets.definitions import build_definitions
    from scaling_assets.study.backfills import missing_partitions
    from scaling_assets.study.spec import load_study

    study = load_study(write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", "stale"))
    defs = build_definitions(study)
    graph = defs.resolve_asset_graph()
    (tmp_path / "home").mkdir()
    instance = DagsterInstance.local_temp(str(tmp_path / "home"))

    def run(names, partition=None):
        assert materialize(list(defs.assets), selection=[AssetKey(["cite", n]) for n in names], partition_key=partition,
                           instance=instance, resources=dict(defs.resources)).success

    def wanted() -> dict[str, set]:
        found: dict[str, set] = {}
        for p in missing_partitions(study, instance, graph, refresh=False).iterate_asset_partitions():
            found.setdefault(p.asset_key.path[-1], set()).add(p.partition_key)
        return found

    run(["raw_counts"])
    run(["split", "pool_counts", "eval_counts", "pca_genes"], SEED)
    run(CHAIN, SETTING)
    yield study, run, wanted
    instance.dispose()


@pytest.mark.slow
def test_a_partition_deleted_or_made_again_has_what_was_made_from_it_made_again(tiny_chain):
    from scaling_assets.layout import partition_dir

    study, run, wanted = tiny_chain
    other = "n=100_q=0.5_s=42"  # the grid's other setting, never made
    assert {name: keys for name, keys in wanted().items() if name in CHAIN} == {n: {other} for n in CHAIN}

    # the model's folder deleted: the model, and the embeddings and MI made from the deleted model
    model = partition_dir(study.root, ["cite", "model_pca"], SETTING)
    shutil.rmtree(model)
    now = wanted()
    assert now["model_pca"] == now["embeddings_pca"] == now["mi_pca"] == {SETTING, other}
    assert now["train_counts"] == {other}

    # the model made again alone (a UI re-materialisation, or an earlier `study run` that rebuilt only it):
    # its embeddings and MI are older than it
    run(["model_pca"], SETTING)
    now = wanted()
    assert now["model_pca"] == {other} and now["embeddings_pca"] == now["mi_pca"] == {SETTING, other}
    assert now["mi_table"] == {None}  # the results summarise MI made again
    run(["embeddings_pca", "mi_pca"], SETTING)
    assert {name: keys for name, keys in wanted().items() if name in CHAIN} == {n: {other} for n in CHAIN}

    # a seed's split made again: everything made from that seed
    run(["split"], SEED)
    now = wanted()
    assert "split" not in now and "raw_counts" not in now
    assert now["pool_counts"] == now["eval_counts"] == now["pca_genes"] == {SEED}
    assert all(now[n] == {SETTING, other} for n in CHAIN), now


# -- a test set too small for an MI estimate: refused before anything trains --------------------------
LINEAGE = {"task": "lineage", "source": "simulated", "cells": 2000, "genes": 40, "seed": 2}
SHORT_LINEAGE = ("the test set of seed 43 (450 cells requested) holds 55 sister pairs (clones with an early and a "
                 "late cell) for signal 'clone' (also short: seed 42 'clone' 58); an MI estimate needs at least 64 "
                 "(validation_fraction 0.5, k 3, sampling project), so every MI step of the dataset would fail after "
                 "its models trained. A test set of 524 cells holds enough: set datasets.lineage.split.test_cells: 524")


def short_lineage_study(tmp_path, test_cells: int = 450) -> Path:
    return write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", "lin", seeds=[42, 43], sizes=[100, 200],
                            qualities=[1.0], split={"validation_cells": 50, "test_cells": test_cells},
                            datasets={"lineage": LINEAGE})


@pytest.mark.parametrize("task", ["lineage", "spatial", "cite", "development"])
def test_the_simulators_obs_without_its_counts_are_those_it_writes(tmp_path, task):
    import pandas as pd

    from scaling_assets.data.h5ad_io import CsrReader
    from scaling_assets.data.simulate import BLOCK, simulate, simulated_obs

    n = BLOCK + 300  # two blocks
    simulate(task, n, 30, 5, tmp_path / "x.h5ad")
    obs = simulated_obs(task, n, 30, 5)
    with CsrReader(tmp_path / "x.h5ad") as reader:
        written = reader.read_obs(columns=list(obs.columns))
    pd.testing.assert_frame_equal(obs, written, check_dtype=False, check_categorical=False)


def test_a_lineage_grid_whose_test_sets_hold_too_few_sister_pairs_is_refused_by_show_and_run(tmp_path, capsys,
                                                                                             monkeypatch):
    import scaling_assets.study.backfills
    from scaling_assets.study.pairs import dataset_obs, test_pairs
    from scaling_assets.study.spec import load_study

    def reached(*args, **kwargs):
        raise AssertionError("the study was submitted")

    monkeypatch.setattr(scaling_assets.study.backfills, "run_study_queued", reached)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    path = short_lineage_study(tmp_path)
    for command in ("show", "run"):
        code, err = run_cli(capsys, "study", command, "--study", str(path))
        assert code == 2 and err == f"error: study file {path}: datasets.lineage: {SHORT_LINEAGE}", err
    assert not (tmp_path / "root").exists()  # nothing made

    # the counts are those the split makes of the simulated data, and the advice holds
    enough = load_study(short_lineage_study(tmp_path, 524))
    obs = dataset_obs(enough, "lineage")
    assert {s: test_pairs(enough, "lineage", obs, s) for s in (42, 43)} == {42: {"clone": 67}, 43: {"clone": 65}}
    assert run_cli(capsys, "study", "show", "--study", str(enough.source_file))[0] == 0


def test_a_spatial_test_set_too_small_for_its_neighbour_pairs_is_refused(tmp_path):
    from scaling_assets.errors import StudyConfigError
    from scaling_assets.study.pairs import check_test_pairs
    from scaling_assets.study.spec import load_study

    spatial = {"task": "spatial", "source": "simulated", "cells": 600, "genes": 40, "seed": 3}
    study = load_study(write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", "sp", datasets={"spatial": spatial},
                                        split={"validation_cells": 50, "test_cells": 40}))
    with pytest.raises(StudyConfigError) as caught:
        check_test_pairs(study)
    assert str(caught.value).endswith(
        "datasets.spatial: the test set of seed 42 (40 cells requested) holds 38 neighbour pairs (one per cell) for "
        "signal 'neighbour'; an MI estimate needs at least 64 (validation_fraction 0.5, k 3, sampling project), so "
        "every MI step of the dataset would fail after its models trained. A test set of 68 cells holds enough: set "
        "datasets.spatial.split.test_cells: 68"), caught.value


def test_a_dataset_too_small_for_enough_pairs_says_how_many_cells_it_needs(tmp_path):
    from scaling_assets.errors import StudyConfigError
    from scaling_assets.study.pairs import check_test_pairs
    from scaling_assets.study.spec import load_study

    small = dict(LINEAGE, cells=500)
    study = load_study(write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", "small", sizes=[100],
                                        split={"validation_cells": 50, "test_cells": 300}, datasets={"lineage": small}))
    with pytest.raises(StudyConfigError, match=r"holds 42 sister pairs .* Its 500 cells cannot hold enough: about 458 "
                       r"test cells would, so the dataset needs about 608 cells \(458 test \+ 50 validation \+ the "
                       r"largest training size 100\)$"):
        check_test_pairs(study)


@pytest.mark.slow
def test_the_split_step_refuses_a_test_set_too_small_before_the_pools_are_written(tmp_path):
    """Real data is checked once ingested; the split step checks it in any case (a run from the UI)."""
    from dagster import AssetKey, DagsterInstance, materialize

    from scaling_assets.definitions import build_definitions
    from scaling_assets.layout import partition_dir
    from scaling_assets.study.serial import root_cause
    from scaling_assets.study.spec import load_study

    study = load_study(short_lineage_study(tmp_path))
    defs = build_definitions(study)
    keys = [AssetKey(["lineage", n]) for n in ("raw_counts", "split", "pool_counts")]
    with DagsterInstance.ephemeral() as instance:
        assert materialize(list(defs.assets), selection=keys[:1], instance=instance,
                           resources=dict(defs.resources)).success
        result = materialize(list(defs.assets), selection=keys[1:], partition_key="s=43", instance=instance,
                             resources=dict(defs.resources), raise_on_error=False)
    assert not result.success
    assert root_cause(result.all_events) == (
        "lineage__split: scaling_assets.errors.InputError: dataset 'lineage': the test set of seed 43 (450 cells requested) holds 55 sister "
        "pairs (clones with an early and a late cell) for signal 'clone'; an MI estimate needs at least 64 "
        "(validation_fraction 0.5, k 3, sampling project), so every MI step of the dataset would fail after its models "
        "trained. A test set of 524 cells holds enough: set datasets.lineage.split.test_cells: 524")
    assert not partition_dir(study.root, ["lineage", "pool_counts"], "s=43").exists()


# -- a run whose worker died while it was starting ----------------------------------------------------
def test_runs_whose_worker_died_while_starting_are_failed_at_once_and_retried(tmp_path):
    """Dagster's run monitoring looks at a worker only once its run started: one killed while starting
    waited out the 180 s start timeout. Failed here, with the reason, its retry is due at once."""
    import socket
    import sys

    from dagster import DagsterRunStatus
    from dagster._core.storage.tags import WILL_RETRY_TAG
    from dagster._core.test_utils import create_run_for_test, instance_for_test

    from scaling_assets.compute.run_workers import TAG_WORKER, fail_runs_of_dead_workers
    from scaling_assets.processes import process_identity

    def worker() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    dead, live = worker(), worker()
    dead_identity = process_identity(dead.pid)
    dead.kill()
    dead.wait()
    try:
        with instance_for_test(temp_dir=str(tmp_path), overrides={"run_retries": {"enabled": True, "max_retries": 1}}) \
                as instance:
            def starting(tags=None):
                return create_run_for_test(instance, status=DagsterRunStatus.STARTING, tags=tags or {}).run_id

            killed = starting({TAG_WORKER: dead_identity})
            running = starting({TAG_WORKER: process_identity(live.pid)})
            elsewhere = starting({TAG_WORKER: f"{socket.gethostname()}-other 123 1.0"})
            launching = starting()  # launched, no worker yet
            retrying = create_run_for_test(instance, status=DagsterRunStatus.STARTING, parent_run_id=killed,
                                           root_run_id=killed, tags={TAG_WORKER: dead_identity}).run_id
            done = create_run_for_test(instance, status=DagsterRunStatus.SUCCESS,
                                       tags={TAG_WORKER: dead_identity}).run_id

            assert fail_runs_of_dead_workers(instance) == [killed]
            run = instance.get_run_by_id(killed)
            assert run.status == DagsterRunStatus.FAILURE and run.tags[WILL_RETRY_TAG] == "true"
            failure = instance.all_logs(killed)[-1]
            assert failure.dagster_event.event_type_value == "PIPELINE_FAILURE"
            assert failure.message == (f"Run failed before it started: its run worker (pid {dead.pid}) is gone: it "
                                       "died while the run was starting (found by `study run`, not left for the 180 s "
                                       "start timeout).")
            # a retry carries its parent's tags, the dead worker's among them, until its own worker is tagged
            for run_id in (running, elsewhere, launching, retrying):
                assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTING
            assert instance.get_run_by_id(done).status == DagsterRunStatus.SUCCESS

            # no daemon alive: nothing launches the run that has no worker yet
            assert sorted(fail_runs_of_dead_workers(instance, launcher_gone=True)) == sorted([launching, retrying])
            assert "the dagster-daemon launching it is gone" in instance.all_logs(launching)[-1].message
            assert instance.get_run_by_id(running).status == DagsterRunStatus.STARTING
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_a_rerun_after_kill_9_while_a_run_starts_does_not_wait_out_the_start_timeout(tmp_path):
    """The probe: ``kill -9`` of the command, the daemon and the run workers while a run was starting; the
    rerun stalled 180 s ("Run timed out due to taking longer than 180 seconds to start"). Its progress
    counter, joining the killed command's backfill and then submitting the next stage, never goes back."""
    import re
    import signal
    import time

    from dagster import DagsterRunStatus, RunsFilter
    from dagster._core.storage.tags import PARENT_RUN_ID_TAG
    from study_processes import instance_at, make_study, recorded_daemon_pid, study_run

    from scaling_assets.compute.run_workers import TAG_WORKER

    before = os.environ.get("DAGSTER_HOME")
    path, home, env = make_study(tmp_path, "killed")
    instance = instance_at(home)
    first = study_run(path, env, tmp_path)
    daemon = None
    try:
        deadline, caught = time.time() + 300, None
        while caught is None and time.time() < deadline and first.poll() is None:
            for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTING])):
                if TAG_WORKER in run.tags:
                    os.kill(int(run.tags[TAG_WORKER].split()[1]), signal.SIGSTOP)  # held where it is: starting
                    if instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTING:
                        caught = run
                        break
            time.sleep(0.05)
        assert caught is not None, "no run was seen starting"
        daemon = recorded_daemon_pid(home)
        first.kill()
        os.killpg(daemon, signal.SIGKILL)  # the daemon, its code server, fork server and run workers
        first.communicate()

        start = time.time()
        rerun = study_run(path, env, tmp_path)
        out, _ = rerun.communicate(timeout=900)
        took = time.time() - start
        print(out)
        assert rerun.returncode == 0, out
        assert f"1 run(s) left starting by a worker that is gone marked failed ({caught.run_id[:8]})" in out, out
        killed = instance.get_run_by_id(caught.run_id)
        assert killed.status == DagsterRunStatus.FAILURE
        failure = [e.message for e in instance.all_logs(caught.run_id)
                   if e.dagster_event and e.dagster_event.event_type_value == "PIPELINE_FAILURE"]
        assert len(failure) == 1 and failure[0].startswith("Run failed before it started: its run worker"), failure
        retry = instance.get_runs(RunsFilter(tags={PARENT_RUN_ID_TAG: caught.run_id}))
        assert len(retry) == 1 and retry[0].status == DagsterRunStatus.SUCCESS
        retry_started = instance.get_run_record_by_id(retry[0].run_id).start_time
        print(f"rerun: {took:.1f} s; the killed run's retry started {retry_started - start:.1f} s after it began")
        for run in instance.get_runs():
            failure = [e.message for e in instance.all_logs(run.run_id) if e.dagster_event and
                       e.dagster_event.event_type_value == "PIPELINE_FAILURE"]
            assert not any("seconds to start" in m for m in failure), failure
        assert retry_started - start < 120  # the start timeout is 180 s from the kill
        # the progress counter over the joined backfill and the stage submitted after it never goes back
        counts = [(int(d), int(t)) for d, t in re.findall(r"partitions (\d+)/(\d+) done", out)]
        assert counts and counts[-1][0] == counts[-1][1], out
        assert all(a[0] <= b[0] for a, b in zip(counts, counts[1:])), counts
        assert "joining backfill" in out and "settings (" in out
    finally:
        if first.poll() is None:
            first.kill()
        if daemon is not None:
            try:
                os.killpg(daemon, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if before is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = before


@pytest.mark.parametrize("command", ["show", "plan"])
def test_study_show_and_plan_do_not_import_torch(tmp_path, command):
    # torch costs ~2 CPU s to import; these read only LMI's options (metrics/lmi_options.py)
    check = (f"import sys; from scaling_assets.cli import main; code = main(['study', '{command}']); "
             "assert code == 0, code; assert 'torch' not in sys.modules, 'torch was imported'")
    env = {**os.environ, "SCALING_ASSETS_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
