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
import tempfile
from pathlib import Path

import psutil

from harness import RUN_WORKER, ProcessSampler, StudyRun, study_env, study_home


def run_mode(mode: str, study: str, work: Path, max_cpu_runs: int | None, threads: int | None) -> dict:
    coordinator = {key: value for key, value in (("max_cpu_runs", max_cpu_runs), ("threads_per_run", threads))
                   if value}
    # queued-spawn: Dagster's own way, the code server spawns a fresh interpreter per run
    home = study_home(work / f"home-{mode}", coordinator=coordinator,
                      launcher_config={"fork_workers": False} if mode == "queued-spawn" else None)
    (work / mode).mkdir()
    run = StudyRun(study, study_env(home, work / mode), work / mode, work / f"{mode}.log",
                   ["--serial"] if mode == "serial" else [])
    sampler = ProcessSampler(lambda: [run.pid], 0.5)
    sampler.start()
    code = run.wait()
    wall = run.wall_s
    sampler.finish()
    rss, largest = sampler.largest()
    return {"cpu_by_role": sampler.cpu_by_role(), "processes": len(sampler.cpu), "mode": mode, "exit": code,
            "wall_s": wall, "peak_rss_gb": rss / 1e9, "largest": largest,
            "most_run_workers": sampler.most_at_once(RUN_WORKER), "log": work / f"{mode}.log"}


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
