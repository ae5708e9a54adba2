"""Where a finished study's step time went: the sum of its runs' step durations by asset, from the Dagster
instance (``get_run_step_stats``), and LMI's share (the ``mi_*`` steps).

    .venv/bin/python benchmarks/tools/step_times.py            # DAGSTER_HOME, else the repository root
    .venv/bin/python benchmarks/tools/step_times.py --home /path/to/dagster_home
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def step_minutes(instance) -> tuple[int, dict[str, float], dict[str, int]]:
    """(runs, minutes by asset name, steps by asset name) over every run of ``instance``."""
    minutes: dict[str, float] = defaultdict(float)
    steps: dict[str, int] = defaultdict(int)
    runs = instance.get_runs()
    for run in runs:
        for stat in instance.get_run_step_stats(run.run_id):
            if stat.start_time and stat.end_time:
                name = stat.step_key.split("__", 1)[-1]  # "cite__mi_pca" -> "mi_pca"
                minutes[name] += (stat.end_time - stat.start_time) / 60
                steps[name] += 1
    return len(runs), minutes, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("DAGSTER_HOME", REPO)))
    args = parser.parse_args()
    os.environ["DAGSTER_HOME"] = str(args.home.resolve())
    from dagster import DagsterInstance

    runs, minutes, steps = step_minutes(DagsterInstance.get())
    total = sum(minutes.values()) or 1.0
    print(f"{runs} runs; {total:.1f} step-minutes")
    for name, value in sorted(minutes.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {value:6.2f} min {steps[name]:5d} steps {100 * value / total:5.1f}%")
    lmi = sum(v for k, v in minutes.items() if k.startswith("mi_"))
    print(f"  LMI (mi_* steps) {lmi:.2f} min = {100 * lmi / total:.0f}%")


if __name__ == "__main__":
    main()
