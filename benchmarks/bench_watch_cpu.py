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
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]

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


def own_cpu(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
        return times.user + times.system
    except psutil.Error:
        return None


def run_study(tree: Path, study_file: Path, work: Path, label: str) -> dict:
    """One `study run` with ``tree`` as the package; its CPU at the phase boundaries its output marks."""
    home = work / f"home-{label}"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    study = yaml.safe_load(study_file.read_text())
    study["root"] = str(work / f"root-{label}")
    path = work / f"study-{label}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    env = dict(os.environ, DAGSTER_HOME=str(home), PYTHONPATH=str(tree), SCALING_ASSETS_PROGRESS="0")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "scaling_assets.cli", "study", "run", "--study", str(path)],
                            env=env, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    process = psutil.Process(proc.pid)
    marks: dict[str, float] = {}
    last = {"cpu": 0.0}

    def sample():
        while proc.poll() is None:
            cpu = own_cpu(process)
            if cpu is not None:
                last["cpu"] = cpu
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        cpu = own_cpu(process)
        if cpu is not None:
            last["cpu"] = cpu
        if line.startswith("backfill ") and "watch" not in marks:
            marks["watch"], marks["watch_at"] = last["cpu"], time.perf_counter()
        if line.startswith("=== study") and "summary" not in marks:
            marks["summary"], marks["summary_at"] = last["cpu"], time.perf_counter()
    proc.wait()
    sampler.join()
    wall = time.perf_counter() - start
    watch_start = marks.get("watch", 0.0)
    watch_cpu = marks.get("summary", last["cpu"]) - watch_start
    return {"label": label, "exit": proc.returncode, "wall_s": wall, "cpu_s": last["cpu"],
            "startup_cpu_s": watch_start, "watch_cpu_s": watch_cpu,
            "watch_wall_s": marks.get("summary_at", start + wall) - marks.get("watch_at", start),
            "output": "".join(lines)}


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
