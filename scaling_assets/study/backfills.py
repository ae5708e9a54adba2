"""The main job: submit a study to the Dagster instance as asset backfills and watch them finish.

Dagster does the work: the backfill daemon requests each asset partition once its parents are
materialised (and never the dependants of a failed one), the run coordinator in ``dagster.yaml``
queues the runs and packs them onto GPUs and CPU slots, the launcher starts each run as its own
process. This module only chooses what to submit (every partition of the study that is not yet
materialised, or all of them with ``refresh``), keeps a daemon running meanwhile
(``scaling_assets.study.daemon``), shows progress, cancels on Ctrl-C, and reports the outcome.

The study goes in as two backfills, one after the other: the shared data every algorithm reads (raw
counts, the per-seed split, pools and evaluation sets), then the rest: the per-quality corpora only
Geneformer reads, every setting's chain and the results. In one backfill the daemon requests a
dataset's settings as soon as its own shared data is written, while the run writing the other
datasets' shared data is still going; those settings then miss the tick in which their siblings were
grouped and every step of their chain becomes a run of its own (measured on the default study: 90
runs instead of 20). Submitted second, every setting finds its inputs materialised, so Dagster puts
each setting's whole chain (training set, models, embeddings, MI) into one run; Geneformer's chains
follow their corpora in the same backfill (the coordinator queues a corpus run ahead of the runs of
cheaper models, so the longest chain is not left for last). The second backfill goes in as soon as
every shared partition is written, without waiting for the daemon's next evaluation to mark the first
one complete.

The results (tables, law fits, plots) summarise every dataset, so they normally run last in the
settings backfill. When a dataset could not run (its shared data failed, so its settings were not
submitted) or a setting failed (Dagster then never requests what depends on it), they go in as a third
backfill once the others end: results of every dataset that finished, the missing ones named in the
tables' metadata and the summary; the next ``study run`` completes them with the rest.

One ``study run`` per study at a time: a lock beside the study root refuses a second one; an
unfinished backfill of the study (its ``study run`` was killed) is joined instead of duplicated.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dagster import AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

from scaling_assets.assets.storage import sweep_staging
from scaling_assets.compute.dagster_compat import (BACKFILL_ID_TAG, WILL_RETRY_TAG, AssetGraphSubset,
                                                   AssetKeyPartitionKey, BulkActionsFilter, BulkActionStatus,
                                                   PartitionBackfill, is_sqlite_run_storage)
from scaling_assets.layout import RESULTS as GROUP
from scaling_assets.layout import STUDY_LOCK, partition_dir
from scaling_assets.assets.staleness import latest_materialisations, superseded_partitions, with_dependants
from scaling_assets.assets.versions import outdated_partitions
from scaling_assets.gpu.needs import TAG_STUDY
from scaling_assets.study.daemon import daemon_alive, study_daemon
from scaling_assets.definitions import build_definitions
from scaling_assets.errors import InputError
from scaling_assets.study.serial import print_summary, root_cause
from scaling_assets.study.spec import STUDY_ENV, Study, parse_seed_key

ACTIVE_BACKFILL = [BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING]
QUEUED = {DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED}
STARTING = {DagsterRunStatus.STARTING}  # launched; its process is starting (imports, loading definitions)
RUNNING = {DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING}
PROGRESS_EVERY_S = 30.0  # a progress line at least this often
PROGRESS_MIN_S = 5.0  # and at most this often (a line reads the runs' statuses), except the last
TAG_STAGE = "scaling_assets/stage"
# the backfill's title as a tag: Dagster's UI lists a backfill's tags (on its runs too), not its title
TAG_TITLE = "scaling_assets/backfill"
SHARED, SETTINGS, RESULTS = "shared data", "settings", "results"


@dataclass
class Progress:
    """Where a backfill stands, in asset partitions and in runs (``runs``: read only when printed)."""

    target: int
    done: int
    failed: int  # failed, or not run because something upstream failed
    runs: Counter = field(default_factory=Counter)


@dataclass
class Tally:
    """What one ``study run`` prints over all the backfills it watches, so that no count goes backwards:
    partitions done against the whole command's partitions (the backfills watched to their end, the one
    being watched, and what the stages still to submit are expected to hold), time from the command's
    start. A rerun that joined an unfinished backfill and then submitted the next stage used to print
    5/7 and then 1/7."""

    start: float
    ahead: dict[str, int] = field(default_factory=dict)  # stage -> expected partitions, until submitted
    done: int = 0  # in the backfills watched to their end
    failed: int = 0
    target: int = 0
    shown: int = 0  # the most partitions printed as done: a count from the runs may run ahead of the daemon's
    done_at_start: int | None = None

    def finished(self, outcome: dict) -> None:
        self.done, self.failed = self.done + outcome["done"], self.failed + outcome["failed_partitions"]
        self.target += outcome["target"]

    def line(self, now: Progress, stage: str) -> str:
        elapsed = time.perf_counter() - self.start
        done = self.shown = max(self.shown, self.done + now.done)
        failed = self.failed + now.failed
        target = max(self.target + now.target + sum(self.ahead.values()), done + failed)
        if self.done_at_start is None:
            self.done_at_start = done + failed
        rate = (done + failed - self.done_at_start) / elapsed if elapsed > 0 else 0
        remaining = target - done - failed
        eta = f"~{remaining / rate / 60:.1f} min left" if rate > 0 and remaining else ""
        runs = now.runs
        queued, starting, running = (sum(runs[s] for s in group) for group in (QUEUED, STARTING, RUNNING))
        finished = runs[DagsterRunStatus.SUCCESS] + runs[DagsterRunStatus.FAILURE] + runs[DagsterRunStatus.CANCELED]
        return (f"[{elapsed / 60:5.1f} min] partitions {done}/{target} done, {failed} failed or blocked | {stage} runs "
                f"{running} running, {starting} starting, {queued} queued, {finished} finished  {eta}").rstrip()


# -- what to submit -----------------------------------------------------------------------------
def missing_partitions(study: Study, instance: DagsterInstance, asset_graph, refresh: bool) -> AssetGraphSubset:
    """Every asset partition of the study that is not materialised, or is stale (all, with ``refresh``).

    Materialised means recorded in the instance with its folder still on disk. Stale: recorded under
    another code version than its asset's current one, or made before one of its parents was made
    again (``assets.staleness``). A partition redone (stale, or recorded but its folder deleted) is
    redone with everything downstream of it: what was made from its old version. The study-wide
    tables are redone whenever anything else is, since they summarise everything."""
    latest = latest_materialisations(instance, asset_graph)
    stale = outdated_partitions(instance, asset_graph, latest) | superseded_partitions(instance, asset_graph, latest)
    wanted: set[AssetKeyPartitionKey] = set()
    results = []
    for key in asset_graph.materializable_asset_keys:
        if key.path[0] == GROUP:
            results.append(key)
            continue
        partitions_def = asset_graph.get(key).partitions_def
        if partitions_def is None:
            done = {None} if instance.get_latest_materialization_event(key) is not None else set()
            keys = [None]
        else:
            done = set(instance.get_materialized_partitions(key))
            keys = partitions_def.get_partition_keys()
        for pk in keys:
            on_disk = partition_dir(study.root, list(key.path), pk).exists()
            if pk in done and not on_disk:
                stale.add(AssetKeyPartitionKey(key, pk))  # deleted: what was made from it goes with it
            elif refresh or pk not in done:
                wanted.add(AssetKeyPartitionKey(key, pk))
    wanted |= with_dependants(asset_graph, stale)
    for key in results:
        recorded = instance.get_latest_materialization_event(key) is not None
        if refresh or wanted or not recorded or not partition_dir(study.root, list(key.path), None).exists():
            wanted.add(AssetKeyPartitionKey(key, None))
    return AssetGraphSubset.from_asset_partition_set(wanted, asset_graph)


def stage_of(key, asset_graph) -> str:
    """SHARED for a dataset's data that every algorithm reads (unpartitioned, or partitioned by seed
    ``s=…``); SETTINGS for the rest: the per-quality corpora, each setting's chain, the results."""
    if key.path[0] == GROUP:
        return SETTINGS
    partitions_def = asset_graph.get(key).partitions_def
    if partitions_def is None:
        return SHARED
    try:
        parse_seed_key(partitions_def.get_partition_keys()[0])
    except ValueError:
        return SETTINGS
    return SHARED


def stage_target(target: AssetGraphSubset, stage: str, asset_graph, blocked_datasets=frozenset()) -> AssetGraphSubset:
    """The part of ``target`` in one stage, without the datasets whose shared data is missing (their
    settings cannot run) and then without the results too: they would wait on those settings for ever,
    so they go in as their own backfill once the others end (``_submit_results``)."""
    keep = {k for k in target.asset_keys if stage_of(k, asset_graph) == stage
            and not (blocked_datasets and (k.path[0] in blocked_datasets or k.path[0] == GROUP))}
    return AssetGraphSubset.from_asset_partition_set(
        {p for p in target.iterate_asset_partitions() if p.asset_key in keep}, asset_graph)


def results_subset(asset_graph) -> AssetGraphSubset:
    """The study-wide tables, law fits and plots (unpartitioned)."""
    keys = [k for k in asset_graph.materializable_asset_keys if k.path[0] == GROUP]
    return AssetGraphSubset.from_asset_partition_set({AssetKeyPartitionKey(k, None) for k in keys}, asset_graph)


def results_behind(study: Study, instance: DagsterInstance, asset_graph) -> bool:
    """A result asset was never materialised, or one of its parents (the MI, the models, or the result it
    is made from) was materialised after it: the results do not yet summarise everything the study has.
    False while no MI exists. (Parents, not all MI: the parameter tables follow the models and may be
    written before the last MI, which does not make them behind.)"""
    from dagster import AssetKey

    latest: dict = {}

    def written(key):
        if key not in latest:
            event = instance.get_latest_materialization_event(key)
            latest[key] = None if event is None else event.timestamp
        return latest[key]

    if not any(written(AssetKey([d, f"mi_{a}"])) is not None for d in study.datasets for a in study.algorithms):
        return False  # no MI anywhere: nothing to summarise
    for key in results_subset(asset_graph).asset_keys:
        own = written(key)
        if own is None or any((t := written(p)) is not None and t > own for p in asset_graph.get(key).parent_keys):
            return True
    return False


def datasets_with_mi(study: Study, instance: DagsterInstance) -> list[str]:
    """Datasets with at least one materialised MI partition: what the results can summarise."""
    from dagster import AssetKey

    return [d for d in study.datasets
            if any(instance.get_materialized_partitions(AssetKey([d, f"mi_{a}"])) for a in study.algorithms)]


def submit_backfill(study: Study, instance: DagsterInstance, target: AssetGraphSubset, stage: str) -> str:
    backfill_id = uuid.uuid4().hex[:8]
    title = f"study {study.name}: {stage}"
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=backfill_id, backfill_timestamp=time.time(),
        tags={TAG_STUDY: study.name, TAG_STAGE: stage, TAG_TITLE: title},
        dynamic_partitions_store=instance, asset_graph_subset=target, title=title,
        description=f"scaling-assets study run --study {study.source_file or study.name}", run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill_id


def unfinished_backfill(study: Study, instance: DagsterInstance) -> PartitionBackfill | None:
    """A backfill of this study that is still going (its ``study run`` was killed): join it."""
    found = instance.get_backfills(filters=BulkActionsFilter(statuses=ACTIVE_BACKFILL, tags={TAG_STUDY: study.name}))
    return max(found, key=lambda b: b.backfill_timestamp, default=None)


# -- watching -----------------------------------------------------------------------------------
def progress(instance: DagsterInstance, backfill: PartitionBackfill, asset_graph, final: bool = False,
             succeeded: dict | None = None) -> Progress:
    """Counts from the backfill's own bookkeeping; at the end, materialisations are read from the
    instance (the daemon closes a backfill without folding in its last runs' materialisations).
    ``succeeded``: a cache kept between polls (``succeeded_partitions``)."""
    data = backfill.get_asset_backfill_data(asset_graph)
    done = data.materialized_subset & data.target_subset
    if final:
        done = AssetGraphSubset.from_asset_partition_set(
            materialised_in(instance, data.target_subset, after=backfill.backfill_timestamp), asset_graph)
    n_done = done.num_partitions_and_non_partitioned_assets
    if not final and n_done == 0:
        # The daemon folds materialisations in between evaluations only, and an evaluation lasts until it has
        # submitted every run it requests: at the paper's shape the first submits every setting's run, an hour
        # or more, while runs finish. Until it has folded in any, count the partitions of the runs that
        # succeeded; after that its bookkeeping, without reading runs.
        n_done = succeeded_partitions(instance, backfill.backfill_id, {} if succeeded is None else succeeded)
    return Progress(
        target=data.target_subset.num_partitions_and_non_partitioned_assets,
        done=n_done,
        failed=(data.failed_and_downstream_subset & data.target_subset).num_partitions_and_non_partitioned_assets,
    )


def succeeded_partitions(instance: DagsterInstance, backfill_id: str, cache: dict) -> int:
    """Partitions written by the backfill's succeeded runs (one per asset of a run). One count a poll: the
    runs are read again only when another has succeeded (reading them every 2 s was most of the
    command's CPU while the default study's settings ran)."""
    filters = RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}, statuses=[DagsterRunStatus.SUCCESS])
    n_runs = instance.get_runs_count(filters)
    if n_runs and cache.get("runs") != n_runs:
        cache["runs"], cache["partitions"] = n_runs, sum(len(r.asset_selection or ()) for r in instance.get_runs(filters))
    return cache.get("partitions", 0) if n_runs else 0


def backfill_run_statuses(instance: DagsterInstance, backfill_id: str) -> Counter:
    """How many of the backfill's runs are in each status, retried failures left out (read when a progress
    line is printed). Counted by the run storage: reading every run (thousands in a paper study) cost
    seconds of CPU; only the failed runs are read, to leave out those that were retried."""
    tags = {BACKFILL_ID_TAG: backfill_id}
    counts = Counter()
    for status in DagsterRunStatus:
        if status != DagsterRunStatus.FAILURE:
            n = instance.get_runs_count(RunsFilter(tags=tags, statuses=[status]))
        else:
            n = sum(not retried(r) for r in instance.get_runs(RunsFilter(tags=tags, statuses=[status])))
        if n:
            counts[status] = n
    return counts


def materialised_in(instance: DagsterInstance, subset: AssetGraphSubset,
                    after: float | None = None) -> set[AssetKeyPartitionKey]:
    """The asset partitions of ``subset`` that the instance has materialisations for; with ``after`` (a
    timestamp, e.g. the backfill's submission), only those materialised since: a study run again after a
    code change or with ``--refresh`` finds every partition materialised by the earlier run."""
    found = set()
    for key in subset.asset_keys:
        if key in subset.non_partitioned_asset_keys:
            event = instance.get_latest_materialization_event(key)
            if event is not None and (after is None or event.timestamp >= after):
                found.add(AssetKeyPartitionKey(key, None))
            continue
        wanted = set(subset.get_partitions_subset(key).get_partition_keys())
        if after is None:
            done = set(instance.get_materialized_partitions(key))
        else:
            done, cursor = set(), None
            while True:  # pages of 1,000: a setting-level asset of the paper's study has 1,200 partitions
                page = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, after_timestamp=after),
                                                       limit=1000, cursor=cursor)
                done |= {r.partition_key for r in page.records}
                if not page.has_more:
                    break
                cursor = page.cursor
        found |= {AssetKeyPartitionKey(key, pk) for pk in wanted & done}
    return found


def retried(run) -> bool:
    """A failed run that Dagster's run retries re-execute from its failure (a killed run worker,
    ``dagster.yaml``'s run_retries): its retry, another run of the backfill, stands for it."""
    return run.status == DagsterRunStatus.FAILURE and run.tags.get(WILL_RETRY_TAG) == "true"


def run_failures(instance: DagsterInstance, backfill_id: str) -> dict[str, str]:
    """``{"run <id> (<assets>)": root cause}`` for every failed run of the backfill (not retried)."""
    failures = {}
    for run in instance.get_runs(RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}, statuses=[DagsterRunStatus.FAILURE])):
        if retried(run):
            continue
        events = [e.dagster_event for e in instance.all_logs(run.run_id) if e.dagster_event is not None]
        assets = sorted(k.to_user_string() for k in run.asset_selection or ())
        label = f"run {run.run_id[:8]} ({', '.join(assets[:3])}{', ...' if len(assets) > 3 else ''})"
        failures[label] = root_cause(events)
    return failures


SQLITE_COMFORTABLE_PARTITIONS = 50_000  # beyond this, SQLite's per-partition queries slow every daemon tick


def partition_count(asset_graph) -> int:
    """Asset partitions the study's assets track (an unpartitioned asset counts one)."""
    total = 0
    for key in asset_graph.materializable_asset_keys:
        partitions = asset_graph.get(key).partitions_def
        total += 1 if partitions is None else partitions.get_num_partitions()
    return total


def storage_warning(n_partitions: int, instance: DagsterInstance) -> str | None:
    """A warning when a study is larger than the instance's SQLite storage tracks comfortably."""
    if n_partitions <= SQLITE_COMFORTABLE_PARTITIONS or not is_sqlite_run_storage(instance.run_storage):
        return None
    return (f"warning: this study tracks {n_partitions:,} asset partitions on SQLite storage "
            f"({instance.root_directory}); beyond ~{SQLITE_COMFORTABLE_PARTITIONS:,} the daemon's backfill "
            "evaluations and the UI slow down: use PostgreSQL (deploy/postgres/dagster.yaml)")


@contextmanager
def study_lock(study: Study):
    """Refuse a second ``study run`` of the same study while this one is running."""
    path = Path(study.root) / STUDY_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise InputError(
            f"study {study.name!r} is already being run by {holder} (lock {path}); wait for it to finish "
            "or stop it with Ctrl-C, then run again (completed partitions are kept)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"`scaling-assets study run` pid {os.getpid()}")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def daemon_env(study: Study, instance: DagsterInstance) -> dict[str, str]:
    """The environment of a daemon we start: the same study and storage, the run's thread share."""
    env = dict(os.environ)
    env[STUDY_ENV] = str(study.source_file or study.name)
    env.setdefault("SCALING_ASSETS_HOME", os.getcwd())
    threads = getattr(instance.run_coordinator, "threads_per_run", None)
    if threads:  # BLAS/OpenMP read these at import, before a step can limit its pools
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(threads))
    return env


def run_study_queued(study: Study, instance: DagsterInstance, refresh: bool = False, out=None,
                     poll_s: float = 2.0) -> dict:
    """Submit the study's stages (or join its unfinished backfill), run them to the end, print the summary."""
    out = sys.stdout if out is None else out
    with study_lock(study):
        removed = sweep_staging(study.root)
        if removed:
            print(f"removed {len(removed)} staging folder(s) left by killed runs", file=out)
        asset_graph = build_definitions(study).resolve_asset_graph()
        warning = storage_warning(partition_count(asset_graph), instance)
        if warning:
            print(warning, file=out, flush=True)
        reap_dead_runs(instance, out)
        joined = unfinished_backfill(study, instance)
        stages = stages_to_submit(joined)
        if joined is not None and joined.status == BulkActionStatus.CANCELING:
            print(f"backfill {joined.backfill_id} of study {study.name!r} is still cancelling: waiting for it, then "
                  "submitting what it left", file=out)
        elif joined is not None:
            print(f"joining backfill {joined.backfill_id} of study {study.name!r}, still in progress", file=out)
        wanted = missing_partitions(study, instance, asset_graph, refresh)
        if joined is None and wanted.is_empty:
            print(f"study {study.name!r}: every partition is already materialised (--refresh redoes them)", file=out)
            print_summary(study, out, 0.0, 0, 0, {})
            return {"materialised": 0, "skipped": 0, "failed": {}, "wall_time_s": 0.0, "backfill_id": None}
        with study_daemon(instance, study, daemon_env(study, instance), out) as daemon:
            result = _run_stages(study, instance, asset_graph, joined, stages, refresh, daemon, out, poll_s, wanted)
        sweep_staging(study.root)
    return result


def reap_dead_runs(instance: DagsterInstance, out) -> None:
    """Fail the runs left starting by killed workers (``kill -9`` of a study's processes) before joining
    their backfill, so that Dagster retries them now rather than after its 180 s start timeout. With no
    daemon alive, nothing is launching runs: a starting run without a worker never gets one."""
    from scaling_assets.compute.coordinator import GpuAwareRunLauncher
    from scaling_assets.compute.run_workers import fail_runs_of_dead_workers

    launcher_gone = not daemon_alive(instance) and isinstance(instance.run_launcher, GpuAwareRunLauncher)
    failed = fail_runs_of_dead_workers(instance, launcher_gone=launcher_gone)
    if failed:
        print(f"{len(failed)} run(s) left starting by a worker that is gone marked failed "
              f"({', '.join(r[:8] for r in failed)}): Dagster retries them", file=out, flush=True)


def stages_to_submit(joined: PartitionBackfill | None) -> list[str]:
    """The stages to submit after ``joined``, the study's unfinished backfill (None: all). One that is
    still cancelling (a Ctrl-C'd ``study run``) ends without finishing its stage, so that stage is
    submitted again for what it left; a running one finishes its own."""
    stages = [SHARED, SETTINGS]
    if joined is None:
        return stages
    stage = joined.tags.get(TAG_STAGE, SETTINGS)
    if stage not in stages:
        return []
    first = stages.index(stage) + (0 if joined.status == BulkActionStatus.CANCELING else 1)
    return stages[first:]


def _run_stages(study, instance, asset_graph, joined, stages, refresh, daemon, out, poll_s, wanted) -> dict:
    """Join the unfinished backfill, submit the remaining stages, watch each to its end, report. ``wanted``:
    ``missing_partitions`` as the command found it."""
    print(f"study {study.name!r}: {study.n_training_runs()} training runs in the grid; storage {study.root}; "
          f"Dagster home {instance.root_directory}. Ctrl-C cancels.", file=out, flush=True)
    start = time.perf_counter()
    tally = Tally(start, ahead=expected_stages(wanted, asset_graph, joined, stages))
    watched: list[dict] = []
    blocked: dict[str, str] = {}
    backfill_id = None
    try:
        if joined is not None:
            backfill_id = joined.backfill_id
            watched.append(_watch(instance, backfill_id, asset_graph, daemon, out, poll_s, tally=tally))
        for i, stage in enumerate(stages):
            if i > 0 or joined is not None:  # what the last backfill wrote (or failed) changes what is missing
                wanted = missing_partitions(study, instance, asset_graph, refresh)
            datasets_blocked = frozenset()
            if stage == SETTINGS:  # a dataset whose shared data failed: its settings cannot run
                missing = missing_partitions(study, instance, asset_graph, False) if refresh else wanted
                shared_left = stage_target(missing, SHARED, asset_graph)
                datasets_blocked = frozenset(k.path[0] for k in shared_left.asset_keys)
                for name in sorted(datasets_blocked):
                    blocked[f"settings of {name}"] = "not run: the dataset's shared data is not materialised"
            target = stage_target(wanted, stage, asset_graph, datasets_blocked)
            tally.ahead.pop(stage, None)  # counted from its backfill from now on
            if target.is_empty:
                continue
            backfill_id = submit_backfill(study, instance, target, stage)
            print(f"backfill {backfill_id}: {stage} ({target.num_partitions_and_non_partitioned_assets} "
                  "partitions)", file=out, flush=True)
            watched.append(_watch(instance, backfill_id, asset_graph, daemon, out, poll_s,
                                  hand_off=stage != stages[-1], tally=tally))
        if results_behind(study, instance, asset_graph):  # a dataset blocked or a setting failed
            results_id = _submit_results(study, instance, asset_graph, out)
            if results_id is not None:
                backfill_id = results_id
                watched.append(_watch(instance, backfill_id, asset_graph, daemon, out, poll_s, tally=tally))
        _await_daemon_verdicts(instance, watched, daemon, poll_s)
    except KeyboardInterrupt:
        return _cancel(study, instance, backfill_id, asset_graph, daemon, out, poll_s)
    return _report(study, watched, blocked, time.perf_counter() - start, out)


def expected_stages(wanted: AssetGraphSubset, asset_graph, joined, stages) -> dict[str, int]:
    """Partitions each stage still to submit is expected to hold (beyond the joined backfill's)."""
    if joined is not None:
        wanted = wanted - joined.get_asset_backfill_data(asset_graph).target_subset
    return {stage: stage_target(wanted, stage, asset_graph).num_partitions_and_non_partitioned_assets
            for stage in stages}


def _submit_results(study: Study, instance: DagsterInstance, asset_graph, out) -> str | None:
    """The results of every dataset that has MI, when the settings backfill did not write them (a dataset
    was blocked or a setting failed); None when no dataset has any MI yet."""
    finished = datasets_with_mi(study, instance)
    if not finished:
        return None
    missing = [d for d in study.datasets if d not in finished]
    backfill_id = submit_backfill(study, instance, results_subset(asset_graph), RESULTS)
    print(f"backfill {backfill_id}: results of {', '.join(finished)}"
          + (f" (no MI yet for {', '.join(missing)}: the next `study run` adds them)" if missing else
             " (some settings failed: the tables list what is missing)"), file=out, flush=True)
    return backfill_id


HEALTH_EVERY_S = 10.0  # how often the watch looks for runs whose worker died before it started


def _watch(instance, backfill_id, asset_graph, daemon, out, poll_s, hand_off: bool = False,
           tally: Tally | None = None) -> dict:
    """Follow one backfill to its end, printing progress (``tally``: the command's counts so far); returns
    its outcome.

    Each poll reads the backfill alone (and, until the daemon has folded in any materialisation, one run
    count); the runs are counted by status only for a line that is printed (when partitions ended, at most
    every 5 s; at least every 30 s), and runs whose worker died while starting are looked for every 10 s
    (``fail_runs_of_dead_workers``). Reading every status and every succeeded run at each 2-s poll was most
    of the command's CPU (issue 42: 4.9 CPU-minutes over a 19.5-minute default study).

    ``hand_off``: end as soon as every run of the backfill succeeded and every partition it targets
    is materialised, rather than when the daemon's next evaluation (up to one backfill interval later)
    marks it complete; the next stage can go in that much sooner. Its status is read again at the end
    (``_await_daemon_verdicts``)."""
    from scaling_assets.compute.run_workers import fail_runs_of_dead_workers

    tally = tally or Tally(time.perf_counter())
    last_state, last_print, last_health = None, -PROGRESS_EVERY_S, time.perf_counter()
    succeeded, checked = {}, {}  # caches kept between polls
    if hand_off:
        poll_s = min(poll_s, 1.0)  # a short stage: notice its end promptly
    while True:
        backfill = instance.get_backfill(backfill_id)
        finished = backfill.status not in ACTIVE_BACKFILL
        now = progress(instance, backfill, asset_graph, final=finished, succeeded=succeeded)
        if hand_off and not finished and _all_written(instance, backfill, asset_graph, now, checked):
            finished, now = True, progress(instance, backfill, asset_graph, final=True)
        clock = time.perf_counter()
        since = clock - last_print
        if finished or since >= PROGRESS_EVERY_S or ((now.done, now.failed) != last_state and since >= PROGRESS_MIN_S):
            now.runs = backfill_run_statuses(instance, backfill_id)
            print(tally.line(now, backfill.tags.get(TAG_STAGE, SETTINGS)), file=out, flush=True)
            last_state, last_print = (now.done, now.failed), clock
        if finished:
            break
        if daemon is not None and not daemon.running():
            raise InputError(f"the dagster-daemon this command started exited (see {daemon.log_path}); "
                             "run the same command again: it resumes the study's backfill")
        if clock - last_health >= HEALTH_EVERY_S:
            last_health = clock
            if daemon is None and not daemon_alive(instance):
                raise InputError("the dagster-daemon running this study stopped heart-beating; run the same "
                                 "command again: it starts a daemon and resumes the study's backfill")
            fail_runs_of_dead_workers(instance)
        time.sleep(poll_s)
    failed = run_failures(instance, backfill_id)
    if backfill.status == BulkActionStatus.FAILED and backfill.error is not None:
        failed["backfill"] = backfill.error.message.strip().splitlines()[-1]
    outcome = {"backfill_id": backfill_id, "stage": backfill.tags.get(TAG_STAGE, SETTINGS), "status": backfill.status,
               "runs": now.runs[DagsterRunStatus.SUCCESS], "failed": failed, "done": now.done, "target": now.target,
               "failed_partitions": now.failed}
    tally.finished(outcome)
    return outcome


def _all_written(instance, backfill, asset_graph, now: Progress, checked: dict | None = None) -> bool:
    """Every run of the backfill succeeded and every partition it targets is materialised (the
    daemon may not have seen it yet). ``checked``: a cache kept between polls; one run count a poll
    until a run is added or one is unfinished (a finished run's materialisations are all stored)."""
    from scaling_assets.compute.dagster_compat import NOT_FINISHED_STATUSES

    checked = {} if checked is None else checked
    tags = {BACKFILL_ID_TAG: backfill.backfill_id}
    n_runs = instance.get_runs_count(RunsFilter(tags=tags))
    if now.failed or not n_runs or checked.get("runs") == n_runs:
        return False  # nothing new since these runs were found finished and the target not all written
    if instance.get_runs_count(RunsFilter(tags=tags, statuses=NOT_FINISHED_STATUSES)):
        return False
    checked["runs"] = n_runs
    runs = backfill_run_statuses(instance, backfill.backfill_id)
    if set(runs) != {DagsterRunStatus.SUCCESS}:
        return False
    target = backfill.get_asset_backfill_data(asset_graph).target_subset
    written = materialised_in(instance, target, after=backfill.backfill_timestamp)
    return len(written) == target.num_partitions_and_non_partitioned_assets


def _await_daemon_verdicts(instance, watched: list[dict], daemon, poll_s: float, timeout_s: float = 120) -> None:
    """Wait for the daemon to mark the backfills handed off before their end complete, and take its
    status: a backfill left in progress would be joined by the next ``study run``."""
    deadline = time.time() + timeout_s
    for w in watched:
        while w["status"] in ACTIVE_BACKFILL and time.time() < deadline:
            w["status"] = instance.get_backfill(w["backfill_id"]).status
            if w["status"] in ACTIVE_BACKFILL:
                if daemon is not None and not daemon.running():
                    break
                time.sleep(poll_s)


def _report(study, watched: list[dict], blocked: dict[str, str], wall: float, out) -> dict:
    """One summary for the study's backfills."""
    failed = {k: v for w in watched for k, v in w["failed"].items()} | blocked
    runs = sum(w["runs"] for w in watched)
    done, target = sum(w["done"] for w in watched), sum(w["target"] for w in watched)
    ok = all(w["status"] == BulkActionStatus.COMPLETED_SUCCESS for w in watched) and not blocked
    status = BulkActionStatus.COMPLETED_SUCCESS.value if ok else next(
        (w["status"].value for w in watched if w["status"] != BulkActionStatus.COMPLETED_SUCCESS), "BLOCKED")
    stages = "; ".join(f"{w['stage']} {w['backfill_id']} {w['done']}/{w['target']}" for w in watched)
    print_summary(study, out, wall, runs, 0, failed, unit="runs succeeded",
                  extra=f"backfills: {status}, {done}/{target} partitions ({stages})")
    return {"materialised": runs, "skipped": 0, "failed": failed, "wall_time_s": wall,
            "backfill_id": watched[-1]["backfill_id"] if watched else None, "status": status,
            "partitions_done": done, "partitions_target": target}


def _cancel(study, instance, backfill_id, asset_graph, daemon, out, poll_s) -> dict:
    """Ctrl-C: ask the daemon to cancel the backfill (it terminates running runs), wait for that."""
    if backfill_id is None:  # interrupted before anything was submitted
        print("\ncancelled before a backfill was submitted", file=out)
        return {"materialised": 0, "skipped": 0, "failed": {"cancelled": "before submission"},
                "wall_time_s": 0.0, "backfill_id": None, "status": "CANCELED"}
    print("\ncancelling the backfill: queued runs are dropped, running runs terminated "
          "(Ctrl-C again stops waiting)", file=out, flush=True)
    backfill = instance.get_backfill(backfill_id)
    if backfill.status in ACTIVE_BACKFILL:
        instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELING))
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            backfill = instance.get_backfill(backfill_id)
            if backfill.status not in ACTIVE_BACKFILL:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        pass
    status = instance.get_backfill(backfill_id).status.value
    print(f"backfill {backfill_id}: {status}; finished partitions are kept, a rerun resumes from them", file=out)
    return {"materialised": 0, "skipped": 0, "failed": {"cancelled": f"backfill {backfill_id} {status}"},
            "wall_time_s": 0.0, "backfill_id": backfill_id, "status": status}
