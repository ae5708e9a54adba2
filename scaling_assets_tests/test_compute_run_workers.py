"""Run workers forked from the preloaded server (``compute/run_workers.py``), through the repo's
dagster.yaml launcher and a real queued-run daemon: what the worker inherits, cancelling a run,
and run monitoring failing a run whose worker was killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from dagster import Definitions, in_process_executor, job, op

from scaling_assets.compute.coordinator import GpuAwareRunLauncher
from scaling_assets.compute.run_workers import PRELOAD, TAG_WORKER, find_worker

INSTANCE_YAML = Path(__file__).parents[1] / "dagster.yaml"


@op
def probe(context):
    out = Path(os.environ["RUN_WORKER_TEST_OUT"])
    # what was imported before this run touched anything: the forkserver's preloaded modules
    info = {"preloaded": [m for m in PRELOAD if m in sys.modules], "pid": os.getpid(), "ppid": os.getppid(),
            "mark": os.environ.get("RUN_WORKER_TEST_MARK"), "cwd": os.getcwd()}
    (out / f"{context.run_id}.json").write_text(json.dumps(info))
    deadline = time.time() + 120  # until the test says go (or cancels / kills the run)
    while not (out / "go").exists() and time.time() < deadline:
        time.sleep(0.1)


@job(executor_def=in_process_executor)  # the step runs in the worker itself, as the study's do
def probe_job():
    probe()


defs = Definitions(jobs=[probe_job])


@pytest.fixture
def daemon_context(tmp_path, monkeypatch, request):
    from dagster import DagsterInstance
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import PythonFileTarget

    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir(), out.mkdir()
    config = yaml.safe_load(INSTANCE_YAML.read_text())
    config["telemetry"] = {"enabled": False}
    if getattr(request, "param", None):  # the launcher's config
        config["run_launcher"]["config"] = request.param
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("RUN_WORKER_TEST_OUT", str(out))
    monkeypatch.setenv("SCALING_ASSETS_LEASE_DIR", str(tmp_path / "leases"))
    monkeypatch.chdir(tmp_path)
    target = PythonFileTarget(python_file=__file__, attribute="defs", working_directory=str(Path(__file__).parents[1]),
                              location_name="run_worker_test")
    with DagsterInstance.from_config(str(home)) as instance, create_test_daemon_workspace_context(
        target, instance
    ) as context:
        yield instance, context, out


def _launch(instance, context) -> str:
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    workspace = context.create_request_context()
    remote = workspace.get_code_location("run_worker_test").get_repository("__repository__").get_full_job("probe_job")
    run = instance.create_run_for_job(probe_job, remote_job_origin=remote.get_remote_origin(),
                                      job_code_origin=remote.get_python_origin())
    instance.submit_run(run.run_id, workspace)
    list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(context))
    return run.run_id


def _wait(predicate, timeout_s=120, what="it"):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_runs_are_forked_with_the_libraries_loaded_and_the_launchers_current_environment(daemon_context, monkeypatch):
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.test_utils import poll_for_finished_run

    instance, context, out = daemon_context
    assert isinstance(instance.run_launcher, GpuAwareRunLauncher) and instance.run_launcher.fork_workers
    monkeypatch.setenv("RUN_WORKER_TEST_MARK", "first")
    first = _launch(instance, context)
    first_info = _wait(lambda: (out / f"{first}.json").exists() and json.loads((out / f"{first}.json").read_text()),
                       what="the first run's step")
    # the environment is the launcher's at launch time, not the one the forkserver started with
    monkeypatch.setenv("RUN_WORKER_TEST_MARK", "second")
    second = _launch(instance, context)
    second_info = _wait(lambda: (out / f"{second}.json").exists() and json.loads((out / f"{second}.json").read_text()),
                        what="the second run's step")
    (out / "go").write_text("")
    for run_id, info, mark in ((first, first_info, "first"), (second, second_info, "second")):
        run = poll_for_finished_run(instance, run_id, timeout=120)
        assert run.status == DagsterRunStatus.SUCCESS
        assert info["mark"] == mark and info["cwd"] == str(out.parent)
        assert set(info["preloaded"]) == set(PRELOAD)  # torch, scvi, ... were there before the run began
        host, pid, _ = run.tags[TAG_WORKER].split()
        assert int(pid) == info["pid"] != os.getpid()
        assert f"Started process for run (pid: {pid})." in [e.message for e in instance.all_logs(run_id)]
    # both runs come from the same forkserver, a child of the launching process (here: this test)
    assert first_info["ppid"] == second_info["ppid"]
    assert psutil.Process(first_info["ppid"]).ppid() == os.getpid()


@pytest.mark.slow
def test_terminate_interrupts_the_worker_and_the_run_ends_canceled(daemon_context):
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.test_utils import poll_for_finished_run

    instance, context, out = daemon_context
    run_id = _launch(instance, context)
    _wait(lambda: (out / f"{run_id}.json").exists(), what="the run's step")
    assert instance.run_launcher.terminate(run_id)
    run = poll_for_finished_run(instance, run_id, timeout=60)
    assert run.status == DagsterRunStatus.CANCELED
    _wait(lambda: find_worker(run.tags[TAG_WORKER]) is None, 30, "the worker to exit")
    assert not instance.run_launcher.terminate(run_id)  # finished: nothing to do


@pytest.mark.slow
def test_run_monitoring_fails_a_run_whose_worker_was_killed(daemon_context):
    import logging

    from dagster._core.launcher import WorkerStatus
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    instance, context, out = daemon_context
    run_id = _launch(instance, context)
    info = _wait(lambda: (out / f"{run_id}.json").exists() and json.loads((out / f"{run_id}.json").read_text()),
                 what="the run's step")
    run = instance.get_run_by_id(run_id)
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    os.kill(info["pid"], signal.SIGKILL)  # e.g. the kernel's OOM killer
    _wait(lambda: find_worker(run.tags[TAG_WORKER]) is None, 30, "the worker to die")
    health = instance.run_launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.FAILED and str(info["pid"]) in health.msg
    record = instance.get_run_records(RunsFilter(run_ids=[run_id]))[0]
    assert record.dagster_run.status == DagsterRunStatus.STARTED  # nobody else noticed
    monitor_started_run(instance, context.create_request_context(), record, logging.getLogger("test"))
    failed = instance.get_run_by_id(run_id)
    assert failed.status == DagsterRunStatus.FAILURE
    assert any(f"run worker process {info['pid']} is gone" in (e.message or "") for e in instance.all_logs(run_id))


@pytest.mark.slow
@pytest.mark.parametrize("daemon_context", [{"fork_workers": False}], indirect=True)
def test_without_fork_workers_the_code_server_spawns_the_run(daemon_context):
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.storage.tags import GRPC_INFO_TAG
    from dagster._core.test_utils import poll_for_finished_run

    instance, context, out = daemon_context
    assert not instance.run_launcher.fork_workers and not instance.run_launcher.supports_check_run_worker_health
    run_id = _launch(instance, context)
    info = _wait(lambda: (out / f"{run_id}.json").exists() and json.loads((out / f"{run_id}.json").read_text()),
                 what="the run's step")
    (out / "go").write_text("")
    run = poll_for_finished_run(instance, run_id, timeout=120)
    assert run.status == DagsterRunStatus.SUCCESS
    assert GRPC_INFO_TAG in run.tags and TAG_WORKER not in run.tags
    assert "scvi" not in info["preloaded"]  # a fresh interpreter: nothing imported ahead of the run


def test_launcher_config_round_trip():
    launcher = GpuAwareRunLauncher.from_config_value(None, {"fork_workers": False, "preload_modules": ["json"]})
    assert launcher.fork_workers is False and launcher.preload_modules == ("json",)
    assert GpuAwareRunLauncher.from_config_value(None, {}).preload_modules == PRELOAD
    assert set(GpuAwareRunLauncher.config_type()) == {"fork_workers", "preload_modules"}


def test_a_worker_tag_finds_only_that_process():
    me = psutil.Process()
    tag = f"{socket.gethostname()} {me.pid} {me.create_time():.3f}"
    assert find_worker(tag).pid == me.pid
    assert find_worker(f"{socket.gethostname()} {me.pid} {me.create_time() - 5:.3f}") is None  # pid reused
    assert find_worker(f"another-host {me.pid} {me.create_time():.3f}") is None
    assert find_worker(None) is None and find_worker("garbage") is None


@pytest.mark.slow
def test_the_daemon_has_the_server_import_the_launchers_modules_as_it_starts(tmp_path):
    import subprocess

    config = yaml.safe_load(INSTANCE_YAML.read_text())
    config["telemetry"] = {"enabled": False}
    config["run_launcher"]["config"] = {"preload_modules": ["json", "colorsys"]}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    # what scaling_assets.study.daemon's main() runs beside the daemon, in a process of its own
    code = ("from scaling_assets.study.daemon import _start_run_worker_server as start; start()\n"
            "from multiprocessing import forkserver; import psutil, time\n"
            # its command line reads empty while the new process is still starting (seen under load)
            "p = psutil.Process(forkserver._forkserver._forkserver_pid)\n"
            "deadline = time.time() + 30\n"
            "while not p.cmdline() and time.time() < deadline: time.sleep(0.1)\n"
            "print(' '.join(p.cmdline()), p.status())")
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, DAGSTER_HOME=str(tmp_path)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "multiprocessing.forkserver" in done.stdout and "['json', 'colorsys', 'scaling_assets.compute.fork_prep']" in done.stdout, done.stdout
