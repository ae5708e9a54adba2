"""Fixes of Dagster 1.13 internals that matter at hundreds of runs at once (issue 24).

``check_alembic_revision`` and ``stamp_alembic_rev``: SQLite storage keeps one event-log database per
run. The daemon creates it when it creates the run (stamping its schema revision), and the first write
of a process to it checks that revision against Alembic's *head*; both load and parse every migration
script from disk, each time (~25-35 ms of CPU). The daemon did both once per run it created or
launched, each run worker the check once or twice: 13% of the daemon's samples while it launched runs
(py-spy, ``benchmarks/bench_scheduler.py``), a fifth of creating a run. The scripts cannot change
while a process runs (they are the installed Dagster's), so they are read once per process and script
directory; the database's own revision is still read and written every time, as before.

``SqliteEventLogStorage.store_event_batch``: Dagster creates a run with one "materialization planned"
event per asset partition it targets (and one "check planned" per asset check), written as one batch
when ``DAGSTER_EVENT_BATCH_SIZE`` is set (Dagster's own switch, which ``install`` sets unless the user
has), but SQLite storage has no batch write: it stored them one by one, each in two transactions (the
run's database and the index; a check a third) on connections opened and closed for it, and a closed
connection checkpoints SQLite's write-ahead log. A setting's PCA/random projection/SCVI run (10 assets,
6 checks) took 38 commits; at the paper's shape the daemon's first settings
evaluation spent 87% of its time there (973 s for 630 runs, py-spy). The patch writes a run's batch in
two transactions, the same rows in the same order within each database
(``test_compute_dagster_patches_event_writes.py``).

``_should_backfill_atomic_asset_subset_unit`` (the asset backfill's run grouping): a child asset joins
its parent's run only when the child's whole unrequested subset equals the parent subset requested
in the same tick; otherwise Dagster holds back the whole child subset and the parent runs alone. A
study's setting chain (``train_counts``/``train_corpus`` -> ``model_*`` -> ``embeddings_*`` -> ``mi_*``)
is requested seed by seed, or quality by quality, as the shared data above it finish at different
times, so from the second batch on every asset of the chain ran in a run of its own (the paper-shaped
bench: 770 one-record ``train_corpus`` runs, each 88% orchestration). The patch narrows the child to the
partitions whose same-partitioned parent is requested in this tick before Dagster's check, so the
chain is grouped batch by batch; the child partitions left out are what Dagster would have held back
anyway, and they are candidates again next tick. ``test_compute_dagster_patches_backfill_grouping.py``
shows both behaviours.

``get_asset_backfill_iteration_materialized_subset`` (what a backfill tick counts as materialised):
Dagster reads each target asset's new materialisations with a query of its own and no upper bound, so a
tick could count a run's later asset and miss its earlier one, written while it read the other assets
(the paper-shaped bench: 50 of 1,200 Geneformer chains split, a corpus run's ``pool_corpus`` counted
without its ``eval_corpus``). The patch bounds every query of the tick at the newest event on entry;
later events are read by the next tick, which starts from Dagster's own cursor, taken before this one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

_scripts: dict[tuple[str | None, str | None], tuple[object, str | None]] = {}  # (script directory, head)
_lock = threading.Lock()
_installed = False


# Dagster buffers a batch's events until this many (or the batch's end), then writes them at once
EVENT_BATCH_SIZE = "100"


def install() -> None:
    """Install every patch of this module (once per process)."""
    global _installed
    if _installed:
        return
    _install_alembic_script_cache()
    _install_sqlite_batch_writes()
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)
    _install_backfill_grouping()
    _install_backfill_snapshot_reads()
    _installed = True


def _script(alembic_config):
    """The storage's Alembic script directory, its migrations read once per process."""
    from alembic.script import ScriptDirectory

    key = (alembic_config.config_file_name, alembic_config.get_main_option("script_location"))
    with _lock:
        if key not in _scripts:
            script = ScriptDirectory.from_config(alembic_config)
            _scripts[key] = script, script.as_revision_number("head")
        return _scripts[key]


def _install_alembic_script_cache() -> None:
    """Patch ``check_alembic_revision`` and ``stamp_alembic_rev`` of ``dagster._core.storage.sql``
    and of the storage modules that imported them by name."""
    import sqlite3

    import dagster._core.storage.sql as sql
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.exc import DatabaseError

    original_check, original_stamp = sql.check_alembic_revision, sql.stamp_alembic_rev

    def check_alembic_revision(alembic_config, conn):
        with sql._alembic_lock:
            db_revision = MigrationContext.configure(conn).get_current_revision()
        return db_revision, _script(alembic_config)[1]

    def stamp_alembic_rev(alembic_config, conn, rev="head"):
        # what Alembic's ``command.stamp`` does through Dagster's env.py (``run_migrations_online``),
        # on the caller's connection and transaction, without reloading the scripts
        script = _script(alembic_config)[0]
        with sql._alembic_lock:
            try:
                MigrationContext.configure(conn).stamp(script, rev)
            except (DatabaseError, sqlite3.DatabaseError) as exc:
                if "table alembic_version already exists" not in str(exc):  # another process's
                    raise

    for patched, original in ((check_alembic_revision, original_check), (stamp_alembic_rev, original_stamp)):
        patched.__wrapped__ = original
        name = original.__name__
        setattr(sql, name, patched)
        for module in list(sys.modules.values()):  # storages imported them by name
            if getattr(module, name, None) is original:
                setattr(module, name, patched)


class _Overlay:
    """``obj`` with some attributes replaced, to run one of Dagster's functions on it as it is."""

    def __init__(self, obj, **attributes):
        self._obj = obj
        self.__dict__.update(attributes)

    def __getattr__(self, name):  # only what ``attributes`` does not hold
        return getattr(self._obj, name)


def _install_sqlite_batch_writes() -> None:
    from dagster._core.errors import DagsterInvariantViolationError
    from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS, DagsterEventType
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
    from dagster._core.storage.sqlalchemy_compat import db_result

    one_by_one = SqliteEventLogStorage.store_event_batch  # the base class's loop over store_event
    batched_types = ASSET_EVENTS | {DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED}

    def store_event_batch(self, events):
        # what ``store_event`` writes for asset events and planned checks, a run's batch in one
        # transaction a database
        if (type(self).store_event is not SqliteEventLogStorage.store_event
                or len({event.run_id for event in events}) != 1
                or not all(event.is_dagster_event and event.dagster_event_type in batched_types
                           for event in events)
                or (not self.supports_asset_checks
                    and any(event.dagster_event_type in ASSET_CHECK_EVENTS for event in events))):
            return one_by_one(self, events)
        statements = [self.prepare_insert_event(event) for event in events]
        with self.run_connection(events[0].run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        # mirrored for cross-run asset queries. Should this fail, Dagster stores the batch again one by one
        # (its fallback), and the run's own log holds the events twice, as with its PostgreSQL batches
        with self.index_transaction() as conn:
            for event, statement in zip(events, statements):
                with db_result(conn, statement) as result:
                    event_id = result.inserted_primary_key[0]
                if event.dagster_event_type in ASSET_CHECK_EVENTS:  # the check's planned execution row
                    on_this_transaction = _Overlay(self, index_connection=lambda: contextlib.nullcontext(conn))
                    SqlEventLogStorage._store_asset_check_evaluation_planned(on_this_transaction, event, event_id)
                    continue
                if event_id is None:
                    raise DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
                self._store_asset_event_tags(conn, [event], [event_id])
                self._store_asset_event(conn, event, event_id)

    store_event_batch.__wrapped__ = one_by_one
    SqliteEventLogStorage.store_event_batch = store_event_batch


def _install_backfill_grouping() -> None:
    from dagster._core.definitions.partitions.mapping import IdentityPartitionMapping
    from dagster._core.execution import asset_backfill

    original = asset_backfill._should_backfill_atomic_asset_subset_unit

    def should_backfill_atomic_asset_subset_unit(asset_graph_view, entity_subset_to_filter, *,
                                                 asset_graph_subset_matched_so_far, **kwargs):
        graph = asset_graph_view.asset_graph
        key = entity_subset_to_filter.key
        node = graph.get(key)
        for parent_key in node.parent_keys:
            if parent_key == key:
                continue
            requested_now = asset_graph_view.get_entity_subset_from_asset_graph_subset(
                asset_graph_subset_matched_so_far, parent_key)
            parent = graph.get(parent_key)
            if (requested_now.is_empty or parent.partitions_def != node.partitions_def
                    or parent.backfill_policy != node.backfill_policy
                    or not isinstance(graph.get_partition_mapping(key, parent_key), IdentityPartitionMapping)):
                continue  # Dagster's own check decides: these could never share a run
            entity_subset_to_filter = entity_subset_to_filter.compute_intersection(
                asset_graph_view.compute_child_subset(key, requested_now))
        return original(asset_graph_view, entity_subset_to_filter,
                        asset_graph_subset_matched_so_far=asset_graph_subset_matched_so_far, **kwargs)

    should_backfill_atomic_asset_subset_unit.__wrapped__ = original
    asset_backfill._should_backfill_atomic_asset_subset_unit = should_backfill_atomic_asset_subset_unit


def _install_backfill_snapshot_reads() -> None:
    from dagster._core.execution import asset_backfill

    original = asset_backfill.get_asset_backfill_iteration_materialized_subset

    def get_asset_backfill_iteration_materialized_subset(backfill_id, asset_backfill_data, asset_graph,
                                                         instance_queryer):
        instance = instance_queryer.instance
        newest = instance.event_log_storage.get_maximum_record_id()
        if newest is None:
            return original(backfill_id, asset_backfill_data, asset_graph, instance_queryer)

        def up_to_newest(*args, before_storage_id=None, **kwargs):
            return instance.get_asset_event_summary_records(
                *args, before_storage_id=newest + 1 if before_storage_id is None else before_storage_id, **kwargs)

        # every asset's query reads the event log as it stood on entry; what came after is read next tick
        as_of_now = _Overlay(instance_queryer, instance=_Overlay(instance, get_asset_event_summary_records=up_to_newest))
        return original(backfill_id, asset_backfill_data, asset_graph, as_of_now)

    get_asset_backfill_iteration_materialized_subset.__wrapped__ = original
    asset_backfill.get_asset_backfill_iteration_materialized_subset = get_asset_backfill_iteration_materialized_subset


SQLITE_STORAGES = (
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
)


def warm_alembic_heads(modules=SQLITE_STORAGES) -> None:
    """Find the Alembic heads of these storages now (the forkserver: then no worker has to)."""
    import importlib

    from dagster._core.storage.sql import get_alembic_config

    for name in modules:
        _script(get_alembic_config(importlib.import_module(name).__file__))
