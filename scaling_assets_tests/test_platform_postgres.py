"""PostgreSQL instance storage: a small study's runs go through the GPU-aware queue, a real
`dagster-daemon run` executes them, and the materialisations are read back from PostgreSQL."""

from __future__ import annotations

import importlib.util
import shutil
import textwrap
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from scaling_assets.compute.daemon import dagster_daemon, session_members
from scaling_assets.compute.instance import write_instance_yaml

REPO = Path(__file__).resolve().parents[1]

STUDY = """
name: pg
root: {root}
budget: test
seeds: [42]
algorithms: [pca]
split: {{validation_cells: 50}}
sizes: [100]
qualities: [1.0, 0.5]
datasets:
  cite: {{task: cite, source: simulated, cells: 400, genes: 60, seed: 1}}
"""

# the study's assets plus one job per stage, so each run has a partitions definition of its own;
# in-process executor: a one-step run needs no second process (keeps the test fast)
CODE_LOCATION = """
from dagster import Definitions, define_asset_job, in_process_executor
from scaling_assets.definitions import load_definitions

defs = Definitions.merge(load_definitions(), Definitions(jobs=[
    define_asset_job(name, selection=f"cite/{name}", executor_def=in_process_executor)
    for name in ("raw_counts", "split", "eval_counts")
]))
"""


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
    (tmp_path / "study.yaml").write_text(textwrap.dedent(STUDY.format(root=tmp_path / "root")))
    (tmp_path / "pg_location.py").write_text(CODE_LOCATION)
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [{"python_file": {
        "relative_path": str(tmp_path / "pg_location.py"), "location_name": "pg",
        "working_directory": str(REPO)}}]}))
    for name, value in [("DAGSTER_HOME", str(home)), ("SCALING_ASSETS_STUDY", str(tmp_path / "study.yaml")),
                        ("SCALING_ASSETS_LEASE_DIR", str(tmp_path / "leases")), ("SCALING_ASSETS_PROGRESS", "0")]:
        monkeypatch.setenv(name, value)
    with dagster_daemon(tmp_path / "workspace.yaml", log_path=tmp_path / "daemon.log", cwd=REPO) as daemon:
        yield home, tmp_path
    assert daemon.poll() is not None and not session_members(daemon.pid)  # code servers stopped too


def test_study_runs_through_the_queue_and_materialisations_are_in_postgres(pg_study, postgres_url):
    import psycopg2
    from dagster import AssetKey, DagsterInstance
    from dagster._core.events import DagsterEventType
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.test_utils import create_test_daemon_workspace_context, poll_for_finished_run
    from dagster._core.workspace.load_target import PythonFileTarget

    from scaling_assets.compute.coordinator import GpuAwareRunCoordinator
    from scaling_assets.study import load_study

    home, tmp = pg_study
    spec = importlib.util.spec_from_file_location("pg_location", tmp / "pg_location.py")
    location = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(location)  # the same definitions in this process, to create the runs
    defs = location.defs
    target = PythonFileTarget(python_file=str(tmp / "pg_location.py"), attribute="defs",
                              working_directory=str(REPO), location_name="pg")
    with DagsterInstance.from_config(str(home)) as instance, \
            create_test_daemon_workspace_context(target, instance) as context:
        assert isinstance(instance.run_coordinator, GpuAwareRunCoordinator)
        workspace = context.create_request_context()
        repository = workspace.get_code_location("pg").get_repository("__repository__")

        def submit(asset, partition=None):  # queued: the daemon dequeues and launches it
            remote_job = repository.get_full_job(asset)
            run = instance.create_run_for_job(
                defs.resolve_job_def(asset),
                tags={"dagster/partition": partition} if partition else {},
                remote_job_origin=remote_job.get_remote_origin(),
                job_code_origin=remote_job.get_python_origin(),
            )
            instance.submit_run(run.run_id, workspace)
            return run.run_id

        def finish(*run_ids):
            for run_id in run_ids:
                run = poll_for_finished_run(instance, run_id, timeout=120)
                assert run.status == DagsterRunStatus.SUCCESS, (tmp / "daemon.log").read_text()[-3000:]

        finish(submit("raw_counts"))
        finish(submit("split", "s=42"))
        eval_keys = load_study(tmp / "study.yaml").quality_seed_keys("cite")
        assert len(eval_keys) == 2
        evals = [submit("eval_counts", key) for key in eval_keys]  # both queued at once
        finish(*evals)

        assert set(instance.get_materialized_partitions(AssetKey(["cite", "eval_counts"]))) == set(eval_keys)
        events = {e.dagster_event.event_type for e in instance.all_logs(evals[0]) if e.dagster_event}
        assert {DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING} <= events  # via the queue

    # read straight from PostgreSQL: 4 successful runs, one materialisation per asset partition
    conn = psycopg2.connect(postgres_url.replace("+psycopg2", "", 1))  # libpq knows no +driver
    try:
        cur = conn.cursor()
        cur.execute("SELECT status, count(*) FROM runs GROUP BY status")
        assert dict(cur.fetchall()) == {"SUCCESS": 4}
        cur.execute("SELECT asset_key, partition FROM event_logs "
                    "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY asset_key, partition")
        assert cur.fetchall() == sorted([('["cite", "eval_counts"]', key) for key in eval_keys]) + [
            ('["cite", "raw_counts"]', None), ('["cite", "split"]', "s=42")]
    finally:
        conn.close()
    assert all((tmp / "root" / "cite" / "eval_counts" / key).is_dir() for key in eval_keys)
