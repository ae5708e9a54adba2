"""Two fixes of Dagster 1.13 internals that matter at hundreds of runs at once (issue 24).

``check_alembic_revision``: SQLite storage keeps one event-log database per run, and the first write
of a process to a run's database checks its schema revision against Alembic's *head*, which Alembic
finds by loading and parsing every migration script from disk, each time (~25-30 ms of CPU). The
daemon does it once per launched run, each run worker once or twice: measured at 13% of the daemon's
samples while it launched runs (py-spy, ``benchmarks/bench_scheduler.py``). The head cannot change
while a process runs (it is the installed Dagster's), so it is read once per process and script
directory; the database's own revision is still read every time, as before.

``_should_backfill_atomic_asset_subset_unit`` (the asset backfill's run grouping): a child asset joins
its parent's run only when the child's whole unrequested subset equals the parent subset requested
in the same tick; otherwise Dagster holds back the whole child subset and the parent runs alone. A
study's setting chain (``train_counts``/``train_corpus`` -> ``model_*`` -> ``embeddings_*`` -> ``mi_*``)
is requested seed by seed, or quality by quality, as the shared data above it finish at different
times, so from the second batch on every asset of the chain ran in a run of its own (the paper-shaped
bench: 770 one-record ``train_corpus`` runs, each 88% orchestration). The patch narrows the child to the
partitions whose same-partitioned parent is requested in this tick before Dagster's check, so the
chain is grouped batch by batch; the child partitions left out are what Dagster would have held back
anyway, and they are candidates again next tick. ``test_backfill_grouping.py`` shows both behaviours.
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
    _install_backfill_grouping()
    _installed = True


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
