"""PostgreSQL instance storage: a small study's runs go through the GPU-aware queue, a real
`dagster-daemon run` executes them, and the materialisations are read back from PostgreSQL."""

from __future__ import annotations

import os
import shutil
import time
from urllib.parse import urlparse

import psutil
import pytest
from conftest import REPO, study_jobs, write_tiny_study

from scaling_assets.compute.instance import write_instance_yaml
from scaling_assets.study.daemon import DaemonProcess

@pytest.mark.slow
def test_example_instance_file_reads_its_connection_from_the_environment(postgres_url, tmp_path, monkeypatch):
    from dagster import DagsterInstance
    from dagster_postgres import PostgresRunStorage

    from scaling_assets.compute.coordinator import GpuAwareRunCoordinator

    url = urlparse(postgres_url)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-with-trust-auth")
    for name, value in [("HOST", url.hostname), ("PORT", str(url.port)), ("DB", url.path[1:]),
                        ("USER", url.username)]:
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value)
    shutil.copy(REPO / "deploy" / "postgres" / "dagster.yaml", tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.run_coordinator, GpuAwareRunCoordinator)
        assert instance.get_runs_count() == 0


def test_instance_file_defaults_to_sqlite_with_the_run_queue(tmp_path):
    from dagster import DagsterInstance
    from dagster._core.storage.runs import SqliteRunStorage

    from scaling_assets.compute.coordinator import GpuAwareRunCoordinator, GpuAwareRunLauncher

    write_instance_yaml(tmp_path, coordinator={"max_concurrent_runs": 3})
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_storage, SqliteRunStorage)
        assert isinstance(instance.run_coordinator, GpuAwareRunCoordinator)
        assert isinstance(instance.run_launcher, GpuAwareRunLauncher)
        assert instance.run_coordinator.get_run_queue_config().max_concurrent_runs == 3
        assert instance.run_coordinator.gpu_headroom_mib == 512  # the rest is the example's


@pytest.fixture
def pg_study(postgres_url, tmp_path, monkeypatch):
    """A DAGSTER_HOME on PostgreSQL, a tiny study, and a real `dagster-daemon run` for them."""
    home = tmp_path / "home"
    write_instance_yaml(home, postgres_url=postgres_url, coordinator={"dequeue_interval_seconds": 1})
    write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", "pg")
    for name, value in [("DAGSTER_HOME", str(home)), ("SCALING_ASSETS_STUDY", str(tmp_path / "study.yaml")),
                        ("SCALING_ASSETS_LEASE_DIR", str(tmp_path / "leases")), ("SCALING_ASSETS_PROGRESS", "0")]:
        monkeypatch.setenv(name, value)
    daemon = DaemonProcess(dict(os.environ), tmp_path / "daemon.log", tmp_path / "daemon.pid")
    daemon.start()
    try:
        yield home, tmp_path
    finally:
        daemon.stop()
    deadline = time.monotonic() + 10  # SIGKILLed members may take a moment to go
    while (leftovers := _session_members(daemon.process.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leftovers, f"processes of the daemon's session outlived it: {leftovers}"


def _session_members(sid: int) -> list[tuple[int, str]]:
    members = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                members.append((p.pid, " ".join(p.cmdline())[:200]))
        except (OSError, psutil.Error):
            continue
    return members


@pytest.mark.slow
def test_study_runs_through_the_queue_and_materialisations_are_in_postgres(pg_study, postgres_url):
    import psycopg2
    from dagster import AssetKey, DagsterInstance
    from dagster._core.events import DagsterEventType
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.test_utils import poll_for_finished_run

    from scaling_assets.compute.coordinator import GpuAwareRunCoordinator
    from scaling_assets.study.spec import load_study

    home, tmp = pg_study
    with DagsterInstance.from_config(str(home)) as instance, study_jobs(instance) as jobs:
        assert isinstance(instance.run_coordinator, GpuAwareRunCoordinator)
        submit = jobs.submit  # queued: the daemon dequeues and launches it

        def finish(*run_ids):
            for run_id in run_ids:
                run = poll_for_finished_run(instance, run_id, timeout=120)
                assert run.status == DagsterRunStatus.SUCCESS, (tmp / "daemon.log").read_text()[-3000:]

        finish(submit("cite_raw"))  # the repository's named jobs (scaling_assets/assets/jobs.py)
        finish(submit("cite_by_seed", "s=42"))
        setting_keys = load_study(tmp / "study.yaml").setting_keys("cite")
        assert len(setting_keys) == 2
        settings = [submit("cite_by_setting", key) for key in setting_keys]  # both queued at once
        finish(*settings)

        assert set(instance.get_materialized_partitions(AssetKey(["cite", "mi_pca"]))) == set(setting_keys)
        events = {e.dagster_event.event_type for e in instance.all_logs(settings[0]) if e.dagster_event}
        assert {DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING} <= events  # via the queue

    # read straight from PostgreSQL: 4 successful runs, one materialisation per asset partition
    conn = psycopg2.connect(postgres_url.replace("+psycopg2", "", 1))  # libpq knows no +driver
    try:
        cur = conn.cursor()
        cur.execute("SELECT status, count(*) FROM runs GROUP BY status")
        assert dict(cur.fetchall()) == {"SUCCESS": 4}
        cur.execute("SELECT DISTINCT key, value FROM run_tags WHERE key = 'scaling_assets/study'")
        assert cur.fetchall() == [("scaling_assets/study", "pg")]  # the named jobs' study tag
        cur.execute("SELECT asset_key, partition FROM event_logs "
                    "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY asset_key, partition")
        per_setting = ["embeddings_pca", "mi_pca", "model_pca", "train_counts"]
        per_seed = ["eval_counts", "pca_genes", "pool_counts", "split"]
        assert cur.fetchall() == sorted(
            [(f'["cite", "{a}"]', key) for a in per_setting for key in setting_keys]
            + [(f'["cite", "{a}"]', "s=42") for a in per_seed] + [('["cite", "raw_counts"]', None)])
    finally:
        conn.close()
    assert all((tmp / "root" / "cite" / "mi_pca" / key).is_dir() for key in setting_keys)
