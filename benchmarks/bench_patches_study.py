"""What the Dagster patches buy a small study: ``study run`` with each set of patches, side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_patches_study.py [--study geneformer|pca]
                                                                    [--variants on,off,-backfill_grouping]

A variant is what ``SCALING_ASSETS_DAGSTER_PATCHES`` gets (``compute/dagster_patches.py``): ``on`` (every
patch, as ``study run`` installs them), ``off`` (Dagster as it is), or ``-<name>``: every patch but that
one. Each variant runs the same study in a fresh storage root and ``DAGSTER_HOME`` holding the
repository's ``dagster.yaml``; the report gives the wall time of the command, the number of runs, the
time no run was queued or running (the study waiting for the backfill daemon: less sensitive to a busy
machine than the wall time), the runs by what they made (their ``scaling_assets/run`` label without the
partition), and whether the MI tables are equal (the MI depends only on the data and the seeds).

- ``pca``: one simulated CITE dataset (500 cells, 40 genes), PCA, 2 sizes x 2 qualities: the settings
  are all requested in one tick, so run grouping cannot differ; the backfill interval does.
- ``geneformer``: the same dataset, Geneformer only (``test`` budget: 4 steps), 2 sizes x 3 qualities:
  each quality's corpora finish in their own run, so the settings are requested quality by quality,
  the case ``backfill_grouping`` is for.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scaling_assets.compute.dagster_patches import PATCHES, PATCHES_ENV  # noqa: E402

CITE = {"task": "cite", "source": "simulated", "cells": 500, "genes": 40, "seed": 1}
STUDIES = {
    "pca": {"algorithms": ["pca"], "sizes": [100, 200], "qualities": [1.0, 0.5]},
    "geneformer": {"algorithms": ["geneformer"], "sizes": [100, 200], "qualities": [1.0, 0.5, 0.25]},
}


def patches_setting(variant: str) -> str:
    if variant.startswith("-"):
        return ",".join(p.name for p in PATCHES if p.name != variant[1:])
    return variant


def run_variant(variant: str, study: str, work: Path) -> dict:
    import pandas as pd
    from dagster import DagsterInstance

    from scaling_assets.compute.run_labels import TAG_RUN
    from scaling_assets.layout import result_paths
    from scaling_assets.study.spec import load_study

    base = work / variant
    home = base / "home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    path = base / "study.yaml"
    path.write_text(yaml.safe_dump({"name": f"bench_{study}", "root": str(base / "root"), "budget": "test",
                                    "seeds": [42], "split": {"validation_cells": 50}, "lmi": {"epochs": 10},
                                    "datasets": {"cite": CITE}, **STUDIES[study]}))
    env = dict(os.environ, DAGSTER_HOME=str(home), SCALING_ASSETS_PROGRESS="0", PYTHONPATH=str(REPO),
               **{PATCHES_ENV: patches_setting(variant)})
    env.pop("DAGSTER_EVENT_BATCH_SIZE", None)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "scaling_assets.cli", "study", "run", "--study", str(path)],
                         env=env, cwd=base, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"variant {variant}: study run failed\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    with DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records()
    labels = [r.dagster_run.tags.get(TAG_RUN, "?") for r in records]
    kinds = Counter(re.sub(r"^(\S+) (\S+=\S+ ?)+: ", r"\1: ", label) for label in labels)
    return {"seconds": seconds, "runs": len(labels), "kinds": kinds, "idle": idle_seconds(records),
            "mi": pd.read_parquet(result_paths(load_study(path))["mi_table"])}


def idle_seconds(records) -> float:
    """Seconds between the first run's creation and the last run's end when no run was queued or
    running: the study waiting for the backfill daemon (or for the command to submit a stage)."""
    spans = sorted((r.create_timestamp.timestamp(), r.end_time) for r in records if r.end_time)
    idle, reached = 0.0, spans[0][0]
    for start, end in spans:
        idle += max(0.0, start - reached)
        reached = max(reached, end)
    return idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", choices=sorted(STUDIES), default="geneformer")
    parser.add_argument("--variants", default="on,-backfill_grouping",
                        help="comma-separated: on, off, -<patch name> (default: %(default)s)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-patches-"))
    try:
        results = {v: run_variant(v, args.study, work) for v in args.variants.split(",")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = next(iter(results.values()))
    print(f"study run of the {args.study} study, by {PATCHES_ENV}")
    for variant, r in results.items():
        same = "same MI table" if r["mi"].equals(first["mi"]) else "MI TABLE DIFFERS"
        kinds = ", ".join(f"{n} x '{k}'" for k, n in sorted(r["kinds"].items(), key=lambda kv: -kv[1]))
        print(f"{variant:24} {r['seconds']:6.0f} s  {r['runs']:3d} runs  {r['idle']:5.0f} s with no run queued or "
              f"running  {same}\n{'':24} {kinds}")


if __name__ == "__main__":
    main()
