"""CPU of the `scaling-assets study run` process itself (not the daemon's, not its runs'), for this checkout
against another (a baseline), on the same small study, run one after the other in this script.

The command starts a daemon and watches the study's backfills to their end; the runs do the work. Its
own CPU is sampled (user + system, its children left out) every 0.2 s, and split in three: before the
first backfill is submitted (imports, the study's definitions, what to submit), while it watches, and the
summary after. The watching share is what issue 42 asked to bring under 5% of one core.

    git archive 4303f90 | tar -x -C /tmp/base        # a baseline checkout, e.g. before the change
    .venv/bin/python benchmarks/bench_watch_cpu.py --baseline /tmp/base
    .venv/bin/python benchmarks/bench_watch_cpu.py --baseline /tmp/base --study my.yaml --rounds 2

Each run gets a fresh storage root and a fresh DAGSTER_HOME holding this checkout's dagster.yaml.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from harness import REPO, StudyRun, study_env, study_home

# Two simulated datasets, two models, 2 x 2 settings each: ~70 partitions in ~10 runs, a few minutes on 2 cores.
SMALL_STUDY = {
    "name": "watch",
    "budget": "test",
    "seeds": [42],
    "algorithms": ["pca", "random_projection"],
    "split": {"validation_cells": 50},
    "sizes": [100, 200],
    "qualities": [1.0, 0.5],
    "lmi": {"epochs": 10},
    "datasets": {
        "cite": {"task": "cite", "source": "simulated", "cells": 500, "genes": 40, "seed": 1},
        "dev": {"task": "development", "source": "simulated", "cells": 500, "genes": 40, "seed": 2},
    },
}


def run_study(tree: Path, study_file: Path, work: Path, label: str) -> dict:
    """One `study run` with ``tree`` as the package; its CPU at the phase boundaries its output marks."""
    home = study_home(work / f"home-{label}")
    study = yaml.safe_load(study_file.read_text())
    study["root"] = str(work / f"root-{label}")
    path = work / f"study-{label}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    env = {**study_env(home, work), "PYTHONPATH": str(tree)}
    run = StudyRun(path, env, tree, work / f"{label}.log")
    process = psutil.Process(run.pid)
    samples: list[tuple[float, float]] = []  # (time, the command's own CPU seconds; its children left out)
    while run.proc.poll() is None:
        try:
            times = process.cpu_times()
            samples.append((time.time(), times.user + times.system))
        except psutil.Error:
            break
        time.sleep(0.2)
    code = run.wait()

    def cpu_at(t: float | None) -> float:
        return max((cpu for at, cpu in samples if t is None or at <= t), default=0.0)

    watch_at, summary_at = run.first(r"^backfill "), run.first(r"^=== study")
    end = samples[-1][0] if samples else time.time()
    return {"label": label, "exit": code, "wall_s": run.wall_s, "cpu_s": cpu_at(None),
            "startup_cpu_s": cpu_at(watch_at), "watch_cpu_s": cpu_at(summary_at) - cpu_at(watch_at),
            "watch_wall_s": (summary_at or end) - (watch_at or run.start), "output": run.output()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout's root (its scaling_assets/)")
    parser.add_argument("--study", type=Path, default=None, help="a study YAML (default: a small built-in one)")
    parser.add_argument("--rounds", type=int, default=1, help="baseline/this pairs, alternating")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-watch-cpu-"))
    study_file = args.study or work / "small.yaml"
    if args.study is None:
        study_file.write_text(yaml.safe_dump(SMALL_STUDY, sort_keys=False))
    results = []
    try:
        for r in range(args.rounds):
            for label, tree in (("baseline", args.baseline.resolve()), ("this", REPO)):
                result = run_study(tree, study_file, work, f"{label}-{r}")
                if result["exit"] != 0:
                    print(result["output"][-3000:])
                results.append(result)
                print(f"{result['label']:>12}: exit {result['exit']}, wall {result['wall_s']:6.1f} s; CLI CPU "
                      f"{result['cpu_s']:5.2f} s = {100 * result['cpu_s'] / result['wall_s']:4.1f}% of a core; "
                      f"before the first backfill {result['startup_cpu_s']:5.2f} s; watching "
                      f"{result['watch_cpu_s']:5.2f} s over {result['watch_wall_s']:5.1f} s = "
                      f"{100 * result['watch_cpu_s'] / result['watch_wall_s']:4.1f}% of a core", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end (shared machines "
          "inflate both the wall time and, less, the CPU time)")


if __name__ == "__main__":
    main()
