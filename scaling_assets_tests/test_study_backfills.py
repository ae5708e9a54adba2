"""The main job through the Dagster instance: ``scaling-assets study run`` submits an asset backfill, a
real ``dagster-daemon`` runs it through the repo's GPU-aware coordinator and launcher (each run its own
process), and the command watches it. Faults: a killed daemon (resume without redoing work), Ctrl-C
(cancel, nothing half-written), a broken dataset (only its dependants blocked), a second command."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.events import DagsterEventType
from dagster._core.execution.backfill import BulkActionStatus
from conftest import REPO, write_tiny_study

from scaling_assets.gpu.needs import TAG_CPU_SLOT, TAG_N_GENES, TAG_STUDY, TAG_THREADS
from scaling_assets.layout import result_paths
from scaling_assets.models.registry import ALGORITHMS
from scaling_assets.study.spec import load_study
from scaling_assets.study.backfills import study_lock
from study_processes import CITE, instance_at, make_study, recorded_daemon_pid, study_run


def succeeded_steps(instance, run_id: str) -> set[str]:
    return {e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)}


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def started_daemon_pid(output: str) -> int:
    return int(re.search(r"started dagster-daemon \(pid (\d+)", output).group(1))


def alive(pid: int) -> bool:
    """The process runs (a zombie waiting for init to reap it, as a killed CLI's daemon is, does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def materialisations_per_partition(instance: DagsterInstance, key: AssetKey) -> Counter:
    records = instance.fetch_materializations(key, limit=10_000).records
    return Counter(r.partition_key for r in records)


@pytest.fixture
def restore_dagster_home():
    before = os.environ.get("DAGSTER_HOME")
    yield
    if before is None:
        os.environ.pop("DAGSTER_HOME", None)
    else:
        os.environ["DAGSTER_HOME"] = before


@pytest.mark.slow
def test_study_runs_through_the_daemon_and_resumes_after_the_daemon_is_killed(tmp_path, restore_dagster_home):
    path, home, env = make_study(tmp_path, "queued")
    study = load_study(path)
    instance = instance_at(home)  # before the command: two processes creating SQLite storage at once can race
    first = study_run(path, env, tmp_path)
    mi = AssetKey(["cite", "mi_pca"])
    wait_for(lambda: instance.get_materialized_partitions(mi), 240, "a first MI partition")
    daemon_pid = recorded_daemon_pid(home)
    os.kill(daemon_pid, signal.SIGKILL)  # the daemon dies mid-study
    out1, _ = first.communicate(timeout=60)
    assert first.returncode != 0, out1
    assert "run the same command again" in out1, out1
    try:
        second = study_run(path, env, tmp_path)
        out2, _ = second.communicate(timeout=300)
    finally:
        try:
            os.killpg(daemon_pid, signal.SIGKILL)  # the killed daemon's code server, if still there
        except ProcessLookupError:
            pass
    assert second.returncode == 0, out2
    assert "joining backfill" in out2
    assert re.search(r"COMPLETED_SUCCESS, (\d+)/\1 partitions", out2), out2
    assert "MI (bits) at each algorithm's largest training size" in out2

    # every partition of the study exactly once: nothing completed before the kill was redone
    for key in instance.get_asset_keys():
        counts = materialisations_per_partition(instance, key)
        assert counts and set(counts.values()) == {1}, (key, counts)
    assert set(instance.get_materialized_partitions(mi)) == set(study.setting_keys("cite"))

    runs = instance.get_run_records(RunsFilter(tags={TAG_STUDY: "queued"}))
    assert runs and all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in runs)
    for r in runs:
        tags = r.dagster_run.tags
        assert tags[TAG_THREADS] and tags[TAG_CPU_SLOT] == "cpu"
        if any(k.path[0] == "cite" for k in r.dagster_run.asset_selection or ()):
            assert tags[TAG_N_GENES] == "40"  # GPU need sized from the dataset, not default_n_genes
    # settings go in after the shared data, so each setting's whole chain is one run: a run that
    # wrote an MI partition also trained that model (one backfill split them into a run per step)
    for r in runs:
        names = {k.path[-1] for k in r.dagster_run.asset_selection or ()}
        assert all(f"model_{a}" in names for a in ALGORITHMS if f"mi_{a}" in names), names
    assert {b.tags["scaling_assets/stage"] for b in instance.get_backfills()} == {"shared data", "settings"}
    # separate processes, several at once: some runs overlapped in time
    spans = [(r.start_time, r.end_time) for r in runs if r.start_time and r.end_time]
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) >= 2

    third = study_run(path, env, tmp_path)
    out3, _ = third.communicate(timeout=120)
    assert third.returncode == 0 and "already materialised" in out3, out3
    for output in (out2,):
        assert not alive(started_daemon_pid(output))  # the daemons this command started are stopped
    assert not any((Path(study.root) / ".staging").glob("*"))


def code_server_sockets(daemon_pid: int) -> set[str]:
    """The sockets of the code servers the daemon runs now (each reload starts a new one)."""
    import psutil

    sockets = set()
    try:
        children = psutil.Process(daemon_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return sockets
    for child in children:
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "grpc" in cmd and "--socket" in cmd:
            sockets.add(cmd[cmd.index("--socket") + 1])
    return sockets


@pytest.mark.slow
def test_code_reloads_mid_study_lose_and_repeat_nothing(tmp_path, restore_dagster_home):
    """Issue 24: a long study's daemon reloads its code location (every 10 minutes; `dagster dev`'s
    reload button does the same) while runs are queued and running. Here it reloads every 4 s (4-5 code
    servers over the ~35 s study): the study still finishes, each partition materialised exactly once,
    no run failed."""
    path, home, env = make_study(tmp_path, "reloaded")
    env["SCALING_ASSETS_CODE_RELOAD_INTERVAL"] = "4"
    study = load_study(path)
    instance = instance_at(home)
    run = study_run(path, env, tmp_path)
    seen: set[str] = set()
    daemon_pid = wait_for(lambda: (home / ".scaling_assets" / "daemon.json").exists() and recorded_daemon_pid(home),
                          120, "the study's daemon")
    while run.poll() is None:
        seen |= code_server_sockets(daemon_pid)
        time.sleep(0.5)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 0, out
    assert re.search(r"COMPLETED_SUCCESS, (\d+)/\1 partitions", out), out
    assert len(seen) >= 3, f"the daemon reloaded its code location {len(seen) - 1} time(s); expected several"
    for key in instance.get_asset_keys():
        counts = materialisations_per_partition(instance, key)
        assert counts and set(counts.values()) == {1}, (key, counts)
    assert set(instance.get_materialized_partitions(AssetKey(["cite", "mi_pca"]))) == set(study.setting_keys("cite"))
    runs = instance.get_run_records(RunsFilter(tags={TAG_STUDY: "reloaded"}))
    assert runs and all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in runs)


@pytest.mark.slow
def test_ctrl_c_during_a_gpu_step_cancels_its_run_without_running_the_step_again(tmp_path, restore_dagster_home):
    """Ctrl-C while SCVI trains: the run is cancelled, not retried. (With a RetryPolicy on the GPU
    assets, Dagster turned the interrupt into a retry: the step trained again from the start, the
    rest of the run followed and it ended as a success a minute later.) SCVI here is the paper-shape
    benchmark's synthetic model, which holds its step for ~40 s (models/stand_ins.py)."""
    path, home, env = make_study(tmp_path, "cancel_gpu", algorithms=["scvi"])
    env.update(SCALING_ASSETS_MODEL_OVERRIDE="scvi=scaling_assets.models.stand_ins:SyntheticSCVI",
               BENCH_PAPER_UNIT_S="25")
    instance = instance_at(home)
    run = study_run(path, env, tmp_path)

    def training():
        return [r.run_id for r in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
                if any("model_scvi" in (e.step_key or "")
                       for e in instance.all_logs(r.run_id, of_type=DagsterEventType.STEP_START))]

    training_runs = wait_for(training, 240, "a run training SCVI")
    time.sleep(2)
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=240)
    assert "CANCELED" in out, out
    for run_id in training_runs:
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.CANCELED
        kinds = {e.dagster_event.event_type for e in instance.all_logs(run_id) if e.dagster_event}
        assert not kinds & {DagsterEventType.STEP_UP_FOR_RETRY, DagsterEventType.STEP_RESTARTED}, kinds
    assert not instance.get_materialized_partitions(AssetKey(["cite", "model_scvi"]))


@pytest.mark.slow
def test_ctrl_c_cancels_the_backfill_and_leaves_no_half_written_partition(tmp_path, restore_dagster_home):
    path, home, env = make_study(tmp_path, "cancelled")
    study = load_study(path)
    instance = instance_at(home)
    run = study_run(path, env, tmp_path)
    wait_for(lambda: instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])), 120, "a started run")
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=240)
    assert run.returncode != 0
    assert "cancelling the backfill" in out and "CANCELED" in out, out
    backfill = instance.get_backfills()[0]
    assert backfill.status == BulkActionStatus.CANCELED
    assert not instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.QUEUED]))
    assert not alive(started_daemon_pid(out))
    # every partition folder on disk is one the instance recorded as materialised; staging is empty
    root = Path(study.root)
    assert not any((root / ".staging").glob("*"))
    for folder in root.glob("cite/*/*"):
        key = AssetKey(["cite", folder.parent.name])
        recorded = materialisations_per_partition(instance, key)
        assert (None if folder.name == "all" else folder.name) in recorded, folder

    # rerun at once (issue 26 item 4): the stopped daemon's heartbeats are still fresh-looking, but its
    # record says it stopped, so the rerun starts its own instead of waiting on a dead one
    again = study_run(path, env, tmp_path)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(again.stdout), daemon=True)
    reader.start()
    wait_for(lambda: any("dagster-daemon" in line for line in lines), 120, "the rerun's daemon line")
    again.send_signal(signal.SIGINT)
    again.wait(timeout=240)
    reader.join(timeout=10)
    out_again = "".join(lines)
    assert "started dagster-daemon" in out_again and "already running" not in out_again, out_again
    assert not alive(started_daemon_pid(out_again))


@pytest.mark.slow
def test_a_failed_dataset_blocks_only_its_dependants_and_names_the_cause(tmp_path, restore_dagster_home):
    from test_study_spec_sources import UNSAMPLED_ROW, write_h5ad

    # passes the sampled check at study load (a file that is not HDF5 is refused there); the ingest fails it
    broken = write_h5ad(tmp_path / "broken.h5ad", bad=(UNSAMPLED_ROW, -1))
    broken_dataset = {"task": "cite", "source": "h5ad", "paths": {"path": str(broken)}, "cells": 500}
    path, home, env = make_study(tmp_path, "failing", {"broken": broken_dataset})
    run = study_run(path, env, tmp_path)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 1, out
    assert "FAILED run" in out and "broken__raw_counts" in out and "broken.h5ad" in out, out
    instance = instance_at(home)
    study = load_study(path)
    assert set(instance.get_materialized_partitions(AssetKey(["cite", "mi_pca"]))) == set(study.setting_keys("cite"))
    assert not instance.get_materialized_partitions(AssetKey(["broken", "split"]))
    # the results cover the dataset that finished and name the one missing (they used to be left out
    # whole: the results waited on the blocked dataset's settings)
    paths = result_paths(study)
    assert "backfill" in out and "results of cite (no MI yet for broken" in out, out
    assert "results cover cite; missing: broken" in out, out
    assert set(pd.read_parquet(paths["mi_table"])["dataset"]) == {"cite"}
    plots = {name: p.exists() for name, p in paths.items() if name.startswith("plot_")}
    assert plots["plot_cite_cell_type"] and not any(v for k, v in plots.items() if k.startswith("plot_broken_"))
    for table in ("mi_table", "noise_law_fits", "size_law_fits", "parameter_table", "hyperparameter_table"):
        assert paths[table].exists(), table
    meta = instance.get_latest_materialization_event(AssetKey(["results", "mi_table"])).asset_materialization.metadata
    assert meta["datasets_complete"].value == "cite" and meta["datasets_missing"].value == "broken"
    assert {b.tags["scaling_assets/stage"] for b in instance.get_backfills()} == {"shared data", "settings", "results"}

    # once the dataset is fixed, the next run completes the study and its results
    from scaling_assets.data.simulate import simulate

    broken.unlink()
    simulate("cite", 500, 40, seed=3, out_path=broken)
    rerun = study_run(path, env, tmp_path)
    out2, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out2
    assert "results cover every dataset: cite, broken" in out2, out2
    assert set(pd.read_parquet(paths["mi_table"])["dataset"]) == {"cite", "broken"}
    assert paths["plot_broken_cell_type"].exists() and paths["plot_broken_protein"].exists()
    meta = instance.get_latest_materialization_event(AssetKey(["results", "mi_table"])).asset_materialization.metadata
    assert meta["datasets_complete"].value == "cite, broken" and meta["datasets_missing"].value == "none"


@pytest.mark.slow
def test_a_second_study_run_of_the_same_study_is_refused(tmp_path, restore_dagster_home):
    path, home, env = make_study(tmp_path, "locked")
    with study_lock(load_study(path)):
        run = study_run(path, env, tmp_path)
        out, _ = run.communicate(timeout=60)
    assert run.returncode == 2
    assert "is already being run by" in out and f"pid {os.getpid()}" in out, out


@pytest.mark.slow
def test_the_settings_go_in_once_the_shared_data_is_written_not_when_the_daemon_marks_it(tmp_path,
                                                                                         restore_dagster_home):
    """The shared-data stage hands off as soon as its runs succeeded and every partition it targets is
    materialised, while its backfill is still marked in progress (the daemon marks it one evaluation
    later); not before. The end of the command takes the daemon's verdict."""
    from dagster import materialize
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    from scaling_assets.definitions import build_definitions
    from scaling_assets.study.backfills import (SHARED, SETTINGS, _all_written, _await_daemon_verdicts, _watch,
                                            missing_partitions, progress, stage_of, stage_target, submit_backfill)

    path, home, _ = make_study(tmp_path, "handoff", algorithms=["pca", "geneformer"])
    study = load_study(path)
    instance = instance_at(home)
    defs = build_definitions(study)
    graph = defs.resolve_asset_graph()
    target = stage_target(missing_partitions(study, instance, graph, refresh=False), SHARED, graph)
    # the shared data is what every algorithm reads; Geneformer's per-quality corpora go with the settings
    assert {k.path[-1] for k in target.asset_keys} == {"raw_counts", "split", "pool_counts", "eval_counts",
                                                       "gene_medians", "pca_genes"}
    assert stage_of(AssetKey(["cite", "pool_corpus"]), graph) == SETTINGS
    backfill_id = None

    def write(keys, partition=None):  # as the daemon's runs of this backfill would
        tags = {BACKFILL_ID_TAG: backfill_id} if backfill_id else {}
        assert materialize(list(defs.assets), selection=keys, partition_key=partition, instance=instance,
                           resources=dict(defs.resources), tags=tags).success

    raw = [k for k in target.asset_keys if k.path[-1] == "raw_counts"]
    # an earlier study run (before a code change, or redone with --refresh) wrote all of it once: what it
    # wrote is not this backfill's work (the hand-off once counted it, after this backfill's first run,
    # and the settings stage found the per-seed data not yet written and left out every dataset)
    write(raw)
    write([k for k in target.asset_keys if k not in raw], "s=42")
    time.sleep(0.05)
    backfill_id = submit_backfill(study, instance, target, SHARED)
    write(raw)
    backfill = instance.get_backfill(backfill_id)
    assert not _all_written(instance, backfill, graph, progress(instance, backfill, graph))  # per-seed data missing
    write([k for k in target.asset_keys if k not in raw], "s=42")
    outcome = _watch(instance, backfill_id, graph, None, io.StringIO(), poll_s=0.1, hand_off=True)
    assert outcome["status"] == BulkActionStatus.REQUESTED  # handed off before the daemon's mark
    assert outcome["done"] == outcome["target"] == target.num_partitions_and_non_partitioned_assets
    assert outcome["runs"] == 2 and not outcome["failed"]
    instance.update_backfill(instance.get_backfill(backfill_id).with_status(BulkActionStatus.COMPLETED_SUCCESS))
    _await_daemon_verdicts(instance, [outcome], None, poll_s=0.1)
    assert outcome["status"] == BulkActionStatus.COMPLETED_SUCCESS


def fake_instance(tmp_path: Path, heartbeats: dict | None = None):
    """What ``daemon_alive`` and ``study_daemon`` read of an instance: its home and daemon heartbeats."""
    from types import SimpleNamespace

    beats = {kind: SimpleNamespace(timestamp=time.time()) for kind in ("BACKFILL", "QUEUED_RUN_COORDINATOR")} \
        if heartbeats is None else heartbeats
    return SimpleNamespace(root_directory=str(tmp_path), get_daemon_heartbeats=lambda: beats,
                           get_required_daemon_types=lambda: ["BACKFILL", "QUEUED_RUN_COORDINATOR"])


def sleeper(*extra: str) -> subprocess.Popen:
    """A process standing in for a daemon (own session, as a started daemon has) or a `study run`."""
    return subprocess.Popen([sys.executable, "-c", "import sys, time\n" + "\n".join(extra) + "\ntime.sleep(120)"],
                            start_new_session=True)


def test_a_dead_or_reused_daemon_pid_is_not_taken_for_a_live_daemon(tmp_path):
    """The daemon a ``study run`` started records its process identity; with fresh heartbeats left by a
    killed daemon, a record naming a gone process, or a live process that reused its pid, says
    "no daemon" (and notes when it was found gone: later heartbeats are another daemon's); the live
    process itself, or a daemon on another host, is judged by its heartbeats."""
    from types import SimpleNamespace

    from scaling_assets.study.daemon import DaemonRecord, daemon_alive, read_record, record_file, write_record
    from scaling_assets.processes import process_identity

    instance = fake_instance(tmp_path)
    fresh = instance.get_daemon_heartbeats()
    recorded = record_file(instance)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = process_identity(gone.pid)
    gone.wait()
    host, pid, started = identity.split()
    live = process_identity(os.getpid())
    reused = f"{host} {os.getpid()} {float(live.split()[2]) - 100:.3f}"  # our pid, another start time
    for dead in (identity, reused):
        write_record(recorded, DaemonRecord(dead, study="s", root=str(tmp_path)))
        assert not daemon_alive(instance), dead
        assert read_record(recorded).stopped_at is not None  # found gone: its heartbeats no longer count
    for kind in fresh:
        fresh[kind] = SimpleNamespace(timestamp=time.time() + 1)
    assert daemon_alive(instance)  # heart-beating since: another daemon
    for judged_by_heartbeats in (live, f"another-host {pid} {started}"):
        write_record(recorded, DaemonRecord(judged_by_heartbeats))
        assert daemon_alive(instance)
    recorded.write_text(live)  # a record of an older version: a bare identity
    assert daemon_alive(instance)
    fresh.pop("BACKFILL")
    assert not daemon_alive(instance)  # no backfill loop heart-beating


def test_a_rerun_right_after_a_stopped_daemon_does_not_take_its_heartbeats_for_a_live_daemon(tmp_path):
    """Issue 26 item 4: the daemon's heartbeats stay fresh-looking for up to 75 s after ``study run``
    stopped it; the record it leaves (identity, stop time) says it is gone, so the rerun starts a
    daemon instead of waiting 60 s on a dead one and exiting 2."""
    from scaling_assets.study.daemon import DaemonProcess, DaemonRecord, daemon_alive, read_record, record_file, write_record
    from scaling_assets.processes import process_identity

    instance = fake_instance(tmp_path)  # heartbeats written a moment ago, by the daemon about to stop
    path = record_file(instance)
    process = sleeper()
    write_record(path, DaemonRecord(process_identity(process.pid), study="s", root=str(tmp_path)))
    daemon = DaemonProcess({}, tmp_path / "daemon.log", path, identity=process_identity(process.pid))
    assert daemon.running() and daemon_alive(instance)
    daemon.stop(timeout_s=5)
    assert process.wait(timeout=5) is not None
    assert read_record(path).stopped_at is not None
    assert not daemon_alive(instance)


def test_a_second_study_on_the_same_home_is_refused_naming_the_study_that_holds_it(tmp_path):
    """Issue 26 item 2: one daemon loads one study's definitions. While another study's ``study run``
    owns the daemon of this DAGSTER_HOME, or its daemon is still finishing that study after its
    command was killed, ``study run`` of another study is refused at once, naming both roots."""
    from types import SimpleNamespace

    from scaling_assets.study.daemon import DaemonRecord, owner_lock_file, record_file, study_daemon, write_record
    from scaling_assets.errors import InputError
    from scaling_assets.processes import process_identity

    instance = fake_instance(tmp_path)
    path = record_file(instance)
    path.parent.mkdir(parents=True)
    lock = owner_lock_file(path)
    owner = sleeper("import fcntl", f"f = open({str(lock)!r}, 'a+')", "fcntl.flock(f, fcntl.LOCK_EX)",
                    f"open({str(tmp_path / 'locked')!r}, 'w').close()")
    daemon = sleeper()
    try:
        wait_for(lambda: (tmp_path / "locked").exists(), 30, "the other study run to take the lock")
        write_record(path, DaemonRecord(process_identity(daemon.pid), owner=process_identity(owner.pid),
                                        study="first", root=str(tmp_path / "first")))
        second = SimpleNamespace(name="second", root=tmp_path / "second")
        t0 = time.time()
        with pytest.raises(InputError) as refused, study_daemon(instance, second, {}, io.StringIO()):
            pass
        message = str(refused.value)
        assert time.time() - t0 < 5
        assert f"is in use by the `study run` of study 'first' (pid {owner.pid})" in message
        assert str(tmp_path / "first") in message and "export DAGSTER_HOME" in message

        owner.kill()  # its command killed; its daemon finishes the first study's work
        owner.wait()
        with pytest.raises(InputError) as refused, study_daemon(instance, second, {}, io.StringIO()):
            pass
        assert f"the dagster-daemon (pid {daemon.pid}) of study 'first', whose `study run` stopped" in str(refused.value)
        assert daemon.poll() is None  # not ours to stop
    finally:
        for process in (owner, daemon):
            process.kill()
            process.wait()


@pytest.mark.slow
def test_the_rerun_of_a_killed_study_run_adopts_its_daemon_and_stops_it_at_the_end(tmp_path):
    """Issue 26 item 3: ``kill -9`` of ``study run`` leaves its daemon running; the rerun of the same
    study takes it over (it becomes the owner) and stops it when it ends."""
    from types import SimpleNamespace

    from scaling_assets.study.daemon import DaemonRecord, read_record, record_file, study_daemon, write_record
    from scaling_assets.processes import process_identity

    instance = fake_instance(tmp_path)
    path = record_file(instance)
    killed_cli = subprocess.Popen([sys.executable, "-c", "pass"])
    killed_identity = process_identity(killed_cli.pid)
    killed_cli.wait()
    daemon = sleeper()
    try:
        write_record(path, DaemonRecord(process_identity(daemon.pid), owner=killed_identity, study="same",
                                        root=str(tmp_path / "root")))
        out = io.StringIO()
        with study_daemon(instance, SimpleNamespace(name="same", root=tmp_path / "root"), {}, out) as adopted:
            assert f"adopting the dagster-daemon (pid {daemon.pid})" in out.getvalue()
            assert adopted.running()
            assert read_record(path).owner == process_identity(os.getpid())
        assert daemon.wait(timeout=10) is not None  # stopped with the study
        assert read_record(path).stopped_at is not None
    finally:
        daemon.kill()
        daemon.wait()


@pytest.mark.slow
def test_a_daemon_whose_study_run_is_gone_stops_once_nothing_is_left_to_run(tmp_path):
    """Issue 26 item 3, inside the daemon: it stops itself only when its owner's lock is free (the
    command died) and the instance has no backfill in progress and no unfinished run."""
    from dagster import DagsterRun

    from scaling_assets.study.daemon import DaemonRecord, owner_gone_and_idle, owner_lock_file, record_file, write_record
    from scaling_assets.processes import process_identity

    instance = DagsterInstance.ephemeral()
    home = fake_instance(tmp_path)
    path = record_file(home)
    me = process_identity(os.getpid())
    write_record(path, DaemonRecord(me, owner="", study="s", root=str(tmp_path)))
    lock_path = owner_lock_file(path)
    owner = sleeper("import fcntl", f"f = open({str(lock_path)!r}, 'a+')", "fcntl.flock(f, fcntl.LOCK_EX)",
                    f"open({str(tmp_path / 'locked')!r}, 'w').close()")
    lock = open(lock_path, "a+")
    try:
        wait_for(lambda: (tmp_path / "locked").exists(), 30, "the owner to take the lock")
        assert not owner_gone_and_idle(lock, path, me, instance)  # its study run is there
        owner.kill()
        owner.wait()
        run = instance.add_run(DagsterRun(job_name="j", run_id="r" * 32, status=DagsterRunStatus.STARTED))
        assert not owner_gone_and_idle(lock, path, me, instance)  # a run still going
        instance.report_run_failed(run)
        assert owner_gone_and_idle(lock, path, me, instance)
    finally:
        owner.kill()
        owner.wait()
        lock.close()


def test_the_instance_settings_for_killed_run_workers():
    """Issue 26 item 8: run monitoring polls every 5 s and a run whose worker died is retried once from
    its failure, a failed step is not (the run label: ``test_compute_run_labels.py``)."""
    import yaml

    for config in (REPO / "dagster.yaml", REPO / "deploy" / "postgres" / "dagster.yaml"):
        settings = yaml.safe_load(config.read_text())
        assert settings["run_monitoring"]["poll_interval_seconds"] <= 5, config
        assert settings["run_retries"] == {"enabled": True, "max_retries": 1, "retry_on_asset_or_op_failure": False}


@pytest.mark.slow
def test_one_daemon_per_home_ends_with_its_study_and_killed_workers_resume(tmp_path, restore_dagster_home):
    """Issue 26, on real daemons and runs, in the order a user meets them:

    - a second study on the same DAGSTER_HOME is refused at once, naming the study that holds it, and
      writes nothing;
    - a run worker killed by ``kill -9`` mid-chain is marked failed within seconds (run monitoring polls
      every 5 s) and re-executed from its failure in the same backfill: the steps it finished stay;
    - the ``study run`` killed by ``kill -9``: the rerun adopts its daemon and stops it at the end;
    - a rerun seconds after a finished one starts a fresh daemon (the stopped one's heartbeats are
      not taken for a live daemon) and finishes;
    - the ``study run`` killed and not rerun: its daemon finishes the submitted work and exits;
    - every run belongs to the code location ``scaling_assets`` (as in workspace.yaml) and carries a
      readable label; the backfills carry their title as a tag."""
    from dagster._core.storage.tags import PARENT_RUN_ID_TAG

    from scaling_assets.compute.coordinator import TAG_RUN
    from scaling_assets.compute.run_workers import TAG_WORKER
    from scaling_assets.study.backfills import TAG_TITLE

    # three qualities: after the worker's kill and its retry, runs are left for the rerun to adopt (with
    # two, CI's daemon once finished the study between the kill of the command and the rerun)
    path, home, env = make_study(tmp_path, "owned", qualities=[1.0, 0.5, 0.25])
    other = write_tiny_study(tmp_path / "other.yaml", tmp_path / "other_root", "other", sizes=[100])
    study = load_study(path)
    instance = instance_at(home)
    first = study_run(path, env, tmp_path)
    started_pids = []
    try:
        # -- a second study on the same home -------------------------------------------------------
        wait_for(lambda: instance.get_runs(limit=1), 300, "the study's first run")  # its command holds the home
        t0 = time.time()
        second = study_run(other, env, tmp_path)
        out_other, _ = second.communicate(timeout=120)
        print(f"second study refused after {time.time() - t0:.1f} s:\n{out_other}")
        assert second.returncode == 2, out_other
        assert "is in use by the `study run` of study 'owned'" in out_other and "DAGSTER_HOME" in out_other
        assert not any(p.is_dir() for p in (tmp_path / "other_root").glob("*/*")), "the other study wrote data"

        # -- a run worker killed after its chain's first step --------------------------------------
        train = AssetKey(["cite", "train_counts"])

        def chain_run_past_its_first_step():
            written = {r.run_id for r in instance.fetch_materializations(train, limit=100).records}
            for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
                names = {k.path[-1] for k in run.asset_selection or ()}
                # past the step's success, not just its output: a kill between the two has the retry redo it
                if {"train_counts", "mi_pca"} <= names and run.run_id in written and TAG_WORKER in run.tags \
                        and "cite__train_counts" in succeeded_steps(instance, run.run_id):
                    return run
            return None

        killed = None
        while killed is None:
            run = wait_for(chain_run_past_its_first_step, 300, "a setting chain run past train_counts")
            os.kill(int(run.tags[TAG_WORKER].split()[1]), signal.SIGKILL)
            killed_at = time.time()
            if instance.get_run_by_id(run.run_id).status != DagsterRunStatus.SUCCESS:
                killed = run
        wait_for(lambda: instance.get_run_by_id(killed.run_id).status == DagsterRunStatus.FAILURE, 60,
                 "the killed run marked failed")
        marked_failed_s = time.time() - killed_at
        retry = wait_for(lambda: instance.get_runs(RunsFilter(tags={PARENT_RUN_ID_TAG: killed.run_id})), 60,
                         "the killed run's retry")[0]
        print(f"killed run worker marked failed after {marked_failed_s:.1f} s; retry {retry.run_id[:8]} runs "
              f"steps {sorted(retry.step_keys_to_execute or [])}")
        assert marked_failed_s < 30
        assert retry.step_keys_to_execute and "cite__train_counts" not in retry.step_keys_to_execute

        # -- kill -9 of the `study run`, rerun at once ---------------------------------------------
        assert first.poll() is None, "the study finished before its command could be killed"
        first_daemon = recorded_daemon_pid(home)
        started_pids.append(first_daemon)
        first.kill()
        first.communicate()
        rerun = study_run(path, env, tmp_path)
        out_rerun, _ = rerun.communicate(timeout=400)
        assert "already materialised" not in out_rerun, \
            f"the daemon finished the study before the rerun: too little work left to adopt\n{out_rerun}"
        assert rerun.returncode == 0, out_rerun
        assert f"adopting the dagster-daemon (pid {first_daemon})" in out_rerun, out_rerun
        assert re.search(r"COMPLETED_SUCCESS, (\d+)/\1 partitions", out_rerun), out_rerun
        assert not alive(first_daemon), "the adopted daemon outlived the study"
        # Nothing the killed run had finished was redone. The one exception is the step the kill cut
        # short: its output may have been recorded without the step's success, and the retry redoes it.
        in_flight = {AssetKey(["cite", step.split("__", 1)[1]]) for step in retry.step_keys_to_execute}
        twice = []
        for key in instance.get_asset_keys():
            counts = materialisations_per_partition(instance, key)
            assert counts and set(counts.values()) <= {1, 2}, (key, counts)
            twice += [(key, pk) for pk, n in counts.items() if n == 2]
        assert len(twice) <= 1, twice
        assert all(k in in_flight and pk == killed.tags.get("dagster/partition") for k, pk in twice), \
            (twice, killed.tags)
        assert killed.run_id[:8] not in str(run_failures_of(instance))  # its retry stands for it

        # -- a rerun seconds after the daemon stopped ----------------------------------------------
        mi_folder = next((Path(study.root) / "cite" / "mi_pca").iterdir())
        shutil.rmtree(mi_folder)
        t0 = time.time()
        again = study_run(path, env, tmp_path)
        out_again, _ = again.communicate(timeout=300)
        print(f"immediate rerun: exit {again.returncode} after {time.time() - t0:.1f} s")
        assert again.returncode == 0, out_again
        assert "started dagster-daemon" in out_again and "COMPLETED_SUCCESS" in out_again, out_again
        started_pids.append(started_daemon_pid(out_again))
        assert mi_folder.is_dir()

        # -- kill -9 of the `study run`, no rerun: the daemon finishes and exits -------------------
        shutil.rmtree(mi_folder)
        last = study_run(path, env, tmp_path)
        backfills_before = {b.backfill_id for b in instance.get_backfills()}
        new_backfill = wait_for(lambda: [b for b in instance.get_backfills() if b.backfill_id not in backfills_before],
                                120, "the rerun's backfill")[0]
        orphan = recorded_daemon_pid(home)
        started_pids.append(orphan)
        last.kill()
        last.communicate()
        t0 = time.time()
        wait_for(lambda: not alive(orphan), 240, "the orphaned daemon to finish the study and exit")
        print(f"orphaned daemon exited {time.time() - t0:.1f} s after its `study run` was killed")
        assert instance.get_backfill(new_backfill.backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS
        assert mi_folder.is_dir()

        # -- what the UI shows ---------------------------------------------------------------------
        runs = instance.get_runs(RunsFilter(tags={TAG_STUDY: "owned"}))
        assert {r.remote_job_origin.repository_origin.code_location_origin.location_name for r in runs} == \
            {"scaling_assets"}
        assert all(r.tags.get(TAG_RUN) for r in runs)
        assert any(re.fullmatch(r"cite n=\d+ q=[\d.]+ s=42: pca", r.tags[TAG_RUN]) for r in runs)
        # (a results backfill of its own where a run's retry wrote MI after the settings backfill ended)
        titles = {b.tags[TAG_TITLE] for b in instance.get_backfills()}
        assert {"study owned: shared data", "study owned: settings"} <= titles <= {
            "study owned: shared data", "study owned: settings", "study owned: results"}
    finally:
        for pid in started_pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if first.poll() is None:
            first.kill()


def run_failures_of(instance: DagsterInstance) -> dict:
    from scaling_assets.study.backfills import run_failures

    return {k: v for b in instance.get_backfills() for k, v in run_failures(instance, b.backfill_id).items()}


def test_results_are_behind_while_some_mi_is_newer_than_them(tmp_path):
    """``study run`` submits the results on their own when the settings backfill did not write them
    after the last MI (a dataset blocked, a setting failed, or a run joined after they were written)."""
    from dagster import AssetMaterialization

    from scaling_assets.definitions import build_definitions
    from scaling_assets.study.backfills import datasets_with_mi, results_behind, results_subset

    path, _, _ = make_study(tmp_path, "behind", {"other": dict(CITE, seed=2)})
    study = load_study(path)
    graph = build_definitions(study).resolve_asset_graph()
    instance = DagsterInstance.ephemeral()
    results = results_subset(graph).asset_keys
    assert {k.path[-1] for k in results} == {"mi_table", "parameter_table", "hyperparameter_table",
                                             "noise_law_fits", "size_law_fits", "scaling_plots"}
    assert not results_behind(study, instance, graph) and datasets_with_mi(study, instance) == []  # no MI yet
    setting = study.setting_keys("cite")[0]
    instance.report_runless_asset_event(AssetMaterialization(AssetKey(["cite", "mi_pca"]), partition=setting))
    assert results_behind(study, instance, graph) and datasets_with_mi(study, instance) == ["cite"]
    time.sleep(0.01)
    order = ["mi_table", "parameter_table", "hyperparameter_table", "noise_law_fits", "size_law_fits", "scaling_plots"]
    for name in order:  # each after the result it is made from
        instance.report_runless_asset_event(AssetMaterialization(AssetKey(["results", name])))
    assert not results_behind(study, instance, graph)
    time.sleep(0.01)  # a model written after the parameter tables: they are behind it
    instance.report_runless_asset_event(AssetMaterialization(AssetKey(["cite", "model_pca"]), partition=setting))
    assert results_behind(study, instance, graph)
    for name in order:
        instance.report_runless_asset_event(AssetMaterialization(AssetKey(["results", name])))
    assert not results_behind(study, instance, graph)
    # the parameter tables follow the models, not the MI: written before the last MI, they are not behind
    # (the default study's settings backfill writes them so; this had a results backfill run again)
    time.sleep(0.01)
    for name in ("parameter_table", "hyperparameter_table"):
        instance.report_runless_asset_event(AssetMaterialization(AssetKey(["results", name])))
    time.sleep(0.01)
    instance.report_runless_asset_event(AssetMaterialization(AssetKey(["cite", "mi_pca"]), partition=setting))
    for name in ("mi_table", "noise_law_fits", "size_law_fits", "scaling_plots"):
        instance.report_runless_asset_event(AssetMaterialization(AssetKey(["results", name])))
    assert not results_behind(study, instance, graph)
    time.sleep(0.01)
    instance.report_runless_asset_event(AssetMaterialization(AssetKey(["other", "mi_pca"]), partition=setting))
    assert results_behind(study, instance, graph) and datasets_with_mi(study, instance) == ["cite", "other"]


def test_a_study_larger_than_sqlite_tracks_comfortably_is_warned_about(tmp_path):
    """Issue 24: beyond 50,000 asset partitions on SQLite, ``study run`` warns and points to PostgreSQL."""
    from scaling_assets.definitions import build_definitions
    from scaling_assets.study.backfills import partition_count, storage_warning

    default = build_definitions(load_study("default")).resolve_asset_graph()
    assert partition_count(default) == 858  # the default study: shared data (44), settings (808), results (6)
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as sqlite:
        warning = storage_warning(50_001, sqlite)
        assert "50,001 asset partitions on SQLite storage" in warning and "deploy/postgres/dagster.yaml" in warning
        assert storage_warning(50_000, sqlite) is None
    assert storage_warning(10 ** 6, DagsterInstance.ephemeral()) is None  # not SQLite: nothing to say


def test_daemon_log_is_outside_dagsters_telemetry_folder(tmp_path):
    """Dagster's daemon moves $DAGSTER_HOME/logs/* to .logs_queue, posts and deletes it (telemetry upload)."""
    from scaling_assets.study.daemon import log_file

    assert "logs" not in log_file(tmp_path).relative_to(tmp_path).parts


def test_progress_counts_what_succeeded_runs_wrote_before_the_daemon_folds_it_in():
    """At the paper's shape the daemon's first evaluation submits every setting's run (an hour or more)
    before it folds in any materialisation: progress counts the partitions of the runs that succeeded."""
    from types import SimpleNamespace

    from dagster import AssetKey, DagsterRunStatus

    from scaling_assets.study.backfills import progress

    class Subset:
        def __init__(self, n):
            self.num_partitions_and_non_partitioned_assets = n

        def __and__(self, other):
            return self

    data = SimpleNamespace(materialized_subset=Subset(0), target_subset=Subset(100),
                           failed_and_downstream_subset=Subset(0))
    backfill = SimpleNamespace(backfill_id="b", get_asset_backfill_data=lambda graph: data)
    chain = frozenset(AssetKey(["cite", f"a{i}"]) for i in range(14))
    runs = [SimpleNamespace(status=s, tags={}, asset_selection=chain)
            for s in (DagsterRunStatus.SUCCESS, DagsterRunStatus.STARTED, DagsterRunStatus.FAILURE)]
    instance = SimpleNamespace(
        get_runs=lambda filters: [r for r in runs if r.status in filters.statuses],
        get_runs_count=lambda filters: sum(r.status in filters.statuses for r in runs))
    assert progress(instance, backfill, None).done == 14
    data.materialized_subset = Subset(30)  # once the daemon has folded some in, its bookkeeping is taken
    assert progress(instance, backfill, None).done == 30


def test_a_large_daemon_log_is_rotated_when_the_next_daemon_starts(tmp_path):
    from scaling_assets.study.daemon import rotate_log

    log = tmp_path / "daemon.log"
    rotate_log(log, limit=10)  # none yet
    log.write_text("x" * 5)
    rotate_log(log, limit=10)
    assert log.read_text() == "x" * 5
    log.write_text("y" * 20)
    (tmp_path / "daemon.log.1").write_text("old")
    rotate_log(log, limit=10)
    assert not log.exists() and (tmp_path / "daemon.log.1").read_text() == "y" * 20


def test_a_running_daemons_log_is_rotated_in_place_and_its_writers_carry_on(tmp_path):
    """A study of weeks appends its run workers' output to the daemon's log (47 MiB in a 45-minute
    paper-shape window): the daemon rotates it while it runs. Its writers hold it open in append mode, as
    DaemonProcess opens it, so after the truncation they write at the new end: no hole of NUL bytes, no
    line cut, and the lines go on in order in the live file."""
    import subprocess
    import threading

    from scaling_assets.study.daemon import keep_log_bounded

    log = tmp_path / "daemon.log"
    lines, limit = 4000, 20_000
    writer = "import sys\nfor i in range(%d):\n    sys.stdout.write(f'{i:08d} ' + 'x' * 90 + '\\n'); sys.stdout.flush()" % lines
    stop = threading.Event()
    rotation = threading.Thread(target=keep_log_bounded, args=(log, limit, 0.005, stop))
    with open(log, "ab") as out:  # as DaemonProcess.start opens it
        rotation.start()
        subprocess.run([sys.executable, "-c", writer], stdout=out, check=True)
        stop.set()
        rotation.join()
        out.write(b"the end\n")  # after the last rotation: lands at the live log's end
    assert log.read_bytes().endswith(b"the end\n")
    log.write_bytes(log.read_bytes()[: -len(b"the end\n")])
    live, rotated = log.read_bytes(), (tmp_path / "daemon.log.1").read_bytes()
    assert b"\0" not in live and b"\0" not in rotated
    assert len(live) < lines * 100 and len(rotated) > limit  # rotated while it was written
    text = (rotated + live).decode().splitlines()
    assert all(len(line) == 99 for line in text), "no line cut by a rotation"
    numbers = [int(line.split()[0]) for line in text]
    # in order across the rotated and the live log (a rotation drops the lines written between its copy
    # and its truncation)
    assert numbers == sorted(set(numbers))
    assert not (tmp_path / "daemon.log.1.partial").exists()


def test_a_started_daemon_is_told_its_log_and_keeps_it_bounded(tmp_path, monkeypatch):
    import threading

    from scaling_assets.study import daemon as daemon_module

    started = {}

    class Popen:
        pid = os.getpid()

        def __init__(self, args, env, stdout, **kwargs):
            started.update(env=env, mode=stdout.mode)

    monkeypatch.setattr(daemon_module.subprocess, "Popen", Popen)
    log = tmp_path / "daemon.log"
    daemon_module.DaemonProcess({}, log, tmp_path / "daemon.json").start()
    assert started == {"env": {daemon_module.LOG_ENV: str(log)}, "mode": "ab"}
    threads = daemon_module.start_watchers({daemon_module.LOG_ENV: str(log)})
    assert [t.name for t in threads] == ["log rotation"] and threads[0].is_alive() and threads[0].daemon
    assert daemon_module.start_watchers({}) == []
    assert threading.active_count() >= 2


def test_progress_counts_the_backfills_runs_by_status_without_reading_them_all(tmp_path):
    """The watch loop polls every 2 s: runs are counted by status in the run storage; only failed
    runs are read (a failure that Dagster retries is left out: its retry stands for it)."""
    from dagster._core.storage.tags import BACKFILL_ID_TAG, WILL_RETRY_TAG
    from dagster._core.test_utils import create_run_for_test, instance_for_test

    from scaling_assets.study.backfills import backfill_run_statuses

    with instance_for_test(temp_dir=str(tmp_path)) as instance:
        for status, extra in [(DagsterRunStatus.SUCCESS, {}), (DagsterRunStatus.SUCCESS, {}),
                              (DagsterRunStatus.STARTED, {}), (DagsterRunStatus.FAILURE, {}),
                              (DagsterRunStatus.FAILURE, {WILL_RETRY_TAG: "true"})]:
            create_run_for_test(instance, status=status, tags={BACKFILL_ID_TAG: "bf", **extra})
        create_run_for_test(instance, status=DagsterRunStatus.SUCCESS, tags={BACKFILL_ID_TAG: "other"})
        assert backfill_run_statuses(instance, "bf") == Counter(
            {DagsterRunStatus.SUCCESS: 2, DagsterRunStatus.STARTED: 1, DagsterRunStatus.FAILURE: 1})


def test_a_rerun_after_ctrl_c_resubmits_what_the_cancelled_backfill_left():
    """Found by a rerun seconds after Ctrl-C: the settings backfill was still cancelling, the rerun joined
    it, submitted nothing after it and wrote the results of 154 of 894 partitions as the study's."""
    from types import SimpleNamespace

    from scaling_assets.study.backfills import RESULTS, SETTINGS, SHARED, TAG_STAGE, stages_to_submit

    def backfill(stage, status):
        return SimpleNamespace(tags={TAG_STAGE: stage}, status=status)

    assert stages_to_submit(None) == [SHARED, SETTINGS]
    assert stages_to_submit(backfill(SETTINGS, BulkActionStatus.CANCELING)) == [SETTINGS]
    assert stages_to_submit(backfill(SHARED, BulkActionStatus.CANCELING)) == [SHARED, SETTINGS]
    assert stages_to_submit(backfill(SETTINGS, BulkActionStatus.REQUESTED)) == []
    assert stages_to_submit(backfill(SHARED, BulkActionStatus.REQUESTED)) == [SETTINGS]
    assert stages_to_submit(backfill(RESULTS, BulkActionStatus.REQUESTED)) == []


def test_the_backfill_daemons_partition_lists_are_cut_in_its_log():
    # Dagster's backfill daemon logs each asset's whole partition list at every evaluation: at the paper's
    # shape lines of thousands of characters, most of the daemon's log. The daemon cuts each long line.
    import io
    import logging

    from scaling_assets.study.daemon import BACKFILL_LOGGER, LOG_LINE_MAX_CHARS, ShortLines, shorten_backfill_log

    logger = logging.getLogger(BACKFILL_LOGGER)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        shorten_backfill_log()
        shorten_backfill_log()  # once only
        assert sum(isinstance(f, ShortLines) for f in logger.filters) == 1
        keys = ", ".join(f"n={n}_q=0.0421_s=42" for n in range(100, 400))
        partitions = f"- cite/model_pca: {{{keys}}}"
        logger.info(f"Considering the following candidate subset:\n{partitions}\n- results/mi_table")
        logger.info("Submitted run %s for assets/checks %s", "9f69f0d8", "cite/model_pca")
        lines = out.getvalue().splitlines()
        assert lines[0] == "Considering the following candidate subset:"
        cut = len(partitions) - LOG_LINE_MAX_CHARS
        assert lines[1] == f"{partitions[:LOG_LINE_MAX_CHARS]}... [{cut:,} more characters cut]" and cut > 5000
        assert lines[2] == "- results/mi_table"
        assert lines[3] == "Submitted run 9f69f0d8 for assets/checks cite/model_pca"  # short: as it was
    finally:
        logger.removeHandler(handler)
        logger.level = level
        for f in [f for f in logger.filters if isinstance(f, ShortLines)]:
            logger.removeFilter(f)
