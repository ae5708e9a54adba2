"""The Dagster patches (``compute/dagster_patches.py``): installed only where asked, off with
``SCALING_ASSETS_DAGSTER_PATCHES=off`` or on a Dagster they were not tested with, and a study without
them gets the same results. What each patch changes is tested with it: ``test_compute_dagster_patches_backfill_grouping.py``,
``test_compute_dagster_patches_event_writes.py`` and the daemon settings below."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, write_tiny_study

from scaling_assets.compute import dagster_patches

# in a fresh interpreter: what is patched after the given setup
PROBE = r"""
import json, sys, warnings
warnings.simplefilter("always")
setup = sys.argv[1]
caught = []
warnings.showwarning = lambda message, *a, **k: caught.append(str(message))
import dagster
from scaling_assets.compute import dagster_patches
if setup == "coordinator":  # what every process loading the repository's dagster.yaml does
    import tempfile, shutil, os
    home = tempfile.mkdtemp()
    shutil.copy(os.path.join(sys.argv[2], "dagster.yaml"), home)
    instance = dagster.DagsterInstance.from_config(home)
    instance.run_coordinator, instance.run_launcher  # load both classes
    installed = []
else:
    if setup == "untested":
        dagster.__version__ = "1.13.99"
    installed = [list(dagster_patches.install(only=dagster_patches.RUN_WORKER_PATCHES)),  # the forkserver's
                 list(dagster_patches.install())]  # the daemon's
from dagster._core.execution import asset_backfill
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
import dagster._core.storage.sql as sql
from dagster._daemon import cli, controller
ours = lambda f: f.__module__ == dagster_patches.__name__
patched = {
    "alembic_scripts": ours(sql.check_alembic_revision),
    "sqlite_event_batches": ours(SqliteEventLogStorage.store_event_batch),
    "backfill_grouping": ours(asset_backfill._should_backfill_atomic_asset_subset_unit),
    "backfill_snapshot_reads": ours(asset_backfill.get_asset_backfill_iteration_materialized_subset),
    "backfill_interval": controller.DEFAULT_DAEMON_INTERVAL_SECONDS != 30,
    "code_reload_interval": controller.RELOAD_WORKSPACE_INTERVAL != 60,
    "daemon_connection_pool": ours(cli.daemon_controller_from_instance),
}
print(json.dumps({"installed": installed, "patched": sorted(k for k, v in patched.items() if v),
                  "warnings": caught, "why_off": dagster_patches.why_off()}))
"""
ALL = sorted(p.name for p in dagster_patches.PATCHES)


def probe(setup: str, patches: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (dagster_patches.PATCHES_ENV, "DAGSTER_EVENT_BATCH_SIZE")}
    env["PYTHONPATH"] = str(REPO)
    if patches is not None:
        env[dagster_patches.PATCHES_ENV] = patches
    out = subprocess.run([sys.executable, "-c", PROBE, setup, str(REPO)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_the_coordinator_and_launcher_patches_nothing():
    """The webserver, the CLI, code servers and run workers load dagster.yaml's coordinator; none of them
    is patched (it installed every patch on import before)."""
    assert probe("coordinator")["patched"] == []


def test_each_process_installs_what_it_needs_and_the_switch_turns_them_off():
    on = probe("install")
    assert on["installed"] == [["alembic_scripts"], ALL] and on["patched"] == ALL and on["why_off"] is None
    off = probe("install", "off")
    assert off["installed"] == [[], []] and off["patched"] == []
    assert off["why_off"] == ("Dagster patches off (SCALING_ASSETS_DAGSTER_PATCHES=off): Dagster as it is, "
                              "slower, runs grouped worse")
    one = probe("install", "backfill_grouping, alembic_scripts")
    assert one["installed"] == [["alembic_scripts"], ["alembic_scripts", "backfill_grouping"]] and one["warnings"] == []
    assert one["why_off"].startswith("Dagster patches backfill_interval, backfill_snapshot_reads, code_reload_interval")
    typo = probe("install", "backfill_grouping,no_such_patch")
    assert typo["installed"] == [[], ["backfill_grouping"]]
    assert "SCALING_ASSETS_DAGSTER_PATCHES: no patch named no_such_patch" in typo["warnings"][0]


def test_a_dagster_they_were_not_tested_with_gets_no_patch_and_one_warning():
    untested = probe("untested")
    assert untested["installed"] == [[], []] and untested["patched"] == []
    assert len(untested["warnings"]) == 1 and "Dagster 1.13.99 is not a version its Dagster patches were tested" \
        in untested["warnings"][0]
    assert untested["why_off"].startswith("Dagster patches off: Dagster 1.13.99 is not a version they were tested")


def test_the_tested_dagster_is_the_one_pyproject_pins():
    import tomllib

    import dagster

    assert dagster.__version__ in dagster_patches.TESTED_DAGSTER_VERSIONS
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {d.split(">=")[0]: d for d in deps["dependencies"] + deps["optional-dependencies"]["postgres"]}
    patch_levels = sorted(int(v.split(".")[2]) for v in dagster_patches.TESTED_DAGSTER_VERSIONS)
    low, high = patch_levels[0], patch_levels[-1] + 1
    assert pins["dagster"] == pins["dagster-webserver"].replace("-webserver", "") == f"dagster>=1.13.{low},<1.13.{high}"
    assert pins["dagster-postgres"] == f"dagster-postgres>=0.29.{low},<0.29.{high}"  # 0.29.N goes with 1.13.N


def test_only_the_patches_and_the_compat_module_import_dagsters_private_modules():
    """A Dagster upgrade that moves a private name touches dagster_compat.py (the patches stay off
    until they are tested on it)."""
    import ast

    importers = set()
    for path in (REPO / "scaling_assets").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(name.startswith("dagster._") for name in names):
                importers.add(path.relative_to(REPO).as_posix())
    assert importers == {"scaling_assets/compute/dagster_compat.py", "scaling_assets/compute/dagster_patches.py"}


def _patch(name: str):
    return next(p for p in dagster_patches.PATCHES if p.name == name)


def test_the_study_daemon_reloads_its_code_location_every_ten_minutes_not_every_minute(monkeypatch):
    """Dagster's daemon restarts its code server (a fresh import of the package and a new repository
    snapshot) whenever the workspace is older than RELOAD_WORKSPACE_INTERVAL; the daemon's patches
    set it (and the backfill interval) from the environment, and Dagster's own check obeys it."""
    from types import SimpleNamespace
    from unittest import mock

    from dagster._daemon import controller

    for name in ("DEFAULT_DAEMON_INTERVAL_SECONDS", "RELOAD_WORKSPACE_INTERVAL"):
        monkeypatch.setattr(controller, name, getattr(controller, name))  # restored after the test
    monkeypatch.delenv(dagster_patches.BACKFILL_INTERVAL_ENV, raising=False)
    monkeypatch.delenv(dagster_patches.CODE_RELOAD_INTERVAL_ENV, raising=False)

    def reloads(workspace_age_s: float) -> bool:
        context = SimpleNamespace(_grpc_server_registry=None, _workspace_process_context=mock.Mock(),
                                  _logger=mock.Mock())
        controller.DagsterDaemonController.check_workspace_freshness(context, time.time() - workspace_age_s)
        return context._workspace_process_context.refresh_workspace.called

    controller.DEFAULT_DAEMON_INTERVAL_SECONDS, controller.RELOAD_WORKSPACE_INTERVAL = 30, 60  # Dagster's
    assert reloads(61)
    _patch("backfill_interval").apply()
    _patch("code_reload_interval").apply()
    assert (controller.DEFAULT_DAEMON_INTERVAL_SECONDS, controller.RELOAD_WORKSPACE_INTERVAL) == (5, 600)
    assert not reloads(120) and reloads(601)
    monkeypatch.setenv(dagster_patches.BACKFILL_INTERVAL_ENV, "2")
    monkeypatch.setenv(dagster_patches.CODE_RELOAD_INTERVAL_ENV, "30")
    _patch("backfill_interval").apply()
    _patch("code_reload_interval").apply()
    assert (controller.DEFAULT_DAEMON_INTERVAL_SECONDS, controller.RELOAD_WORKSPACE_INTERVAL) == (2, 30)
    assert reloads(31)


def test_the_daemon_keeps_its_database_connections_open(monkeypatch):
    """dagster-postgres opens a connection per query unless asked (as the webserver does): the daemon asks."""
    from types import SimpleNamespace

    from dagster._daemon import cli

    made = []
    monkeypatch.setattr(cli, "daemon_controller_from_instance", lambda instance, **kw: made.append(instance) or "c")
    _patch("daemon_connection_pool").apply()
    calls = []
    instance = SimpleNamespace(optimize_for_webserver=lambda **kw: calls.append(kw))
    assert cli.daemon_controller_from_instance(instance, workspace_load_target=None) == "c"
    assert made == [instance] and calls == [{"statement_timeout": 0, "pool_recycle": 3600, "max_overflow": 20}]


def run_study(tmp_path: Path, patches: str) -> tuple[pd.DataFrame, str, str, float, int]:
    """``study run`` of a small PCA study in a home of its own: (MI table, output, daemon log, seconds, runs)."""
    from dagster import DagsterInstance

    from scaling_assets.layout import result_paths
    from scaling_assets.study.spec import load_study

    home = tmp_path / "home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    path = write_tiny_study(tmp_path / "study.yaml", tmp_path / "root", "patches", sizes=[100, 200],
                            lmi={"epochs": 10})
    env = dict(os.environ, DAGSTER_HOME=str(home), SCALING_ASSETS_PROGRESS="0", PYTHONPATH=str(REPO),
               **{dagster_patches.PATCHES_ENV: patches})
    env.pop("DAGSTER_EVENT_BATCH_SIZE", None)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "scaling_assets.cli", "study", "run", "--study", str(path)],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - start
    assert out.returncode == 0, out.stdout + out.stderr
    with DagsterInstance.from_config(str(home)) as instance:
        runs = len(instance.get_run_records())
    log = (home / ".scaling_assets" / "daemon.log").read_text()
    return pd.read_parquet(result_paths(load_study(path))["mi_table"]), out.stdout, log, seconds, runs


@pytest.mark.slow
def test_a_study_without_the_patches_gets_the_same_mi_table(tmp_path):
    """The MI values depend only on the data and the seeds: Dagster alone (slower: a backfill evaluation
    every 30 s) computes the same table."""
    patched, out_on, log_on, s_on, runs_on = run_study(tmp_path / "on", "on")
    alone, out_off, log_off, s_off, runs_off = run_study(tmp_path / "off", "off")
    print(f"patches on: {s_on:.0f} s, {runs_on} runs; off: {s_off:.0f} s, {runs_off} runs")
    assert f"Dagster patches installed: {', '.join(ALL)}" in log_on and "Dagster patches off" not in out_on
    assert "Dagster patches installed: none" in log_off
    assert "Dagster patches off (SCALING_ASSETS_DAGSTER_PATCHES=off)" in out_off
    from scaling_assets.data.tasks import TASKS

    assert len(patched) == 2 * 2 * len(TASKS["cite"].mi_signals) and patched["mi_bits"].notna().all()  # sizes x qualities
    pd.testing.assert_frame_equal(patched, alone)
