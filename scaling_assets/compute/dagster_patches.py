"""Every change this package makes to Dagster's own behaviour, in one module, installed explicitly.

Nothing here happens on import (until 2026-12-07 importing the run coordinator installed every patch,
so every process that loaded ``dagster.yaml`` was patched, the webserver included). Two processes
install them, before they touch the instance:

- the daemon a ``study run`` starts (``python -m scaling_assets.study.daemon``): ``install()``, every
  patch, since each changes what the daemon does: creating runs (``alembic_scripts``,
  ``sqlite_event_batches``), its backfill tick (``backfill_grouping``, ``backfill_snapshot_reads``), its
  loops (``backfill_interval``, ``code_reload_interval``), its storage (``daemon_connection_pool``);
- the run workers' forkserver (``fork_prep``): ``install(only=RUN_WORKER_PATCHES)``. A worker creates no
  run and runs no backfill; it opens the instance and writes its run's events, where the revision
  checks of ``alembic_scripts`` cost it 155 -> 88 ms of CPU with the heads resolved in the forkserver
  (measured 2026-12-07, 2-core machine shared with other work: ~15% of a worker's start).

The webserver (``dagster dev``, ``dagster-webserver``), the CLI and code servers need none: they read,
the webserver pools its own connections, and they create a run only when one is launched by hand. A
daemon not started by ``study run`` (``dagster dev``'s) runs Dagster as it is: studies are correct
there, slower, with runs grouped worse; so are run workers started by the code server
(``fork_workers: false``).

**Off switch.** ``SCALING_ASSETS_DAGSTER_PATCHES``: unset or ``on``: every patch; ``off``: none; a
comma-separated list of names: only those (to measure one). A study runs correctly with none of them
(``test_compute_dagster_patches.py`` runs one both ways and gets the same MI table); it is slower and its runs
are grouped worse.

**Version guard.** The patches replace private functions of Dagster (the one place in the package that
imports Dagster's private modules outside ``dagster_compat``). They were written and tested
against ``TESTED_DAGSTER_VERSIONS`` only (``pyproject.toml`` pins that range). On any other Dagster
``install`` warns once and installs nothing, so an upgrade cannot break a study through them; to bring
them back, run their tests on the new version (``test_compute_dagster_patches.py``, ``test_compute_dagster_patches_backfill_grouping.py``,
``test_compute_dagster_patches_event_writes.py``: each also shows what Dagster alone does, so a test of "Dagster alone" that
starts failing says the patch can go), then add the version.

Each patch's docstring says what it fixes, what it measurably buys (``benchmarks/bench_run_creation.py``,
``benchmarks/bench_patches_study.py``; figures from a 2-core machine shared with other work), the
upstream issue (``dagster_upstream_issues.md`` holds ready-to-file texts where none exists), and when
it can be removed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

TESTED_DAGSTER_VERSIONS = ("1.13.27",)
PATCHES_ENV = "SCALING_ASSETS_DAGSTER_PATCHES"
RUN_WORKER_PATCHES = ("alembic_scripts",)  # what a run worker needs (module doc)

# backfill_interval / code_reload_interval: the environment sets them (``study/daemon.py``)
BACKFILL_INTERVAL_ENV = "SCALING_ASSETS_BACKFILL_INTERVAL"
DEFAULT_BACKFILL_INTERVAL_S = 5
CODE_RELOAD_INTERVAL_ENV = "SCALING_ASSETS_CODE_RELOAD_INTERVAL"
DEFAULT_CODE_RELOAD_INTERVAL_S = 600
# daemon_connection_pool: connections the daemon's pool opens beyond its one kept open
POOL_MAX_OVERFLOW = 20
# sqlite_event_batches: Dagster buffers a batch's events until this many (or the batch's end)
EVENT_BATCH_SIZE = "100"


@dataclass(frozen=True)
class Patch:
    name: str
    apply: Callable[[], None]


_installed: set[str] = set()
_warned = False
_lock = threading.Lock()


def install(only: Iterable[str] | None = None) -> tuple[str, ...]:
    """Install the patches (``only``: those of them), unless ``SCALING_ASSETS_DAGSTER_PATCHES`` or the
    Dagster version rules them out. Returns the names installed in this process so far. Safe to call
    more than once."""
    global _warned
    import dagster

    chosen = _chosen(os.environ.get(PATCHES_ENV, "on"))
    wanted = [p for p in PATCHES if p.name in chosen and (only is None or p.name in set(only))]
    with _lock:
        if wanted and dagster.__version__ not in TESTED_DAGSTER_VERSIONS:
            if not _warned:
                _warned = True
                warnings.warn(
                    f"scaling_assets: Dagster {dagster.__version__} is not a version its Dagster patches were "
                    f"tested with ({', '.join(TESTED_DAGSTER_VERSIONS)}): running Dagster as it is, without "
                    "them (slower studies, runs grouped worse). See scaling_assets/compute/dagster_patches.py",
                    RuntimeWarning, stacklevel=2)
            return tuple(sorted(_installed))
        for patch in wanted:
            if patch.name not in _installed:
                patch.apply()
                _installed.add(patch.name)
        return tuple(sorted(_installed))


def why_off(environ=os.environ) -> str | None:
    """Why ``install()`` in a process with ``environ`` would leave some patches out, in a line for the
    user; None when it would install them all."""
    import dagster

    setting = environ.get(PATCHES_ENV, "on")
    wanted = {p.name for p in PATCHES}
    if not _chosen(setting):
        return f"Dagster patches off ({PATCHES_ENV}={setting}): Dagster as it is, slower, runs grouped worse"
    if dagster.__version__ not in TESTED_DAGSTER_VERSIONS:
        return (f"Dagster patches off: Dagster {dagster.__version__} is not a version they were tested with "
                f"({', '.join(TESTED_DAGSTER_VERSIONS)}); slower, runs grouped worse")
    left_out = wanted - _chosen(setting)
    return f"Dagster patches {', '.join(sorted(left_out))} off ({PATCHES_ENV}={setting})" if left_out else None


def _chosen(setting: str) -> set[str]:
    names = {p.name for p in PATCHES}
    value = setting.strip().lower()
    if value in ("", "on", "1", "true", "all"):
        return names
    if value in ("off", "0", "false", "none"):
        return set()
    chosen = {name.strip() for name in value.split(",") if name.strip()}
    if chosen - names:
        warnings.warn(f"{PATCHES_ENV}: no patch named {', '.join(sorted(chosen - names))} "
                      f"(patches: {', '.join(sorted(names))}, or on / off)", RuntimeWarning, stacklevel=3)
    return chosen & names


# -- alembic_scripts -------------------------------------------------------------------------------
_scripts: dict[tuple[str | None, str | None], tuple[object, str | None]] = {}  # (script directory, head)
_scripts_lock = threading.Lock()


def _script(alembic_config):
    """The storage's Alembic script directory, its migrations read once per process."""
    from alembic.script import ScriptDirectory

    key = (alembic_config.config_file_name, alembic_config.get_main_option("script_location"))
    with _scripts_lock:
        if key not in _scripts:
            script = ScriptDirectory.from_config(alembic_config)
            _scripts[key] = script, script.as_revision_number("head")
        return _scripts[key]


def _install_alembic_scripts() -> None:
    """Read Alembic's migration scripts once per process (``check_alembic_revision``, ``stamp_alembic_rev``).

    Fixes: SQLite storage keeps one event-log database per run. The daemon creates it when it creates
    the run (stamping its schema revision), and a process's first write to it checks that revision
    against Alembic's head; both load and parse every migration script from disk, each time (~25-35 ms
    of CPU). The scripts are the installed Dagster's and cannot change while a process runs, so they
    are read once per process and script directory; the database's own revision is still read and
    written every time.

    Buys (2026-12-07, 2 cores shared at load 16-27): creating a run (``bench_run_creation.py --runs 20``)
    with the batched writes takes 94 ms of the daemon's CPU instead of 137 (alone, on the one-by-one writes:
    246 instead of 257); a run worker opens its instance and writes its first events in 88 ms of CPU instead
    of 155 (module doc). At the paper's shape it was 13% of the daemon's samples while it launched runs
    (py-spy, 2026-12-04).

    Upstream: none found (searched dagster-io/dagster issues, 2026-12-07); ready-to-file text in
    ``dagster_upstream_issues.md``. Remove when Dagster caches its ``ScriptDirectory`` (or stops
    checking the revision of each run database), i.e. when ``test_compute_dagster_patches_event_writes.py``'s stamping test
    passes without this patch.
    """
    import sqlite3

    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.exc import DatabaseError

    import dagster._core.storage.sql as sql

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


SQLITE_STORAGES = (
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
)


def warm_alembic_heads(modules=SQLITE_STORAGES) -> None:
    """Resolve these storages' Alembic heads now, if ``alembic_scripts`` is installed (in the forkserver:
    then no worker has to)."""
    import importlib

    from dagster._core.storage.sql import get_alembic_config

    if "alembic_scripts" in _installed:
        for name in modules:
            _script(get_alembic_config(importlib.import_module(name).__file__))


# -- sqlite_event_batches --------------------------------------------------------------------------
class _Overlay:
    """``obj`` with some attributes replaced, to run one of Dagster's functions on it as it is."""

    def __init__(self, obj, **attributes):
        self._obj = obj
        self.__dict__.update(attributes)

    def __getattr__(self, name):  # only what ``attributes`` does not hold
        return getattr(self._obj, name)


def _install_sqlite_event_batches() -> None:
    """Write a run's planned events in one transaction a database (``SqliteEventLogStorage.store_event_batch``).

    Fixes: Dagster creates a run with one "materialization planned" event per asset partition it
    targets (and one "check planned" per asset check), written as one batch when
    ``DAGSTER_EVENT_BATCH_SIZE`` is set (Dagster's own switch, which this patch sets unless the user
    has), but SQLite storage has no batch write: it stored them one by one, each in two transactions
    (the run's database and the index; a check a third) on connections opened and closed for it, and
    a closed connection checkpoints SQLite's write-ahead log: 38 commits for a setting's PCA/random
    projection/SCVI run (10 assets, 6 checks). The patch writes the batch in two transactions, the same
    rows in the same order within each database (``test_compute_dagster_patches_event_writes.py``).

    Buys (2026-12-07, 2 cores shared at load 16-27; ``bench_run_creation.py --runs 20``): a run of 10 assets
    and 6 checks is created with 2 connections instead of 38, in 137 ms of CPU instead of 257 and 1.1 s
    instead of 2.4 s (all patches: 94 ms, 1.0 s). At the paper's shape the daemon's first settings
    evaluation submitted its 630 runs in 263 s instead of 973 s (2026-12-04).

    Upstream: dagster-io/dagster#33831 (planned events written one row at a time at run launch; its
    PR #33832 batches them for PostgreSQL only); the SQLite side: ready-to-file text in
    ``dagster_upstream_issues.md``. Remove when ``SqliteEventLogStorage`` writes a batch of planned
    events itself (``test_compute_dagster_patches_event_writes.py`` counts the connections Dagster's own path opens).
    """
    from dagster import DagsterEventType, DagsterInvariantViolationError
    from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
    from dagster._core.storage.sqlalchemy_compat import db_result

    one_by_one = SqliteEventLogStorage.store_event_batch  # the base class's loop over store_event
    batched_types = ASSET_EVENTS | {DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED}
    check_events = ASSET_CHECK_EVENTS

    def store_event_batch(self, batch):
        # what ``store_event`` writes for asset events and planned checks, a run's batch in one
        # transaction a database
        if (type(self).store_event is not SqliteEventLogStorage.store_event
                or len({event.run_id for event in batch}) != 1
                or not all(event.is_dagster_event and event.dagster_event_type in batched_types
                           for event in batch)
                or (not self.supports_asset_checks
                    and any(event.dagster_event_type in check_events for event in batch))):
            return one_by_one(self, batch)
        statements = [self.prepare_insert_event(event) for event in batch]
        with self.run_connection(batch[0].run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        # mirrored for cross-run asset queries. Should this fail, Dagster stores the batch again one by one
        # (its fallback), and the run's own log holds the events twice, as with its PostgreSQL batches
        with self.index_transaction() as conn:
            for event, statement in zip(batch, statements):
                with db_result(conn, statement) as result:
                    event_id = result.inserted_primary_key[0]
                if event.dagster_event_type in check_events:  # the check's planned execution row
                    on_this_transaction = _Overlay(self, index_connection=lambda: contextlib.nullcontext(conn))
                    SqlEventLogStorage._store_asset_check_evaluation_planned(on_this_transaction, event, event_id)
                    continue
                if event_id is None:
                    raise DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
                self._store_asset_event_tags(conn, [event], [event_id])
                self._store_asset_event(conn, event, event_id)

    store_event_batch.__wrapped__ = one_by_one
    SqliteEventLogStorage.store_event_batch = store_event_batch
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)


# -- backfill_grouping -----------------------------------------------------------------------------
def _install_backfill_grouping() -> None:
    """Keep a setting's chain in one run when the data above it finish batch by batch
    (``asset_backfill._should_backfill_atomic_asset_subset_unit``).

    Fixes: a child asset joins its parent's run only when the child's whole unrequested subset equals
    the parent subset requested in the same tick; otherwise Dagster holds back the whole child subset
    and the parent runs alone. A study's setting chain (``train_counts``/``train_corpus`` -> ``model_*``
    -> ``embeddings_*`` -> ``mi_*``) is requested seed by seed, or quality by quality, as the data above
    it finish at different times (Geneformer's corpora, in the settings backfill), so from the second
    batch on every asset of the chain ran in a run of its own. The patch narrows the child to the
    partitions whose same-partitioned parent is requested in this tick before Dagster's check; the
    child partitions left out are what Dagster would have held back anyway, candidates again next
    tick. ``test_compute_dagster_patches_backfill_grouping.py`` shows both behaviours on a miniature of the study's graph.

    Buys (2026-12-07, 2 cores shared at load 16-27; ``bench_patches_study.py --study geneformer``, 6
    Geneformer settings over 3 qualities): 19 runs instead of 31, each setting's chain one run instead of
    three (``train_corpus``; the model; embeddings and MI), 389 s instead of 435 s. At the paper's shape
    (2026-12-04): 1,144 runs in a 25-minute window without it, 770 of them a one-record ``train_corpus`` run
    alone (88% orchestration each); 400 with it.

    Upstream: none for this case (related: dagster-io/dagster#31315, #31323 on the same check); ready-
    to-file text in ``dagster_upstream_issues.md``. Remove when
    ``test_dagster_alone_splits_the_chains_of_the_middle_seeds`` fails, i.e. Dagster groups them itself.
    """
    from dagster import IdentityPartitionMapping
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


# -- backfill_snapshot_reads -----------------------------------------------------------------------
def _install_backfill_snapshot_reads() -> None:
    """Read a backfill tick's materialisations as of one point in the event log
    (``asset_backfill.get_asset_backfill_iteration_materialized_subset``).

    Fixes (a correctness bug): Dagster reads each target asset's new materialisations with a query of
    its own and no upper bound, so a tick can count a run's later asset and miss its earlier one,
    written while it read the other assets: the backfill's materialised subset is then no state the
    event log was ever in. The tick requests children of the later asset only, and the chain splits
    into runs (the paper-shaped bench, 2026-12-04: 50 of 1,200 Geneformer chains, a corpus run's
    ``pool_corpus`` counted without its ``eval_corpus``). The patch bounds every query of the tick at
    the newest event on entry; later events are read by the next tick, which starts from Dagster's own
    cursor, taken before this one.

    Buys: correctness under a race, so not measurable by a short study: ``test_compute_dagster_patches_backfill_grouping.py`` makes
    a run write between a tick's reads (Dagster alone: 2 of the run's 3 assets counted; patched: none, all
    three next tick). Its cost: one ``get_maximum_record_id`` query a tick.

    Upstream: none found (related: dagster-io/dagster#18657 lags the cursor for PostgreSQL's
    out-of-order ids, not this); ready-to-file text in ``dagster_upstream_issues.md``. Remove when
    ``test_dagster_alone_counts_a_runs_later_materialisations_without_its_earlier_ones`` fails.
    """
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


# -- backfill_interval, code_reload_interval -------------------------------------------------------
def _set_controller(name: str, value: float) -> None:
    from dagster._daemon import controller

    if not hasattr(controller, name):  # renamed: setting it would do nothing (the version guard stops us first)
        raise RuntimeError(f"dagster._daemon.controller has no {name}; update {__file__}")
    setattr(controller, name, value)


def _install_backfill_interval() -> None:
    """Evaluate backfills every 5 s instead of 30 s (``SCALING_ASSETS_BACKFILL_INTERVAL`` sets it):
    ``dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS``, read by the backfill loop each time it sleeps.

    Fixes: Dagster fixes the backfill daemon's pause at 30 s, and each stage of a study (shared data,
    settings, Geneformer's chains after their corpora, results) waits for an evaluation.

    Buys (2026-12-07, 2 cores shared at load 16-27; ``bench_patches_study.py --study pca``): the small PCA
    study spent 7 s with no run queued or running instead of 56 s (190 s in all instead of 271; on so busy a
    machine the wall time varies: an earlier pair took 237 s with it and 222 s without).

    Upstream: dagster-io/dagster#11649 ("deep asset backfills can spend too much time in daemon sleep",
    open; PR #11860 proposed a shorter interval while backfills are active). Remove when Dagster's
    backfill interval can be set (or shortens itself while backfills run).
    """
    _set_controller("DEFAULT_DAEMON_INTERVAL_SECONDS",
                    float(os.environ.get(BACKFILL_INTERVAL_ENV, DEFAULT_BACKFILL_INTERVAL_S)))


def _install_code_reload_interval() -> None:
    """Reload the code location every 10 minutes instead of every minute
    (``dagster._daemon.controller.RELOAD_WORKSPACE_INTERVAL``; ``SCALING_ASSETS_CODE_RELOAD_INTERVAL`` sets it).

    Fixes: each reload starts a fresh code server, which imports the package and builds the
    definitions, and fetches the repository snapshot again. A daemon that reloads less often picks up
    edited code that much later (runs always load the code afresh).

    Buys: a reload's code server takes 3.6 s of CPU to import the package and build the default study's
    definitions (2026-12-07, 2 cores shared at load 16-27), so Dagster's interval costs ~3.6 CPU s a minute
    of study, this one ~0.4; measured before on the default study: ~60 CPU s of code servers in a 12-minute
    study, 14 with this patch (2026-12-02).

    Upstream: dagster-io/dagster#32677 (open; PR #32693 exposes the interval). Remove when the interval
    can be set.
    """
    _set_controller("RELOAD_WORKSPACE_INTERVAL",
                    float(os.environ.get(CODE_RELOAD_INTERVAL_ENV, DEFAULT_CODE_RELOAD_INTERVAL_S)))


# -- daemon_connection_pool ------------------------------------------------------------------------
def _install_daemon_connection_pool() -> None:
    """Have the daemon keep its database connections open, as dagster-webserver does
    (``dagster._daemon.cli.daemon_controller_from_instance`` calls ``instance.optimize_for_webserver``).

    Fixes: dagster-postgres storage opens a new connection for every query (``NullPool``) unless the
    process asks otherwise (``DagsterInstance.optimize_for_webserver``, which only the webserver calls).
    A backfill submits each run with one event per asset partition it plans, so at the paper's shape
    the daemon opened ~30 connections per run: 85% of its run submission time (py-spy,
    ``bench_paper_shape.py``). No statement timeout (0), unlike the webserver's 15 s.
    SQLite storage ignores it.

    Buys (PostgreSQL only; 2026-12-07, 2 cores shared at load 16-27; ``bench_run_creation.py --runs 15
    --postgres-url``, a local server): a run is created with 0.1 new connections instead of 38, in 0.39 s
    instead of 1.30 s and 58 ms of CPU instead of 104. At the paper's shape (2026-12-02): run submission
    12.3 -> 2.5 s a run.

    Upstream: dagster-io/dagster#33935 (pool settings configurable for every process, open; PR #33936).
    Remove when the daemon's pool can be configured in ``dagster.yaml``.
    """
    from dagster._daemon import cli

    make_controller = cli.daemon_controller_from_instance

    def daemon_controller_from_instance(instance, *args, **kwargs):
        instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=POOL_MAX_OVERFLOW)
        return make_controller(instance, *args, **kwargs)

    daemon_controller_from_instance.__wrapped__ = make_controller
    cli.daemon_controller_from_instance = daemon_controller_from_instance


PATCHES = (
    Patch("alembic_scripts", _install_alembic_scripts),
    Patch("sqlite_event_batches", _install_sqlite_event_batches),
    Patch("backfill_grouping", _install_backfill_grouping),
    Patch("backfill_snapshot_reads", _install_backfill_snapshot_reads),
    Patch("backfill_interval", _install_backfill_interval),
    Patch("code_reload_interval", _install_code_reload_interval),
    Patch("daemon_connection_pool", _install_daemon_connection_pool),
)
