"""Small speed-ups of Dagster 1.13 internals that matter at hundreds of runs at once (issue 24).

``check_alembic_revision``: SQLite storage keeps one event-log database per run, and the first write
of a process to a run's database checks its schema revision against Alembic's *head*, which Alembic
finds by loading and parsing every migration script from disk, each time (~25-30 ms of CPU). The
daemon does it once per launched run, each run worker once or twice: measured at 13% of the daemon's
samples while it launched runs (py-spy, ``benchmarks/bench_scheduler.py``). The head cannot change
while a process runs (it is the installed Dagster's), so it is read once per process and script
directory; the database's own revision is still read every time, as before.
"""

from __future__ import annotations

import sys
import threading

_heads: dict[tuple[str | None, str | None], str | None] = {}
_lock = threading.Lock()
_installed = False


def install() -> None:
    """Patch ``dagster._core.storage.sql.check_alembic_revision`` and the modules that imported it."""
    global _installed
    if _installed:
        return
    import dagster._core.storage.sql as sql

    original = sql.check_alembic_revision

    def check_alembic_revision(alembic_config, conn):
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        with sql._alembic_lock:
            db_revision = MigrationContext.configure(conn).get_current_revision()
        key = (alembic_config.config_file_name, alembic_config.get_main_option("script_location"))
        with _lock:
            if key not in _heads:
                _heads[key] = ScriptDirectory.from_config(alembic_config).as_revision_number("head")
            return db_revision, _heads[key]

    check_alembic_revision.__wrapped__ = original
    sql.check_alembic_revision = check_alembic_revision
    for module in list(sys.modules.values()):  # storages imported it by name
        if getattr(module, "check_alembic_revision", None) is original:
            module.check_alembic_revision = check_alembic_revision
    _installed = True


SQLITE_STORAGES = (
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
)


def warm_alembic_heads(modules=SQLITE_STORAGES) -> None:
    """Find the Alembic heads of these storages now (the forkserver: then no worker has to)."""
    import importlib

    from alembic.script import ScriptDirectory
    from dagster._core.storage.sql import get_alembic_config

    for name in modules:
        config = get_alembic_config(importlib.import_module(name).__file__)
        key = (config.config_file_name, config.get_main_option("script_location"))
        with _lock:
            if key not in _heads:
                _heads[key] = ScriptDirectory.from_config(config).as_revision_number("head")
