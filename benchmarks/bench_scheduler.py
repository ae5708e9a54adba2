"""Simulate the GPU-aware run queue on an 8 x 80 GB GPU box (no GPU needed).

    .venv/bin/python benchmarks/bench_scheduler.py                        # 200 runs, ~15 min on 2 cores
    .venv/bin/python benchmarks/bench_scheduler.py --runs 40 --unit-s 5   # a quick look
    # 256 small runs (needs that all fit at once) of 600 s each: does the box hold 256 in flight?
    .venv/bin/python benchmarks/bench_scheduler.py --runs 256 --algorithms scvi,pca,random_projection \
        --sleep-s 600 --out benchmarks/results/<date>_cpu2_bench_scheduler_256

What is real: a temporary DAGSTER_HOME whose dagster.yaml is the repository's run queue
(``GpuAwareRunCoordinator`` + ``GpuAwareRunLauncher``, the repository's ``dagster.yaml``),
a real Dagster daemon (``scaling_assets.study.daemon``: ``dagster-daemon run``) dequeuing the runs, one process per run (forked by ``GpuAwareRunLauncher``; the README also gives the figures of 2026-11-25, when the code server spawned each run),
and the real lease ledger: each run's step takes its lease through ``gpu_step`` for the ``needs.py``
estimate of its assets, then sleeps (``benchmarks/scheduler_workload.py``).
What is simulated: NVML (``FakeNvml``: 8 GPUs of 80 GB whose free memory stays at 80 GB, so memory
counts as used exactly while a lease or promise holds it), and the run durations.

The runs: ``--runs`` grid points drawn at random (seeded) from the ``paper`` study's grid (dataset x
size N x quality x seed x algorithm). A run holds the GPU assets of one algorithm at one grid point
(``model_<algo>``, ``embeddings_<algo>``, ``mi_<algo>``; for PCA/random projection only the MI step
uses a GPU); its need is ``needs.gpu_need_mib`` for the dataset's gene count (GENES below: assumed
round figures for the reference files, not read from them). Its duration, in units of ``--unit-s``
seconds, is RELATIVE_COST[algorithm] x (0.5 + 0.5 log N / log N_max): Geneformer training dominates,
bigger training sets take longer. These costs are assumptions to exercise the queue, not GPU timings.

Reported: GPU memory promised over time (leases + launcher promises, sampled from the ledger every
--sample-s and exactly from the runs' lease intervals), runs in flight and queued, launches per
minute, queue waits (all runs are submitted first; from the daemon's start to the run's dequeue and
placement by the launcher, so they include the daemon's start-up), the launch overhead
(placed -> the run's process holds its lease; placed_to_op_start: process start-up and Dagster's
run initialisation),
and a check that no GPU ever had more memory promised than it offers (80 GB minus the headroom);
the makespan against its lower bound max(sum need x sleep / usable GPU memory, longest sleep), the
other bounds and the shortest schedule of ``gpu/schedule_bounds.py`` (CP-SAT, ``--optimum-s``); the
run workers' memory every ``--mem-sample-s`` (sum of PSS, RSS and USS over the forkserver's children:
PSS counts a page shared by n workers 1/n in each, so its sum is what they take; RSS counts the
shared preloaded libraries once per worker), the daemon's CPU seconds and the load average
(other sessions share the machine). The bench stops itself if under 2 GiB of memory is left.
Figures go to stdout, ``<out>.json`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import yaml

from harness import DAEMON, FORKSERVER, REPO, RUN_WORKER, ProcessSampler, result_path
from scaling_assets.compute.instance import write_instance_yaml  # noqa: E402
from scaling_assets.gpu.leases import HEADROOM_MIB, LEASE_DIR_ENV, Ledger  # noqa: E402
from scaling_assets.gpu.needs import TAG_GPU_NEED, TAG_PRIORITY, gpu_need_mib, run_priority  # noqa: E402
from scaling_assets.gpu.nvml import FAKE_NVML_ENV, FakeNvml  # noqa: E402
from scaling_assets.study.daemon import DaemonProcess, daemon_alive  # noqa: E402
from scaling_assets.gpu.schedule_bounds import (  # noqa: E402
    memory_area_s, optimal_makespan_s, overlap_lower_bound_s, packing_lower_bound_s, replay_plan_s)

WORKLOAD = Path(__file__).with_name("scheduler_workload.py")
TAG_SLEEP = "bench/sleep_s"  # same as scheduler_workload.TAG_SLEEP (not imported: it imports dagster ops)
GENES = {"cite": 20000, "lineage": 25000, "spatial": 500, "development": 25000}  # assumed, see doc
RELATIVE_COST = {"geneformer": 10.0, "scvi": 2.0, "pca": 0.5, "random_projection": 0.5}


def draw_runs(n_runs: int, seed: int, algorithms=None) -> list[dict]:
    """``n_runs`` (dataset, setting, algorithm) points of the paper grid with their need and duration."""
    os.environ.setdefault("SCALING_ASSETS_DATA", "/nonexistent")  # the grid only, no data is read
    from scaling_assets.study.spec import load_study

    study = load_study("paper", check_paths=False)
    grid = [(name, s, a) for name in study.datasets for s in study.settings(name) for a in study.algorithms
            if algorithms is None or a in algorithms]
    rng = random.Random(seed)
    n_max = max(max(d.sizes) for d in study.datasets.values())
    runs = []
    for name, setting, algo in rng.sample(grid, n_runs):
        assets = [f"model_{algo}", f"embeddings_{algo}", f"mi_{algo}"]
        cost = RELATIVE_COST[algo] * (0.5 + 0.5 * math.log(setting.cells) / math.log(n_max))
        runs.append({"dataset": name, "setting": setting.key, "cells": setting.cells, "algorithm": algo,
                     "need_mib": gpu_need_mib(assets, GENES[name]), "cost": cost,
                     "priority": run_priority(assets)})
    return runs


class LedgerSampler(threading.Thread):
    """Reads the real ledger (under its lock, as the coordinator does) and the run queue every period."""

    def __init__(self, lease_dir: Path, instance, period_s: float, total_mib: int):
        super().__init__(daemon=True)
        self.ledger, self.instance, self.period_s = Ledger(lease_dir), instance, period_s
        self.total_mib = total_mib
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

        in_flight = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
        while not self.stop.is_set():
            with self.ledger.locked():
                records = self.ledger.records()
            per_gpu = Counter()
            for r in records:
                per_gpu[r.gpu_uuid] += r.need_mib  # fake NVML attributes nothing: a lease counts fully
            self.samples.append({
                "t": time.time(), "promised_mib": dict(per_gpu),
                "leases": sum(r.kind == "lease" for r in records),
                "promises": sum(r.kind == "promise" for r in records),
                "queued": self.instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED])),
                "in_flight": self.instance.get_runs_count(RunsFilter(statuses=in_flight)),
            })
            self.stop.wait(self.period_s)


MIN_AVAILABLE_MIB = 2048  # the bench stops itself below this much free memory, before the OOM killer acts


def memory_sampler(daemon_pid_fn, period_s: float) -> ProcessSampler:
    """Every period: the memory (PSS, RSS, USS) and CPU of every process under the daemon (code server,
    forkserver, run workers and their helpers), and the machine's memory in use and available."""
    def machine() -> dict:
        vm = psutil.virtual_memory()
        return {"machine_used_mib": (vm.total - vm.available) / 2**20, "available_mib": vm.available / 2**20}

    return ProcessSampler(lambda: [pid] if (pid := daemon_pid_fn()) is not None else [], period_s,
                          full_memory=True, extra=machine)


def memory_summary(samples: list[dict]) -> dict:
    """The sample with the most run workers (ties: the largest PSS sum), and per-worker figures there. PSS
    counts a page shared by n workers 1/n in each, so its sum is what they take; the sum of RSS counts the
    shared preloaded libraries once per worker."""
    samples = [s for s in samples if s["n"]]
    if not samples:
        return {}
    peak = max(samples, key=lambda s: (s["n"].get(RUN_WORKER, 0), s["pss_mib"].get(RUN_WORKER, 0)))
    workers = peak["n"].get(RUN_WORKER, 0)
    n = max(workers, 1)
    worker = {kind: peak[f"{kind}_mib"].get(RUN_WORKER, 0.0) for kind in ("pss", "rss", "uss")}
    return {
        "samples": len(samples), "workers_at_peak": workers,
        **{f"worker_{kind}_mib_sum": round(v) for kind, v in worker.items()},
        **{f"worker_{kind}_mib_mean": round(v / n, 1) for kind, v in worker.items()},
        "session_processes": sum(peak["n"].values()), "session_pss_mib": round(sum(peak["pss_mib"].values())),
        "machine_used_mib": round(peak["machine_used_mib"]),
        "machine_used_mib_max": round(max(s["machine_used_mib"] for s in samples)),
        "load_1min_at_peak": peak["load"][0],
        "daemon_cpu_s_last_sample": samples[-1]["cpu_s"].get(DAEMON),
        "forkserver_cpu_s_last_sample": samples[-1]["cpu_s"].get(FORKSERVER),
        "load_1min_mean": sum(s["load"][0] for s in samples) / len(samples),
    }


def submit_runs(instance, runs: list[dict], unit_s: float) -> list[str]:
    """Create and submit one queued run of the workload job per drawn grid point."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import PythonFileTarget

    sys.path.insert(0, str(WORKLOAD.parent))
    from scheduler_workload import SETTINGS, gpu_sleep

    target = PythonFileTarget(python_file=str(WORKLOAD), attribute="defs", working_directory=str(REPO),
                              location_name="bench")
    ids = []
    instance.add_dynamic_partitions(SETTINGS.name, sorted({spec["setting"] for spec in runs}))
    with WorkspaceProcessContext(instance, target) as process_context:
        workspace = process_context.create_request_context()
        remote_job = workspace.get_code_location("bench").get_repository("__repository__").get_full_job("gpu_sleep")
        for spec in runs:
            tags = {TAG_GPU_NEED: str(spec["need_mib"]), TAG_SLEEP: f"{spec['cost'] * unit_s:.2f}",
                    # what the coordinator tags a run of these assets with (Geneformer's first)
                    **({TAG_PRIORITY: str(spec["priority"])} if spec["priority"] else {}),
                    "bench/grid": f"{spec['dataset']}/{spec['algorithm']}/{spec['setting']}",
                    "dagster/partition": spec["setting"]}
            run = instance.create_run_for_job(
                gpu_sleep, tags=tags, remote_job_origin=remote_job.get_remote_origin(),
                job_code_origin=remote_job.get_python_origin(),
            )
            instance.submit_run(run.run_id, workspace)
            ids.append(run.run_id)
    return ids


def run_events(instance, run_id: str) -> dict:
    from dagster._core.events import DagsterEventType as E

    names = {E.RUN_ENQUEUED: "enqueued", E.RUN_STARTING: "starting", E.RUN_START: "started",
             E.RUN_SUCCESS: "ended", E.RUN_FAILURE: "ended", E.RUN_CANCELED: "ended"}
    out = {}
    for entry in instance.all_logs(run_id, of_type={*names, E.ENGINE_EVENT}):
        kind = entry.dagster_event.event_type
        if kind == E.ENGINE_EVENT:  # GpuAwareRunLauncher: dequeued, GPU chosen, promise written
            if "] Placed on " in (entry.message or ""):
                out.setdefault("placed", entry.timestamp)
        else:
            out.setdefault(names[kind], entry.timestamp)
    return out


def step_curve(intervals: list[tuple[float, float, float]], t0: float, t1: float, n: int = 2000):
    """Sum of ``weight`` over intervals (start, end, weight) active at n evenly spaced times."""
    import numpy as np

    times = np.linspace(t0, t1, n)
    values = np.zeros(n)
    for start, end, weight in intervals:
        values[(times >= start) & (times < end)] += weight
    return times, values


def max_concurrent(intervals: list[tuple[float, float, float]]) -> float:
    """Exact maximum over time of the summed weights of overlapping intervals (sweep line)."""
    events = sorted([(s, w) for s, _, w in intervals] + [(e, -w) for _, e, w in intervals],
                    key=lambda ev: (ev[0], ev[1]))  # releases before takes at equal times
    level = peak = 0.0
    for _, w in events:
        level += w
        peak = max(peak, level)
    return peak


def lower_bound_s(runs, unit_s: float, capacity_mib: int) -> dict:
    """max(sum need x duration / capacity, longest run): no schedule of these sleeps on this much GPU
    memory ends sooner (launch overheads, the CPU and the daemon's ticks not counted)."""
    area = memory_area_s([(r["need_mib"], r["cost"] * unit_s) for r in runs], capacity_mib, 1)
    longest = max(r["cost"] * unit_s for r in runs)
    return {"memory_area_s": area, "longest_run_s": longest, "lower_bound_s": max(area, longest)}


def policy_bounds(runs, unit_s: float, n_gpus: int, usable_mib: int, reserve_after_s: float,
                  makespan_s: float | None = None, optimum_time_limit_s: float = 0.0) -> dict:
    """The configuration-LP and overlap bounds, the coordinator's plan replayed without Dagster and,
    given a time limit, the shortest schedule the CP-SAT search finds and the bound it proves
    (``gpu/schedule_bounds.py``), with the measured makespan against each."""
    jobs = [(r["need_mib"], r["cost"] * unit_s) for r in runs]
    packing = packing_lower_bound_s(jobs, usable_mib, n_gpus)
    overlap = overlap_lower_bound_s(jobs, usable_mib, n_gpus)
    plan: list[tuple[float, int]] = []
    replay = replay_plan_s([(r["need_mib"], r["cost"] * unit_s, r["priority"], r["cells"]) for r in runs], usable_mib,
                           n_gpus, reserve_after_s=reserve_after_s, schedule=plan)
    best = max(packing, overlap)  # both are lower bounds: the larger one holds
    report = {"packing_lower_bound_s": packing, "overlap_lower_bound_s": overlap,
              "plan_replayed_makespan_s": replay, "plan_replayed_over_packing_bound": replay / packing,
              "plan_replayed_over_best_bound": replay / best}
    if optimum_time_limit_s:
        exact = optimal_makespan_s(jobs, usable_mib, n_gpus, time_limit_s=optimum_time_limit_s, hint=plan)
        # the search proves the optimum on some draws (draw 0), elsewhere little: keep the best bound
        proven = max(exact["lower_bound_s"], best)
        report.update(shortest_found_s=exact["makespan_s"], optimum_proven=exact["optimal"],
                      optimum_lower_bound_s=proven, optimum_search_s=exact["solve_s"],
                      plan_replayed_over_shortest_found=replay / exact["makespan_s"],
                      plan_replayed_over_optimum_bound=replay / proven)
    if makespan_s is not None:
        report.update(makespan_over_packing_bound=makespan_s / packing,
                      makespan_over_best_bound=makespan_s / best,
                      makespan_over_plan_replayed=makespan_s / replay)
        if optimum_time_limit_s:
            report.update(makespan_over_optimum_bound=makespan_s / report["optimum_lower_bound_s"])
    return report


def analyse(runs, ids, records, events, samples, gpus, t_submit, args, mem_samples=(), loads=None) -> dict:
    import numpy as np

    total_mib = sum(g["total_mib"] for g in gpus)
    usable = {g["uuid"]: g["total_mib"] - HEADROOM_MIB for g in gpus}
    device_uuid = {f"cuda:{i}": g["uuid"] for i, g in enumerate(gpus)}
    done = [r for r in ids if r in records]
    t_end = max(events[r]["ended"] for r in ids if "ended" in events[r])
    # exact: a run's memory counts from its launcher promise ("Placed on") to its lease's release
    mem = [(events[r]["placed"], records[r]["released"], records[r]["need_mib"]) for r in done]
    lease_only = [(records[r]["leased"], records[r]["released"], records[r]["need_mib"]) for r in done]
    times, promised = step_curve(mem, t_submit, t_end)
    queued_until = max(events[r]["placed"] for r in ids)  # the queue is non-empty before this
    busy = times < queued_until
    flight = [(events[r]["placed"], events[r]["ended"], 1) for r in ids if "ended" in events[r]]
    # all runs are queued before the daemon starts: a wait counts from time zero (daemon starting)
    waits = np.array([events[r]["placed"] - max(events[r]["enqueued"], t_submit) for r in ids])
    overhead = np.array([records[r]["leased"] - events[r]["placed"] for r in done])
    to_op = np.array([records[r]["op_start"] - events[r]["placed"] for r in done])
    launches = np.array([events[r]["placed"] for r in ids]) - t_submit
    per_minute = np.bincount((launches // 60).astype(int))
    # over-commitment: exact per-GPU peak of leased memory, and every ledger sample (leases+promises)
    peak_exact = {
        uuid: max_concurrent([iv for r, iv in zip(done, lease_only) if device_uuid[records[r]["device"]] == uuid])
        for uuid in usable
    }
    peak_sampled = {uuid: max((s["promised_mib"].get(uuid, 0) for s in samples), default=0) for uuid in usable}
    over = [(s["t"], u, s["promised_mib"][u]) for s in samples for u in s["promised_mib"] if s["promised_mib"][u] > usable[u]]
    over += [(None, u, peak_exact[u]) for u in usable if peak_exact[u] > usable[u]]
    sample_frac = np.array([sum(s["promised_mib"].values()) / total_mib for s in samples])
    sample_queued = np.array([s["queued"] > 0 for s in samples])
    bounds = lower_bound_s(runs, args.unit_s, sum(usable.values()))
    return {
        "machine": f"{os.cpu_count()} CPU cores, simulated {len(gpus)} x {gpus[0]['total_mib']} MiB GPUs",
        "runs": len(ids), "succeeded": len(done), "unit_s": args.unit_s,
        "max_concurrent_runs": args.max_concurrent_runs, "reserve_after_seconds": args.reserve_after_s,
        "dequeue_workers": args.dequeue_workers, "algorithms": args.algorithms, "sleep_s_fixed": args.sleep_s,
        "makespan_s": t_end - t_submit,
        **bounds,
        "makespan_over_lower_bound": (t_end - t_submit) / bounds["lower_bound_s"],
        **policy_bounds(runs, args.unit_s, len(gpus), next(iter(usable.values())), args.reserve_after_s,
                        makespan_s=t_end - t_submit, optimum_time_limit_s=args.optimum_s),
        "uptime_load": loads or {},
        "first_placement_s": float(launches.min()),  # daemon start-up: process, code server, first tick
        "sleep_s_total": sum(records[r]["released"] - records[r]["leased"] for r in done),
        "mean_gpu_memory_promised_fraction": float(promised.mean() / total_mib),
        "mean_gpu_memory_promised_fraction_while_runs_queued": float(promised[busy].mean() / total_mib) if busy.any() else None,
        "peak_gpu_memory_promised_fraction": float(promised.max() / total_mib),
        "sampled_mean_fraction": float(sample_frac.mean()) if len(samples) else None,
        "sampled_mean_fraction_while_runs_queued": float(sample_frac[sample_queued].mean()) if sample_queued.any() else None,
        "runs_in_flight_max": int(max_concurrent(flight)),
        "runs_in_flight_mean": float(step_curve(flight, t_submit, t_end)[1].mean()),
        "launches_per_minute": per_minute.tolist(),
        "launches_per_minute_peak": int(per_minute.max()),
        "launches_per_minute_mean": float(len(ids) / (launches.max() / 60)) if launches.max() > 0 else None,
        "queue_wait_s": {"max": float(waits.max()), "median": float(np.median(waits)), "mean": float(waits.mean())},
        "launch_overhead_s": {"median": float(np.median(overhead)), "p90": float(np.percentile(overhead, 90)), "max": float(overhead.max())},
        "placed_to_op_start_s": {"median": float(np.median(to_op)), "max": float(to_op.max())},
        "run_worker_rss_mib_median": float(np.median([records[r]["rss_mib"] for r in done])),
        "run_worker_pss_mib_median": float(np.median([records[r].get("pss_mib", np.nan) for r in done])),
        "run_worker_uss_mib_median": float(np.median([records[r].get("uss_mib", np.nan) for r in done])),
        "run_worker_cpu_s_to_op_start_median": float(np.median([records[r].get("cpu_s_to_op_start", np.nan) for r in done])),
        "run_worker_memory_at_most_workers": memory_summary(list(mem_samples)),
        "usable_mib_per_gpu": next(iter(usable.values())),
        "peak_leased_mib_per_gpu_exact": peak_exact,
        "peak_promised_mib_per_gpu_sampled": peak_sampled,
        "ledger_samples": len(samples),
        "over_committed": over,
        "placements_not_pinned": sum("pinned" not in records[r]["reason"] for r in done),
        "by_algorithm": {a: {"runs": sum(s["algorithm"] == a for s in runs),
                             "need_mib": sorted({s["need_mib"] for s in runs if s["algorithm"] == a}),
                             "sleep_s_mean": float(np.mean([s["cost"] * args.unit_s for s in runs if s["algorithm"] == a] or [0]))}
                         for a in RELATIVE_COST},
        "_curves": {"t": (times - t_submit).tolist(), "promised_fraction": (promised / total_mib).tolist(),
                    "in_flight": step_curve(flight, t_submit, t_end)[1].tolist()},
    }


def plot(report, samples, gpus, t_submit, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curves = report["_curves"]
    minutes = np.array(curves["t"]) / 60
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    ax = axes[0]
    ax.plot(minutes, curves["promised_fraction"], color="k", lw=2, label="all GPUs (exact, from the runs)")
    st = (np.array([s["t"] for s in samples]) - t_submit) / 60
    for g in gpus:
        ax.plot(st, [s["promised_mib"].get(g["uuid"], 0) / g["total_mib"] for s in samples], lw=0.6, alpha=0.6)
    ax.axhline(report["usable_mib_per_gpu"] / gpus[0]["total_mib"], color="r", ls="--", lw=1,
               label="usable (80 GB minus headroom)")
    ax.set_ylabel("GPU memory promised\n(fraction)")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{report['runs']} GPU runs on {len(gpus)} simulated 80 GB GPUs; thin lines: each GPU (ledger samples)")
    ax = axes[1]
    ax.plot(minutes, curves["in_flight"], label="in flight (placed..end)")
    ax.plot(st, [s["queued"] for s in samples], label="queued")
    ax.set_ylabel("runs")
    ax.legend(fontsize=8)
    ax = axes[2]
    per_minute = report["launches_per_minute"]
    ax.bar(np.arange(len(per_minute)) + 0.5, per_minute, width=0.9)
    ax.set_ylabel("runs launched\nper minute")
    ax.set_xlabel("minutes since the runs were submitted")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--gpus", type=int, default=8, help="simulated 80 GB GPUs")
    parser.add_argument("--unit-s", type=float, default=60.0,
                        help="seconds per cost unit (Geneformer at the largest N: 10 units)")
    parser.add_argument("--max-concurrent-runs", type=int, default=256)
    parser.add_argument("--reserve-after-s", type=int, default=60,
                        help="coordinator reserve_after_seconds (repository default 600, scaled down here)")
    parser.add_argument("--dequeue-workers", type=int, default=4,
                        help="launch runs from this many daemon threads (QueuedRunCoordinator "
                             "dequeue_use_threads/dequeue_num_workers); 0: one at a time")
    parser.add_argument("--sleep-s", type=float,
                        help="every run sleeps this long (instead of its cost x --unit-s): a queue whose "
                             "runs all outlast the launch of the last one")
    parser.add_argument("--sample-s", type=float, default=1.0)
    parser.add_argument("--mem-sample-s", type=float, default=10.0,
                        help="period of the run workers' memory samples (PSS, RSS, USS)")
    parser.add_argument("--algorithms", default=",".join(RELATIVE_COST),
                        help="draw runs of these algorithms only (e.g. scvi,pca,random_projection: "
                             "runs small enough that hundreds fit on the GPUs at once)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postgres-url", help="instance storage on PostgreSQL instead of SQLite")
    parser.add_argument("--out", type=Path, default=result_path("bench_scheduler"),
                        help="writes <out>.png and <out>.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DAGSTER_HOME")
    parser.add_argument("--optimum-s", type=float, default=60.0,
                        help="seconds the CP-SAT search for the shortest schedule may take (0: skip it)")
    parser.add_argument("--bounds-only", type=int, metavar="N_SEEDS",
                        help="no Dagster: print the bounds, the shortest schedule found and the replayed plan "
                             "for N_SEEDS seeds from --seed")
    args = parser.parse_args()
    if args.bounds_only:
        print_bounds(args)
        return

    from dagster import DagsterInstance

    runs = draw_runs(args.runs, args.seed, args.algorithms.split(","))
    if args.sleep_s:
        for r in runs:
            r["cost"] = args.sleep_s / args.unit_s
    tmp = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    home, out_dir, lease_dir = tmp / "home", tmp / "records", tmp / "leases"
    out_dir.mkdir()
    gpus = [{"uuid": f"GPU-sim-{i}", "name": "simulated 80GB", "total_mib": 80 * 1024, "free_mib": 80 * 1024}
            for i in range(args.gpus)]
    fake = FakeNvml(gpus, path=tmp / "fake_nvml.json")
    write_instance_yaml(home, postgres_url=args.postgres_url, coordinator={
        "max_concurrent_runs": args.max_concurrent_runs, "dequeue_interval_seconds": 1,
        "reserve_after_seconds": args.reserve_after_s,
        **({"dequeue_use_threads": True, "dequeue_num_workers": args.dequeue_workers} if args.dequeue_workers else {})})
    (tmp / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [{"python_file": {
        "relative_path": str(WORKLOAD), "attribute": "defs", "location_name": "bench",
        "working_directory": str(REPO)}}]}))
    env = {"DAGSTER_HOME": str(home), FAKE_NVML_ENV: str(fake.path), LEASE_DIR_ENV: str(lease_dir),
           "BENCH_SCHEDULER_OUT": str(out_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    os.environ.update(env)  # this process (submission, sampling) and the daemon see the same world
    print(f"{len(runs)} runs drawn from the paper grid; DAGSTER_HOME={home}", flush=True)

    with DagsterInstance.from_config(str(home)) as instance:
        t0 = time.time()
        ids = submit_runs(instance, runs, args.unit_s)  # the whole queue exists before the daemon starts
        print(f"submitted {len(ids)} runs in {time.time() - t0:.1f} s", flush=True)
        sampler = LedgerSampler(lease_dir, instance, args.sample_s, sum(g["total_mib"] for g in gpus))
        loads = {"start": uptime()}
        t_submit = time.time()  # time zero: all runs are queued, the daemon starts
        sampler.start()
        daemon = DaemonProcess(dict(os.environ), tmp / "daemon.log", tmp / "daemon.pid",
                               code=["-w", str(tmp / "workspace.yaml")])
        daemon.start()
        mem_sampler = memory_sampler(lambda: daemon.pid, args.mem_sample_s)
        mem_sampler.start()
        try:
            wait_until_finished(instance, ids, sampler, t_submit, mem_sampler)
        except MemoryError as exc:  # report what was measured up to the stop
            print(f"STOPPED: {exc}; memory at most workers: {memory_summary(mem_sampler.samples)}", flush=True)
            if mem_sampler.samples:
                args.out.with_suffix(".memory.json").write_text(json.dumps(
                    {"stopped": str(exc), "uptime_load": {**loads, "stop": uptime()},
                     "memory_at_most_workers": memory_summary(mem_sampler.samples),
                     "samples": mem_sampler.samples}, indent=1))
            raise
        finally:
            daemon.stop()
        sampler.stop.set()
        mem_sampler.finish()
        sampler.join()
        loads["end"] = uptime()
        events = {r: run_events(instance, r) for r in ids}
    records = {p.stem: json.loads(p.read_text()) for p in out_dir.glob("*.json")}
    report = analyse(runs, ids, records, events, sampler.samples, gpus, t_submit, args,
                     mem_sampler.samples, loads)
    plot(report, sampler.samples, gpus, t_submit, args.out.with_suffix(".png"))
    report.pop("_curves")
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "launches_per_minute"}, indent=1))
    verdict = "NO GPU over-committed" if not report["over_committed"] else f"OVER-COMMITTED: {report['over_committed'][:5]}"
    print(f"{verdict}; {report['succeeded']}/{report['runs']} runs succeeded; "
          f"figure {args.out.with_suffix('.png')}, figures {args.out.with_suffix('.json')}")
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def print_bounds(args) -> None:
    """The makespan bounds, the shortest schedule found and the coordinator's replayed plan for several
    draws of the workload."""
    usable = 80 * 1024 - HEADROOM_MIB
    print(f"{args.runs} runs on {args.gpus} x {usable} usable MiB, unit {args.unit_s} s: seconds; CP-SAT "
          f"search {args.optimum_s:.0f} s a draw ('=': the shortest found is proven optimal)")
    print(f"{'seed':>4} {'area':>5} {'packing':>7} {'overlap':>7} {'shortest':>8} {'plan':>5} {'plan /':>6} "
          f"{'plan /':>8}")
    print(f"{'':>4} {'bound':>5} {'bound':>7} {'bound':>7} {'found':>8} {'':>5} {'bound':>6} {'shortest':>8}")
    to_bound, to_found = [], []
    for seed in range(args.seed, args.seed + args.bounds_only):
        runs = draw_runs(args.runs, seed, args.algorithms.split(","))
        b = {**lower_bound_s(runs, args.unit_s, usable * args.gpus),
             **policy_bounds(runs, args.unit_s, args.gpus, usable, args.reserve_after_s,
                             optimum_time_limit_s=args.optimum_s)}
        found = ratio = ""
        if args.optimum_s:
            to_bound.append(b["plan_replayed_over_optimum_bound"])
            to_found.append(b["plan_replayed_over_shortest_found"])
            found, ratio = f"{'=' if b['optimum_proven'] else ''}{b['shortest_found_s']:.0f}", f"{to_found[-1]:.3f}"
        else:
            to_bound.append(b["plan_replayed_over_best_bound"])
        print(f"{seed:>4} {b['lower_bound_s']:>5.0f} {b['packing_lower_bound_s']:>7.0f} "
              f"{b['overlap_lower_bound_s']:>7.0f} {found:>8} {b['plan_replayed_makespan_s']:>5.0f} "
              f"{to_bound[-1]:>6.2f} {ratio:>8}", flush=True)
    print(f"plan replayed / the best lower bound: mean {sum(to_bound) / len(to_bound):.2f}, max {max(to_bound):.2f}"
          + (f"; / the shortest schedule found: mean {sum(to_found) / len(to_found):.3f}, "
             f"max {max(to_found):.3f}" if to_found else ""))


def uptime() -> str:
    """``uptime``'s load averages (other sessions share this machine's cores)."""
    return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def wait_until_finished(instance, ids, sampler, t0, mem_sampler=None) -> None:
    from dagster._core.storage.dagster_run import FINISHED_STATUSES, RunsFilter

    while True:
        low = mem_sampler.samples[-1] if mem_sampler is not None and mem_sampler.samples else None
        if low is not None and low["available_mib"] < MIN_AVAILABLE_MIB:
            raise MemoryError(f"under {MIN_AVAILABLE_MIB} MiB of memory available with "
                              f"{low['n'].get(RUN_WORKER, 0)} run workers")
        if time.time() - t0 > 120 and not daemon_alive(instance):
            raise RuntimeError("dagster-daemon is not heart-beating: see daemon.log under the DAGSTER_HOME")
        finished = instance.get_runs_count(RunsFilter(run_ids=ids, statuses=list(FINISHED_STATUSES)))
        if finished == len(ids):
            return
        time.sleep(10)
        s = sampler.samples[-1] if sampler.samples else {}
        print(f"  {time.time() - t0:6.0f} s: finished {finished}, queued {s.get('queued')}, in flight "
              f"{s.get('in_flight')}, leases {s.get('leases')}, promises {s.get('promises')}, GPU memory "
              f"promised {sum(s.get('promised_mib', {}).values()) / sampler.total_mib:.0%}", flush=True)


if __name__ == "__main__":
    main()
