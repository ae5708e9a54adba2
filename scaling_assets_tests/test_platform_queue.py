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
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.execution.backfill import BulkActionStatus
from conftest import REPO, write_tiny_study

from scaling_assets.gpu.needs import TAG_CPU_SLOT, TAG_N_GENES, TAG_STUDY, TAG_THREADS
from scaling_assets.layout import result_paths
from scaling_assets.models.registry import ALGORITHMS
from scaling_assets.study import load_study
from scaling_assets.study_queue import study_lock

CITE = {"task": "cite", "source": "simulated", "cells": 500, "genes": 40, "seed": 1}


def make_study(tmp_path: Path, name: str, datasets: dict | None = None, **fields) -> tuple[Path, Path, dict]:
    """A study file (the cite dataset and ``datasets``; ``fields``: other top-level keys), a fresh
    DAGSTER_HOME holding the repo's dagster.yaml, and the CLI environment."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    path = write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", name, sizes=[100, 200], lmi={"epochs": 10},
                            datasets={"cite": CITE, **(datasets or {})}, **fields)
    env = dict(os.environ, DAGSTER_HOME=str(home), SCALING_ASSETS_PROGRESS="0", SCALING_ASSETS_HOME=str(tmp_path))
    return path, home, env


def study_run(path: Path, env: dict, cwd: Path, **kwargs):
    cmd = [sys.executable, "-m", "scaling_assets.cli", "study", "run", "--study", str(path)]
    # Ctrl-C as from a terminal: a suite started in the background by a shell without job control
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def instance_at(home: Path) -> DagsterInstance:
    os.environ["DAGSTER_HOME"] = str(home)  # DagsterInstance.get() reads it
    return DagsterInstance.get()


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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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


def test_study_runs_through_the_daemon_and_resumes_after_the_daemon_is_killed(tmp_path, restore_dagster_home):
    path, home, env = make_study(tmp_path, "queued")
    study = load_study(path)
    instance = instance_at(home)  # before the command: two processes creating SQLite storage at once can race
    first = study_run(path, env, tmp_path)
    mi = AssetKey(["cite", "mi_pca"])
    wait_for(lambda: instance.get_materialized_partitions(mi), 240, "a first MI partition")
    daemon_pid = int((home / ".scaling_assets" / "daemon.pid").read_text().split()[1])  # "<host> <pid> <start>"
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
    assert "MI (bits) at the largest training size" in out2

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


def test_a_failed_dataset_blocks_only_its_dependants_and_names_the_cause(tmp_path, restore_dagster_home):
    broken = tmp_path / "broken.h5ad"
    broken.write_text("not an HDF5 file")
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
    assert paths["plot_cite"].exists() and not paths["plot_broken"].exists()
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
    assert paths["plot_broken"].exists()
    meta = instance.get_latest_materialization_event(AssetKey(["results", "mi_table"])).asset_materialization.metadata
    assert meta["datasets_complete"].value == "cite, broken" and meta["datasets_missing"].value == "none"


def test_a_second_study_run_of_the_same_study_is_refused(tmp_path, restore_dagster_home):
    path, home, env = make_study(tmp_path, "locked")
    with study_lock(load_study(path)):
        run = study_run(path, env, tmp_path)
        out, _ = run.communicate(timeout=60)
    assert run.returncode == 2
    assert "is already being run by" in out and f"pid {os.getpid()}" in out, out


def test_the_settings_go_in_once_the_shared_data_is_written_not_when_the_daemon_marks_it(tmp_path,
                                                                                         restore_dagster_home):
    """The shared-data stage hands off as soon as its runs succeeded and every partition it targets is
    materialised, while its backfill is still marked in progress (the daemon marks it one evaluation
    later); not before. The end of the command takes the daemon's verdict."""
    from dagster import materialize
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    from scaling_assets.definitions import build_definitions
    from scaling_assets.study_queue import (SHARED, SETTINGS, _all_written, _await_daemon_verdicts, _watch,
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
    backfill_id = submit_backfill(study, instance, target, SHARED)

    def write(keys, partition=None):  # as the daemon's runs of this backfill would
        assert materialize(list(defs.assets), selection=keys, partition_key=partition, instance=instance,
                           resources=dict(defs.resources), tags={BACKFILL_ID_TAG: backfill_id}).success

    raw = [k for k in target.asset_keys if k.path[-1] == "raw_counts"]
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


def test_the_study_daemon_reloads_its_code_location_every_ten_minutes_not_every_minute(monkeypatch):
    """Dagster's daemon restarts its code server (a fresh import of the package and a new repository
    snapshot) whenever the workspace is older than RELOAD_WORKSPACE_INTERVAL; the daemon a study starts
    sets it (and the backfill interval) from the environment, and Dagster's own check obeys it."""
    from types import SimpleNamespace
    from unittest import mock

    from dagster._daemon import controller

    from scaling_assets.daemon import configure_controller

    for name in ("DEFAULT_DAEMON_INTERVAL_SECONDS", "RELOAD_WORKSPACE_INTERVAL"):
        monkeypatch.setattr(controller, name, getattr(controller, name))  # restored after the test
    assert controller.RELOAD_WORKSPACE_INTERVAL == 60  # Dagster's default, which this changes

    def reloads(workspace_age_s: float) -> bool:
        context = SimpleNamespace(_grpc_server_registry=None, _workspace_process_context=mock.Mock(),
                                  _logger=mock.Mock())
        controller.DagsterDaemonController.check_workspace_freshness(context, time.time() - workspace_age_s)
        return context._workspace_process_context.refresh_workspace.called

    configure_controller({})
    assert (controller.DEFAULT_DAEMON_INTERVAL_SECONDS, controller.RELOAD_WORKSPACE_INTERVAL) == (5, 600)
    assert not reloads(120) and reloads(601)
    configure_controller({"SCALING_ASSETS_BACKFILL_INTERVAL": "2", "SCALING_ASSETS_CODE_RELOAD_INTERVAL": "30"})
    assert (controller.DEFAULT_DAEMON_INTERVAL_SECONDS, controller.RELOAD_WORKSPACE_INTERVAL) == (2, 30)
    assert reloads(31)


def test_a_dead_or_reused_daemon_pid_is_not_taken_for_a_live_daemon(tmp_path):
    """The daemon a ``study run`` started records its process identity; with fresh heartbeats left by a
    killed daemon, a pid file naming a gone process, or a live process that reused its pid, says
    "no daemon" (and is removed); the live process itself, or a daemon on another host, is judged by
    its heartbeats."""
    from types import SimpleNamespace

    from scaling_assets.daemon import daemon_alive, pid_file
    from scaling_assets.processes import process_identity

    fresh = {kind: SimpleNamespace(timestamp=time.time()) for kind in ("BACKFILL", "QUEUED_RUN_COORDINATOR")}
    instance = SimpleNamespace(root_directory=str(tmp_path), get_daemon_heartbeats=lambda: fresh,
                               get_required_daemon_types=lambda: ["BACKFILL", "QUEUED_RUN_COORDINATOR"])
    recorded = pid_file(instance)
    recorded.parent.mkdir(parents=True)

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = process_identity(gone.pid)
    gone.wait()
    host, pid, started = identity.split()
    live = process_identity(os.getpid())
    reused = f"{host} {os.getpid()} {float(live.split()[2]) - 100:.3f}"  # our pid, another start time
    for dead in (identity, reused):
        recorded.write_text(dead)
        assert not daemon_alive(instance), dead
        assert not recorded.exists()
    for judged_by_heartbeats in (live, f"another-host {pid} {started}"):
        recorded.write_text(judged_by_heartbeats)
        assert daemon_alive(instance)
        assert recorded.exists()
    fresh.pop("BACKFILL")
    assert not daemon_alive(instance)  # no backfill loop heart-beating


def test_results_are_behind_while_some_mi_is_newer_than_them(tmp_path):
    """``study run`` submits the results on their own when the settings backfill did not write them
    after the last MI (a dataset blocked, a setting failed, or a run joined after they were written)."""
    from dagster import AssetMaterialization

    from scaling_assets.definitions import build_definitions
    from scaling_assets.study_queue import datasets_with_mi, results_behind, results_subset

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
    for key in results:
        instance.report_runless_asset_event(AssetMaterialization(key))
    assert not results_behind(study, instance, graph)
    time.sleep(0.01)
    instance.report_runless_asset_event(AssetMaterialization(AssetKey(["other", "mi_pca"]), partition=setting))
    assert results_behind(study, instance, graph) and datasets_with_mi(study, instance) == ["cite", "other"]
