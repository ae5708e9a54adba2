"""Wall time and peak memory of a whole study: the in-process path (`study run --serial`) against the
main job (`study run`: an asset backfill executed by the daemon, the run queue and the launcher), whose
run workers are forked from a server that has imported torch, scvi-tools, ... once (`queued`), or, as
Dagster's DefaultRunLauncher does, spawned afresh by the code server (`queued-spawn`,
launcher config `fork_workers: false`).

Each mode runs on a fresh storage root and a fresh DAGSTER_HOME holding the repo's dagster.yaml. While
it runs, every process of the command's tree (the CLI, the daemon, code servers, run workers) is
sampled every 0.5 s; the report gives the wall time, the largest RSS any one process reached, and the
most run workers alive at once.

    .venv/bin/python benchmarks/bench_study_execution.py                   # default study: serial, queued
    .venv/bin/python benchmarks/bench_study_execution.py --modes serial,queued,queued-spawn
    .venv/bin/python benchmarks/bench_study_execution.py --study my.yaml --modes queued
    .venv/bin/python benchmarks/bench_study_execution.py --max-cpu-runs 3   # try another concurrency
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]


def run_mode(mode: str, study: str, work: Path, max_cpu_runs: int | None, threads: int | None) -> dict:
    home = work / f"home-{mode}"
    home.mkdir(parents=True)
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    coordinator = config["run_coordinator"]["config"]
    if max_cpu_runs:
        coordinator["max_cpu_runs"] = max_cpu_runs
    if threads:
        coordinator["threads_per_run"] = threads
    if mode == "queued-spawn":  # Dagster's own way: the code server spawns a fresh interpreter per run
        config["run_launcher"]["config"] = {"fork_workers": False}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, DAGSTER_HOME=str(home), SCALING_ASSETS_HOME=str(work / mode), SCALING_ASSETS_PROGRESS="0")
    cmd = [sys.executable, "-m", "scaling_assets.cli", "study", "run", "--study", study]
    if mode == "serial":
        cmd.append("--serial")
    (work / mode).mkdir()
    log = open(work / f"{mode}.log", "w")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=work / mode, stdout=log, stderr=subprocess.STDOUT)
    peak: dict[int, tuple[int, str]] = {}
    cpu: dict[int, float] = {}  # last CPU seconds seen per process: where the cores went
    role: dict[int, str] = {}  # named at first sight (an exiting process has no command line)
    most_workers = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        for p in tree:
            try:
                if p.pid not in role:
                    parent = p.parent()
                    role[p.pid] = _describe(" ".join(p.cmdline()), " ".join(parent.cmdline()) if parent else "")
                rss, times = p.memory_info().rss, p.cpu_times()
            except psutil.Error:
                continue
            cpu[p.pid] = times.user + times.system
            if rss > peak.get(p.pid, (0, ""))[0]:
                peak[p.pid] = (rss, role[p.pid])
        most_workers = max(most_workers, sum(role.get(p.pid) == WORKER and p.is_running() for p in tree))
        time.sleep(0.5)
    wall = time.perf_counter() - start
    log.close()
    rss, largest = max(peak.values(), default=(0, ""))
    cpu_by_role: dict[str, float] = {}
    for pid, seconds in cpu.items():
        cpu_by_role[role[pid]] = cpu_by_role.get(role[pid], 0.0) + seconds
    return {"cpu_by_role": cpu_by_role, "processes": len(cpu), "mode": mode, "exit": proc.returncode, "wall_s": wall, "peak_rss_gb": rss / 1e9,
            "largest": largest, "most_run_workers": most_workers, "log": work / f"{mode}.log"}


WORKER = "a run worker"


def _describe(cmdline: str, parent: str) -> str:
    # the launcher forks each run's worker from its forkserver (compute/run_workers.py); with
    # fork_workers: false the code server spawns it (multiprocessing.spawn)
    if "multiprocessing.forkserver" in cmdline:
        return WORKER if "multiprocessing.forkserver" in parent else "the forkserver (imports)"
    for marker, name in (("--serial", "the CLI (all steps in-process)"), ("multiprocessing.spawn", WORKER),
                         ("execute_run", WORKER), ("daemon", "the daemon"), ("grpc", "a code server"),
                         ("study run", "the CLI")):
        if marker in cmdline:
            return name
    return cmdline[:60]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="default")
    parser.add_argument("--modes", default="serial,queued")
    parser.add_argument("--max-cpu-runs", type=int, default=None)
    parser.add_argument("--threads-per-run", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the study outputs and logs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-study-"))
    results = [run_mode(m, args.study, work, args.max_cpu_runs, args.threads_per_run) for m in args.modes.split(",")]
    print(f"study {args.study!r} on {psutil.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable)")
    print(f"{'mode':<8} {'exit':>4} {'wall':>9} {'peak RSS (one process)':>24}  {'largest process':<30} {'run workers at once':>20}")
    for r in results:
        print(f"{r['mode']:<8} {r['exit']:>4} {r['wall_s'] / 60:>7.1f} m {r['peak_rss_gb']:>21.2f} GB  "
              f"{r['largest']:<30} {r['most_run_workers']:>20}")
    for r in results[1:]:
        print(f"speed-up {results[0]['mode']} -> {r['mode']}: {results[0]['wall_s'] / r['wall_s']:.2f}x")
    for r in results:
        roles = ", ".join(f"{role} {s:.0f} s" for role, s in sorted(r["cpu_by_role"].items(), key=lambda kv: -kv[1]))
        print(f"{r['mode']} CPU time by process ({r['processes']} processes, sampled every 0.5 s): {roles}")
    for r in results:
        print(f"log: {r['log']}")
    if not args.keep:
        for r in results:
            shutil.rmtree(work / r["mode"], ignore_errors=True)


if __name__ == "__main__":
    main()
