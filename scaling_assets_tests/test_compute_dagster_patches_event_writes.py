"""Creating a run on SQLite storage: the batched planned events and the cached Alembic scripts of
``compute/dagster_patches.py`` write what Dagster's own one-by-one path writes, in fewer transactions."""

from __future__ import annotations

import contextlib

import pytest
from dagster import (AssetCheckKey, AssetCheckResult, AssetCheckSpec, DagsterEventType, DagsterInstance, Definitions,
                     EventRecordsFilter, MaterializeResult, StaticPartitionsDefinition, asset)

from scaling_assets.compute import dagster_patches

PATCHES = ("alembic_scripts", "sqlite_event_batches")
if not set(PATCHES) <= set(dagster_patches.install(only=PATCHES)):
    pytest.skip("the Dagster patches are off here (SCALING_ASSETS_DAGSTER_PATCHES, or an untested Dagster)",
                allow_module_level=True)

PARTITIONS = StaticPartitionsDefinition([f"s{i}" for i in range(5)])
N_ASSETS = 10
CHECKED = (7, 9)  # as the study's embeddings and MI assets, these carry a blocking check


def _chain():
    assets, parent = [], None
    for i in range(N_ASSETS):  # a setting's chain: record -> model -> embeddings -> MI ..., one partition each
        checks = ([AssetCheckSpec("in_range", asset=f"step{i}", blocking=True, partitions_def=PARTITIONS)]
                  if i in CHECKED else [])

        @asset(name=f"step{i}", partitions_def=PARTITIONS, deps=[parent] if parent else [], check_specs=checks)
        def _step():
            return MaterializeResult(check_results=[AssetCheckResult(passed=True)] if checks else [])

        assets.append(_step)
        parent = _step
    return assets


ASSETS = _chain()
JOB = Definitions(assets=ASSETS).resolve_implicit_global_asset_job_def()
KEYS = [a.key for a in ASSETS]
CHECK_KEYS = [AssetCheckKey(KEYS[i], "in_range") for i in CHECKED]


def _create_runs(instance: DagsterInstance, partitions: list[str]) -> tuple[list[str], list[str]]:
    """Create a run per partition; returns their ids and the shards each event write connected to."""
    storage = instance.event_log_storage
    shards: list[str] = []
    connect = storage._connect

    @contextlib.contextmanager
    def counting_connect(shard):
        shards.append(shard)
        with connect(shard) as conn:
            yield conn

    storage._connect = counting_connect
    try:
        runs = [instance.create_run_for_job(JOB, asset_selection=frozenset(KEYS),
                                            tags={"dagster/partition": p}).run_id for p in partitions]
    finally:
        storage._connect = connect
    return runs, shards


def _what_was_written(instance: DagsterInstance, run_ids: list[str], partitions: list[str]) -> dict:
    """The run's own log, the index's planned events and the per-partition planned status, without ids."""
    out: dict = {"run_logs": [], "index": {}, "latest_planned": {}, "checks": {}}
    for run_id in run_ids:
        out["run_logs"].append([(r.event_log_entry.dagster_event_type, r.event_log_entry.dagster_event.asset_key,
                                 r.event_log_entry.dagster_event.partition)
                                for r in instance.get_records_for_run(run_id).records])
    for check_key in CHECK_KEYS:
        executions = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=100)
        out["checks"][check_key] = sorted((e.partition, run_ids.index(e.run_id), e.status.value,
                                           e.event.dagster_event_type) for e in executions)
    for key in KEYS:
        records = instance.event_log_storage.get_event_records(  # asset queries read the index database
            EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION_PLANNED, asset_key=key), limit=100)
        out["index"][key] = sorted((r.partition_key, run_ids.index(r.run_id)) for r in records)
        for p, run_id in zip(partitions, run_ids):
            info = instance.event_log_storage.get_latest_planned_materialization_info(key, p)
            out["latest_planned"][(key, p)] = info.run_id == run_id if info else None
    out["asset_keys"] = sorted(k.to_user_string() for k in instance.get_asset_keys())
    return out


def test_run_creation_batches_its_planned_events_into_one_transaction_per_database(tmp_path, monkeypatch):
    n_runs = 3
    partitions = [f"s{i}" for i in range(n_runs)]
    written, shards = {}, {}
    for mode, size in (("one_by_one", "0"), ("batched", dagster_patches.EVENT_BATCH_SIZE)):
        monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", size)
        (tmp_path / mode).mkdir()
        with DagsterInstance.local_temp(str(tmp_path / mode)) as instance:
            run_ids, shards[mode] = _create_runs(instance, partitions)
            written[mode] = _what_was_written(instance, run_ids, partitions)

    one, batched = written["one_by_one"], written["batched"]
    planned = DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    assert sorted(one["run_logs"][0], key=str) == sorted(
        [(planned, key, "s0") for key in KEYS]
        + [(DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED, None, None)] * len(CHECK_KEYS), key=str)
    assert batched["run_logs"] == one["run_logs"]  # same events, same order in each run's database
    assert batched["index"] == one["index"] == {key: [(p, i) for i, p in enumerate(partitions)] for key in KEYS}
    assert batched["checks"] == one["checks"] == {
        key: [(p, i, "PLANNED", DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED) for i, p in enumerate(partitions)]
        for key in CHECK_KEYS}
    assert set(one["latest_planned"].values()) == {True}
    assert batched["latest_planned"] == one["latest_planned"]
    assert batched["asset_keys"] == one["asset_keys"] == sorted(k.to_user_string() for k in KEYS)
    # Dagster's path: a connection (and commit) to the run's database and one to the index per event, a
    # check's execution row one more; batched: one of each per run
    assert len(shards["one_by_one"]) == (2 * N_ASSETS + 3 * len(CHECK_KEYS)) * n_runs
    assert len(shards["batched"]) == 2 * n_runs
    assert shards["batched"].count("index") == n_runs


def test_a_batch_the_patch_does_not_cover_is_written_one_by_one(tmp_path, monkeypatch):
    """Events of two runs (or not all asset events) go through Dagster's loop over ``store_event``."""
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "0")
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        runs = [instance.create_run_for_job(JOB, asset_selection=frozenset(KEYS[:1]),
                                            tags={"dagster/partition": p}) for p in ("s0", "s1")]
        events = [r.event_log_entry for run in runs for r in instance.get_records_for_run(run.run_id).records]
        storage = instance.event_log_storage
        calls = []
        monkeypatch.setattr(SqliteEventLogStorage, "store_event", lambda self, e: calls.append(e.run_id))
        storage.store_event_batch(events)
    assert calls == [r.run_id for r in runs]


def test_new_run_databases_are_stamped_without_reading_the_migrations(tmp_path, monkeypatch):
    import dagster._core.storage.sql as sql
    from alembic.script import ScriptDirectory
    from dagster._core.storage.event_log.sqlite import sqlite_event_log

    reads = []
    from_config = ScriptDirectory.from_config.__func__
    monkeypatch.setattr(ScriptDirectory, "from_config",
                        classmethod(lambda cls, config: reads.append(config) or from_config(cls, config)))
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        run_ids, _ = _create_runs(instance, ["s0"])
        read_by_the_first = len(reads)
        run_ids += _create_runs(instance, ["s1", "s2"])[0]
        # the daemon used to read ~100 migration scripts for each new run database: now once a process
        assert len(reads) == read_by_the_first <= 1
        monkeypatch.undo()
        storage = instance.event_log_storage
        config = sql.get_alembic_config(sqlite_event_log.__file__)
        for run_id in run_ids:
            with storage.run_connection(run_id) as conn:
                # Dagster's own check, migrations read from disk: the run's database is at the head
                db_revision, head = sql.check_alembic_revision.__wrapped__(config, conn)
            assert db_revision == head is not None
