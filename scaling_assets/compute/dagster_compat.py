"""The private Dagster names this package uses, for want of a public equivalent in Dagster 1.13.

Everything else comes from ``dagster`` itself. Every ``dagster._`` import outside ``dagster_patches``
(whose changes to Dagster are version-guarded) is here, so a Dagster upgrade that moves one of them
touches this file only. Grouped by what they are for; the imports that cost start-up time where they
are not needed (the CLI, the daemon's entry point, SQLite's run storage) are made when called.
"""

from __future__ import annotations

# the run queue and launchers (compute/coordinator.py, compute/ray_launcher.py): Dagster documents
# custom coordinators and launchers but exports only their base classes' neighbours
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.run_coordinator.queued_run_coordinator import RunQueueConfig
from dagster._core.storage.dagster_run import ACTIVE_RUN_STATUSES, FINISHED_STATUSES, NOT_FINISHED_STATUSES
from dagster._grpc.types import ExecuteRunArgs  # what `dagster api execute_run` takes

# step output capture (compute/compute_logs.py, assets/common.py's served images)
from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager

# asset backfills (study/backfills.py, study/daemon.py) and code versions (assets/versions.py)
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.data_version import CODE_VERSION_TAG
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus, PartitionBackfill
from dagster._core.storage.tags import BACKFILL_ID_TAG, WILL_RETRY_TAG

# what a run worker imports to open the instance and run (compute/run_workers.py preloads them)
RUN_WORKER_MODULES = (
    "dagster._cli.api",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._daemon",
)


def dagster_cli_main(args: list[str]) -> int:
    """``dagster <args>`` in this process (a run worker's ``api execute_run``)."""
    from dagster._cli import cli

    return cli.main(args=args, prog_name="dagster", auto_envvar_prefix="DAGSTER")


def dagster_daemon_main() -> None:
    """``dagster-daemon`` with this process's ``sys.argv``."""
    from dagster._daemon.cli import main

    main()


def setup_interrupt_handlers() -> None:
    """SIGINT and SIGTERM interrupt as in Dagster's own run workers."""
    from dagster._utils.interrupts import setup_interrupt_handlers as setup

    setup()


def is_sqlite_run_storage(storage) -> bool:
    from dagster._core.storage.runs.sqlite import SqliteRunStorage

    return isinstance(storage, SqliteRunStorage)
