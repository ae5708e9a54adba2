"""The `paper` grid's full shape through `scaling-assets study run` and the real daemon (issue 24).

    .venv/bin/python benchmarks/bench_paper_shape.py --backend sqlite --window-min 12
    .venv/bin/python benchmarks/bench_paper_shape.py --backend postgres --window-min 12

The study (``benchmarks/paper_shape.yaml``) has the paper's shape: 4 datasets x 10 sizes x 10 qualities
x 3 seeds x 4 algorithms (17,110 asset partitions), on tiny simulated datasets (1,500 cells x 100
genes; lineage 2,300 cells with 800 held out, enough sister pairs for its MI). What is real:
``scaling-assets study run`` (submission, progress, resume), the daemon it starts
(``scaling_assets.study.daemon``: Dagster's backfill, queue, monitoring and retry loops), the GPU-aware run
queue and launcher of the repository's ``dagster.yaml`` (``max_concurrent_runs`` set by
``--max-concurrent-runs``), the data stages, PCA, random projection, the embeddings and MI assets (LMI
with 2 epochs), the lease ledger. What is simulated, through two explicit seams that are inert unless
their environment variables are set:

- NVML: ``SCALING_ASSETS_FAKE_NVML`` (``FakeNvml``, 8 x 80 GB that stay free, as ``bench_scheduler.py``).
  Under it ``step_device`` holds the lease of the step's ``needs.py`` estimate on the simulated GPU and
  runs the step's work on the CPU (``assets/devices.py``).
- SCVI and Geneformer: ``SCALING_ASSETS_MODEL_OVERRIDE`` (``models.get_model_class``) puts
  ``scaling_assets/models/stand_ins.py``'s synthetic models behind their names: training sleeps, holding the
  lease, for RELATIVE_COST x (0.5 + 0.5 log N / log N_max) x ``--unit-s`` seconds (Geneformer 10, SCVI 2
  units, as ``bench_scheduler.py``); embeddings are seeded Gaussians the real assets store and estimate on.
  With ``--durations h200`` a fit lasts what the paper budget's fit took on a real H200 instead (SCVI
  2-5 s at these sizes, Geneformer at least 276 s: ``stand_ins.h200_fit_s``), so the share of
  orchestration is measured against GPU work of the length the paper's smallest settings have.

The study runs for ``--window-min`` minutes (a 2-core machine cannot finish 1,200 setting runs in a
session), then the daemon is killed (SIGKILL, its process only) and ``study run`` is started again: the
report gives how long the rerun takes to join the backfill and launch its first run, and whether any
partition finished before the kill was materialised again. Sampled every ``--sample-s``: RSS of the CLI,
the daemon, code servers and run workers; the daemon's CPU seconds; sizes of the Dagster home's logs and
storage. From the daemon's log: each backfill evaluation's duration (second resolution) against the
partitions done. From the instance: runs, partitions, and per run the time in steps (the ops' own work,
in-process executor) against launch -> run end (orchestration: worker start-up, Dagster's run and step
events, input/output bookkeeping). GraphQL (Dagster's in-process context, the webserver's schema): the
partition statuses of one 300-partition asset and of four (1,200 partitions), the backfills page and a
backfill's page. Results: ``benchmarks/results/<date>_<machine>_bench_paper_shape_<backend>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

from harness import REPO, ProcessSampler, StudyRun, load, result_path, study_env, study_home
from scaling_assets.gpu.leases import LEASE_DIR_ENV
from scaling_assets.gpu.nvml import FAKE_NVML_ENV, FakeNvml
from scaling_assets.models import MODEL_OVERRIDE_ENV
from scaling_assets.models.stand_ins import H200_CHECK_ENV, OVERRIDE
from scaling_assets.study.daemon import LOG_LEVEL_ENV, log_file

BENCH = Path(__file__).resolve().parent
STUDY_YAML = BENCH / "paper_shape.yaml"
H200_CHECK = BENCH / "results" / "2026-12-04_h200_gpu_check.json"  # the paper budget's fits on an H200


def dir_sizes(home: Path) -> dict[str, float]:
    out = {}
    for child in ("logs", "storage", "history", "schedules", "compute_logs"):
        d = home / child
        if d.exists():
            out[child] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20
    return out


PROGRESS = re.compile(r"partitions (\d+)/(\d+) done, (\d+) failed")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:[.,]\d+)? [+-]\d{4} - (\S+) - (\w+) - (.*)")


def daemon_logs(home: Path) -> list[Path]:
    """The daemon's log files, oldest first: a long window rotates daemon.log to daemon.log.1 in flight."""
    live = log_file(home)
    return [p for p in (live.with_name(live.name + ".1"), live) if p.exists()]


def _lines(paths: list[Path]):
    for path in paths:
        with open(path, errors="replace") as f:
            yield from f


def backfill_ticks(log_paths: list[Path]) -> list[dict]:
    """Each backfill evaluation in the daemon's logs (oldest first): start, end (second resolution), bytes
    the backfill daemon logged for it; an evaluation still going at the end has no end."""
    ticks, current, logger = [], None, ""
    for line in _lines(log_paths):
        line = ANSI.sub("", line)
        m = LOG_LINE.match(line)
        if m:
            logger = m.group(2)
        if current is not None and logger.endswith("BackfillDaemon"):
            current["log_bytes"] += len(line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
        msg = m.group(4)
        if msg.startswith("Evaluating asset backfill"):
            if current is not None:
                ticks.append(current)
            current = {"start": t, "backfill": msg.split()[-1], "log_bytes": len(line)}
        elif current is not None and "completed iteration" in msg:
            current["end"] = t
        elif current is not None and msg.startswith("Submitted run"):
            current["runs_submitted"] = current.get("runs_submitted", 0) + 1
            current["last_submit"] = t
    if current is not None:
        ticks.append(current)
    return ticks


def run_breakdown(instance, t_from: float, t_to: float) -> dict:
    """Per finished run of the study: queue, launch, steps (the ops' own work) and the rest."""
    from dagster import DagsterRunStatus, RunsFilter
    from dagster._core.events import DagsterEventType as E

    runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
    rows = []
    for run in runs:
        record = instance.get_run_record_by_id(run.run_id)
        if record.end_time is None or not (t_from <= record.end_time <= t_to):
            continue
        events = {}
        for entry in instance.all_logs(run.run_id, of_type={E.RUN_ENQUEUED, E.RUN_STARTING, E.RUN_START,
                                                              E.RUN_SUCCESS}):
            events.setdefault(entry.dagster_event.event_type, entry.timestamp)
        stats = instance.get_run_step_stats(run.run_id)
        steps = sum((s.end_time or 0) - (s.start_time or 0) for s in stats if s.start_time and s.end_time)
        if E.RUN_STARTING not in events or E.RUN_SUCCESS not in events:
            continue
        wall = events[E.RUN_SUCCESS] - events[E.RUN_STARTING]
        rows.append({"queue_s": events[E.RUN_STARTING] - events.get(E.RUN_ENQUEUED, events[E.RUN_STARTING]),
                     "launch_s": events.get(E.RUN_START, events[E.RUN_STARTING]) - events[E.RUN_STARTING],
                     "wall_s": wall, "steps_s": steps, "n_steps": len(stats),
                     "partitions": len(run.asset_selection or ()),
                     "assets": ", ".join(sorted({key.path[-1] for key in run.asset_selection or ()}))})
    if not rows:
        return {"runs": 0}
    import numpy as np

    big = [r for r in rows if r["partitions"] > 3]  # a setting's chain (not the shared-data runs)
    def agg(rs):
        wall, steps = sum(r["wall_s"] for r in rs), sum(r["steps_s"] for r in rs)
        return {"runs": len(rs), "partitions": sum(r["partitions"] for r in rs),
                "wall_s_median": float(np.median([r["wall_s"] for r in rs])),
                "launch_s_median": float(np.median([r["launch_s"] for r in rs])),
                "steps_s_median": float(np.median([r["steps_s"] for r in rs])),
                "orchestration_s_per_run_median": float(np.median([r["wall_s"] - r["steps_s"] for r in rs])),
                "orchestration_share": (wall - steps) / wall if wall else None,
                "queue_s_median": float(np.median([r["queue_s"] for r in rs]))}
    by_assets: dict[str, list[dict]] = {}
    for r in rows:
        by_assets.setdefault(r["assets"], []).append(r)
    return {"all": agg(rows), "setting_chains": agg(big) if big else None,
            # what each kind of run costs: a Geneformer fit's run against a corpus run's
            "by_assets": {k: {**agg(rs), "steps_s_sum": sum(r["steps_s"] for r in rs),
                              "orchestration_s_sum": sum(r["wall_s"] - r["steps_s"] for r in rs)}
                          for k, rs in sorted(by_assets.items(), key=lambda kv: -len(kv[1]))}}


def count_rematerialised(instance, before: dict) -> dict:
    """Partitions materialised before the kill that were materialised again after it."""
    after = materialisation_counts(instance)
    again = {k: n for k, n in after.items() if k in before and n > before[k]}
    return {"partitions_done_before_kill": len(before), "materialised_again": len(again),
            "examples": [f"{a} {p}" for a, p in list(again)[:5]]}


def materialisation_counts(instance) -> dict:
    from dagster import AssetKey
    from dagster._core.storage.event_log.base import AssetRecordsFilter

    counts: dict = {}
    for key in instance.get_asset_keys():
        cursor = None
        while True:
            result = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(key.path)), limit=5000,
                                                     cursor=cursor)
            for r in result.records:
                k = (key.to_user_string(), r.partition_key)
                counts[k] = counts.get(k, 0) + 1
            if not result.has_more:
                break
            cursor = result.cursor
    return counts


PARTITION_STATUS = """
query PartitionHealth($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode { id partitionKeysByDimension { name partitionKeys }
      assetPartitionStatuses { __typename
        ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions
                                         unmaterializedPartitions } } }
  }
}"""
BACKFILLS_PAGE = """
query Backfills($limit: Int) {
  partitionBackfillsOrError(limit: $limit) {
    ... on PartitionBackfills { results { id status numPartitions timestamp endTimestamp title
        partitionSetName isAssetBackfill hasCancelPermission
        assetBackfillData { rootTargetedPartitions { partitionKeys ranges { start end } } }
        numCancelable } }
  }
}"""
BACKFILL_PAGE = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { id status numPartitions
      assetBackfillData { assetBackfillStatuses { __typename
          ... on AssetPartitionsStatusCounts { assetKey { path } numPartitionsTargeted numPartitionsInProgress
                                               numPartitionsMaterialized numPartitionsFailed } } } }
  }
}"""


def graphql_timings(home: Path, backfill_ids: list[str]) -> dict:
    """Time the UI's queries through Dagster's GraphQL schema in-process (what the webserver runs)."""
    from dagster import DagsterInstance
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster_graphql.test.utils import execute_dagster_graphql

    from scaling_assets.study.daemon import workspace_file

    out: dict = {"load": load()}
    with DagsterInstance.from_config(str(home)) as instance, \
            WorkspaceProcessContext(instance, WorkspaceFileTarget([str(workspace_file(home))])) as process:
        # as dagster-webserver does (its defaults): pooled connections, 15 s statement timeout
        instance.optimize_for_webserver(statement_timeout=15000, pool_recycle=3600, max_overflow=20)
        def timed(name, query, variables, repeat=3):
            times = []
            for _ in range(repeat):
                context = process.create_request_context()
                t0 = time.perf_counter()
                result = execute_dagster_graphql(context, query, variables)
                times.append(time.perf_counter() - t0)
                if result.errors:
                    out[f"{name}_errors"] = [str(e)[:300] for e in result.errors]
            out[name] = {"first_s": round(times[0], 3), "best_s": round(min(times), 3)}
            return result

        r = timed("partition_status_one_asset_300", PARTITION_STATUS, {"assetKey": {"path": ["cite", "mi_pca"]}})
        node = (r.data or {}).get("assetNodeOrError") or {}
        statuses = node.get("assetPartitionStatuses") or {}
        out["one_asset_materialized"] = len(statuses.get("materializedPartitions") or [])
        t0 = time.perf_counter()
        for ds in ("cite", "lineage", "spatial", "development"):
            execute_dagster_graphql(process.create_request_context(), PARTITION_STATUS,
                                    {"assetKey": {"path": [ds, "mi_pca"]}})
        out["partition_status_four_assets_1200_s"] = round(time.perf_counter() - t0, 3)
        timed("backfills_page", BACKFILLS_PAGE, {"limit": 24})
        for bid in backfill_ids[-1:]:
            timed("backfill_page", BACKFILL_PAGE, {"id": bid})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--window-min", type=float, default=12.0, help="minutes the study runs before the kill")
    parser.add_argument("--resume-min", type=float, default=3.0, help="minutes the rerun runs before the end")
    parser.add_argument("--unit-s", type=float, default=1.0, help="seconds per synthetic GPU cost unit")
    parser.add_argument("--durations", choices=["scaled", "h200"], default="scaled",
                        help="synthetic SCVI/Geneformer fits: --unit-s scaled costs, or what the paper budget's "
                             "fit took on a real H200 (stand_ins.h200_fit_s; Geneformer >= 276 s)")
    parser.add_argument("--max-concurrent-runs", type=int, default=6)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--heap-census", action="store_true",
                        help="the daemon writes a heap census every 2 minutes (benchmarks/tools/heap_census) to "
                             "<work>/heap_census.jsonl, summarised in the report")
    args = parser.parse_args()
    out_path = args.out or result_path(f"bench_paper_shape_{args.backend}.json")

    work = Path(tempfile.mkdtemp(prefix=f"bench-paper-{args.backend}-"))
    home = work / "home"
    pg = None
    url = None
    if args.backend == "postgres":
        sys.path.insert(0, str(REPO / "scaling_assets_tests"))
        from conftest import PostgresServer, _postgres_bin_dir  # the tests' throwaway server

        pg = PostgresServer(_postgres_bin_dir(), "postgres" if os.getuid() == 0 else None)
        pg.start()
        url = pg.create_database()
    study_home(home, postgres_url=url, coordinator={"max_concurrent_runs": args.max_concurrent_runs})
    gpus = [{"uuid": f"GPU-sim-{i}", "name": "simulated 80GB", "total_mib": 80 * 1024, "free_mib": 80 * 1024}
            for i in range(8)]
    fake = FakeNvml(gpus, path=work / "fake_nvml.json")
    env = study_env(home, work, **{FAKE_NVML_ENV: str(fake.path), LEASE_DIR_ENV: str(work / "leases"),
                                   MODEL_OVERRIDE_ENV: OVERRIDE, H200_CHECK_ENV: str(H200_CHECK),
                                   LOG_LEVEL_ENV: "info"},
                    BENCH_PAPER_UNIT_S=str(args.unit_s), BENCH_PAPER_N_MAX="1100", BENCH_PAPER_DURATIONS=args.durations)
    if args.heap_census:
        env.update(SCALING_ASSETS_HEAP_CENSUS=str(work / "heap_census.jsonl"),
                   PYTHONPATH=os.pathsep.join([str(BENCH / "tools" / "heap_census"), env["PYTHONPATH"]]))
    os.environ.update({k: env[k] for k in ("DAGSTER_HOME", FAKE_NVML_ENV, LEASE_DIR_ENV, MODEL_OVERRIDE_ENV,
                                           "SCALING_ASSETS_HOME")})
    report: dict = {"backend": args.backend, "machine": f"{psutil.cpu_count()} cores (shared)",
                    "max_concurrent_runs": args.max_concurrent_runs, "unit_s": args.unit_s,
                    "durations": args.durations, "load_at_start": load(), "work": str(work)}
    current: list[StudyRun] = []  # the command sampled: the first run, then the rerun
    sampler = ProcessSampler(lambda: [current[-1].pid] if current else [], args.sample_s,
                             extra=lambda: {"home_mib": dir_sizes(home)})
    print(f"work dir {work}; backend {args.backend}", flush=True)
    try:
        cli = StudyRun(STUDY_YAML, env, work, work / "cli.log")
        current.append(cli)
        sampler.start()
        t0 = cli.start
        t_shared = cli.wait_for(r"^backfill \w+: shared data", 600)
        t_settings = cli.wait_for(r"^backfill \w+: settings", 900)
        report["submit"] = {
            "cli_start_to_shared_backfill_s": None if t_shared is None else round(t_shared - t0, 1),
            "cli_start_to_settings_backfill_s": None if t_settings is None else round(t_settings - t0, 1),
            "lines": [line for _, line in cli.lines if line.startswith("backfill")], "load": load()}
        if t_settings is not None:  # the settings stage's submission: from the shared stage's end
            before = [t for t, line in cli.lines if t < t_settings and PROGRESS.search(line)]
            report["submit"]["settings_submission_s"] = round(t_settings - before[-1], 1) if before else None
        print(json.dumps(report["submit"]), flush=True)
        deadline = t0 + args.window_min * 60
        while time.time() < deadline and cli.proc.poll() is None:
            time.sleep(5)
        # -- the daemon killed mid-study -------------------------------------------------------
        daemons = sampler.pids("daemon")
        sampler.sample()
        from dagster import DagsterInstance

        with DagsterInstance.from_config(str(home)) as instance:
            done_before = materialisation_counts(instance)
        t_kill = time.time()
        for pid in daemons:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        report["window_end"] = {"t_s": round(t_kill - t0, 1), "load": load(),
                                "progress": [line for _, line in cli.lines if PROGRESS.search(line)][-1:]}
        cli.proc.wait(timeout=120)
        report["cli_after_kill"] = [line for _, line in cli.lines[-3:]]
        with DagsterInstance.from_config(str(home)) as instance:
            report["runs"] = run_breakdown(instance, t0, t_kill)
            from dagster._core.execution.backfill import BulkActionsFilter

            backfills = sorted(instance.get_backfills(filters=BulkActionsFilter()), key=lambda b: b.backfill_timestamp)
            ids = [b.backfill_id for b in backfills]
        report["graphql"] = graphql_timings(home, ids)
        print(json.dumps(report["graphql"]), flush=True)
        # -- the rerun ---------------------------------------------------------------------------
        rerun = StudyRun(STUDY_YAML, env, work, work / "cli_rerun.log")
        current.append(rerun)
        t_join = rerun.wait_for(r"joining backfill", 300)
        t_first_progress = None
        end = time.time() + args.resume_min * 60
        first_done = None
        while time.time() < end and rerun.proc.poll() is None:
            time.sleep(2)
            if t_first_progress is None:
                lines = [(t, PROGRESS.search(line)) for t, line in rerun.lines if PROGRESS.search(line)]
                if lines:
                    first_done = first_done if first_done is not None else int(lines[0][1].group(1))
                    moved = [t for t, m in lines if int(m.group(1)) > first_done]
                    if moved:
                        t_first_progress = moved[0]
        with DagsterInstance.from_config(str(home)) as instance:
            records = instance.get_run_records()
            started = [r.start_time for r in records if r.start_time and r.start_time > rerun.start]
            created = [r.create_timestamp.timestamp() for r in records if r.create_timestamp.timestamp() > rerun.start]
            report["resume"] = {
                "rerun_to_first_run_started_s": round(min(started) - rerun.start, 1) if started else None,
                "rerun_to_first_run_submitted_s": round(min(created) - rerun.start, 1) if created else None,
                "rerun_to_joined_s": None if t_join is None else round(t_join - rerun.start, 1),
                # partitions of runs the killed daemon had launched count too (they keep running)
                "rerun_to_first_new_partition_s":
                    None if t_first_progress is None else round(t_first_progress - rerun.start, 1),
                **count_rematerialised(instance, done_before), "load": load(),
                "lines": [line for _, line in rerun.lines[:4]]}
            report["runs_total"] = run_breakdown(instance, t0, time.time())
        print(json.dumps(report["resume"]), flush=True)
    finally:
        sampler.finish()
        sampler.kill_all()
        if pg is not None:
            time.sleep(2)
            pg.stop()
    report["samples"] = sampler.samples
    report["ticks"] = backfill_ticks(daemon_logs(home))
    report["daemon_log_mib"] = {p.name: p.stat().st_size / 2**20 for p in daemon_logs(home)}
    report["summary"] = summarise(report, cli)
    census = work / "heap_census.jsonl"
    if census.exists():  # the first and last census and the types that grew most between them
        lines = [json.loads(line) for line in census.read_text().splitlines() if line.strip()]
        lines = [line for line in lines if line["pid"] == lines[0]["pid"]]  # the first daemon (the window)
        counted = [line for line in lines if "top" in line] or [{"top": []}]  # a census may fail (its "error")
        first, last = dict(counted[0]["top"]), dict(counted[-1]["top"])
        growth = sorted(((last.get(k, 0) - first.get(k, 0), k) for k in set(first) | set(last)), reverse=True)
        report["heap_census"] = {
            "samples": [{k: v for k, v in line.items() if k != "top"} for line in lines],
            "grew_most": [[k, first.get(k, 0), last.get(k, 0)] for _, k in growth[:10]]}
    out_path.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report["summary"], indent=1), flush=True)
    print(f"figures: {out_path}; logs under {work}")


def evaluations(ticks: list[dict], samples: list[dict]) -> dict:
    """The settings backfill's evaluations: the first submits every run it requests before it ends."""
    out: dict = {}
    big = [t for t in ticks if t.get("runs_submitted", 0) > 5]
    if big:
        first = big[0]
        span = first.get("end", first.get("last_submit", first["start"])) - first["start"]
        out["first_settings_evaluation"] = {
            "runs_submitted": first["runs_submitted"], "s": span, "ended": "end" in first,
            "s_per_run_submitted": round(span / first["runs_submitted"], 1), "log_bytes": first["log_bytes"]}
    rss = [(s["t"], s["max_one_mib"].get("daemon")) for s in samples if s["max_one_mib"].get("daemon")]
    if rss:
        out["daemon_rss_mib_first_last"] = [round(rss[0][1]), round(rss[-1][1])]
    return out


def summarise(report: dict, cli: StudyRun) -> dict:
    samples = report["samples"]
    progress = [(t, int(m.group(1)), int(m.group(2))) for t, line in cli.lines if (m := PROGRESS.search(line))]
    t0 = cli.start
    summary: dict = {}
    if progress:
        # the settings stage: its progress lines follow the settings backfill line
        t_settings = cli.first(r"^backfill \w+: settings")
        settings = [(t, d) for t, d, total in progress if t_settings and t >= t_settings]
        if len(settings) > 1:
            minutes = (settings[-1][0] - settings[0][0]) / 60
            summary["settings_partitions_per_min"] = round((settings[-1][1] - settings[0][1]) / minutes, 1)
            summary["settings_partitions_done"] = settings[-1][1]
            summary["settings_partitions_target"] = progress[-1][2]
    runs = report.get("runs", {}).get("all") or {}
    if runs.get("runs"):
        minutes = report["window_end"]["t_s"] / 60
        summary["runs_per_min"] = round(runs["runs"] / minutes, 2)
        summary["partitions_per_min"] = round(runs["partitions"] / minutes, 1)  # of succeeded runs
    summary["peak_rss_mib"] = {role: round(max((s["max_one_mib"].get(role, 0) for s in samples), default=0), 1)
                               for role in ("cli", "daemon", "code_server", "run_worker")}
    # the first daemon's CPU (up to the kill), per partition its runs wrote and per run
    t_kill = t0 + report["window_end"]["t_s"] if "window_end" in report else float("inf")
    daemon_cpu = [s["cpu_s"].get("daemon") for s in samples if s["cpu_s"].get("daemon") and s["t"] < t_kill]
    if daemon_cpu and runs.get("partitions"):
        summary["daemon_cpu_s"] = round(max(daemon_cpu), 1)
        summary["daemon_cpu_s_per_partition_done"] = round(max(daemon_cpu) / runs["partitions"], 3)
        summary["daemon_cpu_s_per_run_done"] = round(max(daemon_cpu) / runs["runs"], 2)
    summary.update(evaluations(report.get("ticks", []), report["samples"]))
    ticks = report.get("ticks", [])
    if ticks:
        summary["ticks"] = [{"t_min": round((t["start"] - t0) / 60, 1), "backfill": t["backfill"],
                             "eval_s": t["end"] - t["start"] if "end" in t else None,
                             "still_going_s": None if "end" in t else t.get("last_submit", t["start"]) - t["start"],
                             "runs_submitted": t.get("runs_submitted", 0), "log_bytes": t["log_bytes"]}
                            for t in ticks]
    summary["home_mib_end"] = samples[-1]["home_mib"] if samples else None
    summary["load_end"] = load()
    return summary


if __name__ == "__main__":
    main()
