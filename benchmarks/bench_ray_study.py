"""Wall time of a small study through `scaling-assets study run` (run queue, daemon, asset backfill)
with the local launcher (one subprocess per run) vs the Ray launcher on a local Ray cluster (a head
with no CPUs for runs + one node with this machine's cores and one logical GPU). The coordinator is
the repository's in both (same concurrency, same threads per run): only the launcher differs.
Also checks that both give the same MI table.

    pip install -e '.[ray]' && python benchmarks/bench_ray_study.py
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from harness import StudyRun, study_env, study_home

STUDY = {
    "budget": "test",
    "seeds": [42],
    "algorithms": ["pca", "random_projection", "scvi"],
    "split": {"validation_cells": 50},
    "sizes": [100, 200],
    "qualities": [1.0, 0.5],
    "lmi": {"epochs": 10},
    "datasets": {"cite": {"task": "cite", "source": "simulated", "cells": 500, "genes": 30, "seed": 1}},
}


def study_run(tmp: Path, name: str, launcher: dict | None) -> tuple[float, pd.DataFrame, str]:
    """Run the study in a fresh DAGSTER_HOME whose launcher is ``launcher`` (None: the repository's)."""
    home, root = study_home(tmp / f"{name}_home", launcher=launcher), tmp / name
    study = tmp / f"{name}.yaml"
    study.write_text(yaml.safe_dump({"name": name, "root": str(root), **STUDY}))
    run = StudyRun(study, study_env(home, tmp, SCALING_ASSETS_LEASE_DIR=str(tmp / "leases")), tmp,
                   tmp / f"{name}.log")
    if run.wait(timeout=1800) != 0:
        raise SystemExit(f"{name}: study run failed\n{run.output()[-6000:]}")
    mi = pd.read_parquet(root / "results" / "mi_table" / "all" / "table.parquet")
    return run.wall_s, mi, run.output()


def main() -> None:
    from scaling_assets.compute.ray_local import start_local_cluster, stop_local_cluster

    cores = len(os.sched_getaffinity(0))
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-study-"))
    local_s, local_mi, _ = study_run(tmp, "local", None)
    cluster, url, _ = start_local_cluster(head_cpus=0, nodes=({"num_cpus": cores, "num_gpus": 1},))
    try:
        ray_s, ray_mi, out = study_run(tmp, "ray", {
            "module": "scaling_assets.compute.ray_launcher", "class": "StudyRayRunLauncher",
            "config": {"ray": {"address": url, "env_vars": ["SCALING_ASSETS_STUDY", "SCALING_ASSETS_LEASE_DIR",
                                                            "PYTHONPATH"]},
                       "gpu_memory_mib": 16000, "cpus_per_run": 1}})
    finally:
        stop_local_cluster(cluster)
    shutil.rmtree(tmp, ignore_errors=True)
    columns = ["dataset", "algorithm", "cells", "quality", "signal", "mi_bits"]
    key = columns[:-1]
    same = local_mi[columns].sort_values(key).reset_index(drop=True).equals(
        ray_mi[columns].sort_values(key).reset_index(drop=True))
    models = len(local_mi[["algorithm", "cells", "quality"]].drop_duplicates())
    print(f"small study: {models} models (PCA, random projection, SCVI x 2 sizes x 2 qualities; 500 cells x 30 "
          f"genes), {cores} cores, `scaling-assets study run`")
    print(f"{'local launcher':15s} wall {local_s:6.1f} s")
    print(f"{'Ray launcher':15s} wall {ray_s:6.1f} s   ({ray_s / local_s:.2f}x local)")
    print(f"MI tables identical: {same} ({len(local_mi)} rows)")


if __name__ == "__main__":
    main()
