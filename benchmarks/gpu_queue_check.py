"""The study through the Dagster run queue on a real GPU: ``scaling-assets study run`` of a small GPU study.

    python benchmarks/gpu_queue_check.py --out DIR           # on a GPU machine (a few minutes on one H200)
    python benchmarks/gpu_queue_check.py --out DIR --tiny    # the same path on a CPU machine (~5 min on 2 cores)

``benchmarks/gpu_check.py`` runs the GPU code paths without Dagster; this runs the main path a user runs:
``study run`` with the repository's ``dagster.yaml`` in a fresh ``DAGSTER_HOME`` (the daemon, the
backfills, ``GpuAwareRunCoordinator`` against the machine's real NVML, ``GpuAwareRunLauncher`` forking
each run worker from its preloaded server), on simulated cite and development data with PCA, SCVI and
(not with ``--tiny``) Geneformer. A sampler reads NVML and the lease ledger every 0.5 s, as gpu_check's.

Reported, from the instance and the samples: every run's pin (``scaling_assets/device``) and GPU need,
each step's "GPU step on ..." line (where it really ran), each run worker's NVML peak against its run's
need (a worker found by its pid in ``scaling_assets/run_worker``), the busiest sample (GPU memory used
against the leases and promises then), the study's wall time and exit status, and the MI table's rows.
Writes DIR/gpu_queue_check.json and DIR/study_run.log. Without NVML the coordinator lets GPU runs through
(``cpu_fallback``) and their steps run on the CPU, which is what ``--tiny`` exercises (34-40 s on the
2-core machine; with ``SCALING_ASSETS_FAKE_NVML`` the runs are pinned to the simulated GPU).

On a lent GPU machine (Python 3.12; torch, transformers, scikit-learn, h5py there; no package registry)
carry the wheels ``benchmarks/tools/device_wheels.sh`` downloads (Dagster 1.13.27, scvi-tools, anndata and what
they need beyond the image: 52 wheels, 26 MB) and run ``python3 -m pip install -q --no-index --no-deps
--target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site python3 benchmarks/gpu_queue_check.py --out $OUT``.
With that set, ``--tiny`` ran through in a clean Python 3.12 with the image's packages (48 s on 2 cores,
2026-12-04); it has not run on the GPU machine yet (the loan was paused when this session asked).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import yaml

from gpu_check import Sampler, busiest_sample, inventory, peak_mib_by_pid
from harness import StudyRun, study_env, study_home
from scaling_assets.compute.coordinator import TAG_RUN
from scaling_assets.compute.run_workers import TAG_WORKER
from scaling_assets.gpu.leases import LEASE_DIR_ENV
from scaling_assets.gpu.needs import TAG_DEVICE, TAG_GPU_NEED

STEP_LINE = re.compile(r"GPU step on (\S+):")


def study_yaml(tiny: bool, root: Path) -> dict:
    """A small GPU study: two simulated datasets, PCA and SCVI at three sizes and two qualities (and one
    Geneformer setting a dataset on a GPU)."""
    cells, genes = (1500, 100) if tiny else (6000, 1000)
    grids = {"geneformer": {"sizes": [1000], "qualities": [1.0]}} if not tiny else {}
    return {
        "name": "gpu_queue_check", "root": str(root), "budget": "test" if tiny else "default", "seeds": [42],
        "algorithms": ["pca", "scvi"] + ([] if tiny else ["geneformer"]),
        "split": {"test_cells": 300 if tiny else 1000, "validation_cells": 100 if tiny else 500},
        "sizes": [100, 400] if tiny else [200, 1000, 4000],
        "qualities": [1.0, 0.1],
        "algorithm_grids": grids,
        "lmi": {"epochs": 5 if tiny else 50},
        "datasets": {
            "cite": {"task": "cite", "source": "simulated", "cells": cells, "genes": genes, "seed": 1},
            "development": {"task": "development", "source": "simulated", "cells": cells, "genes": genes, "seed": 4},
        },
    }


def run_rows(home: Path, samples: list[dict]) -> list[dict]:
    """Per finished run: its label, status, pin, need, where its GPU steps ran and its worker's NVML peak."""
    from dagster import DagsterInstance

    peak_by_pid = peak_mib_by_pid(samples)
    rows = []
    with DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs():
            tags = run.tags
            worker = tags.get(TAG_WORKER, "").split()  # "<host> <pid> <start time>"
            pid = worker[1] if len(worker) == 3 else None
            steps = [m.group(1) for e in instance.all_logs(run.run_id)
                     if e.user_message and (m := STEP_LINE.search(e.user_message))]
            rows.append({"run": tags.get(TAG_RUN, run.run_id[:8]), "status": run.status.value,
                         "pinned": tags.get(TAG_DEVICE), "need_mib": int(tags.get(TAG_GPU_NEED, 0)),
                         "steps_on": sorted(set(steps)), "gpu_steps": len(steps), "worker_pid": pid,
                         "nvml_peak_mib": peak_by_pid.get(pid) if pid else None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true", help="CPU-sized study (test budget, no Geneformer)")
    ap.add_argument("--timeout-s", type=float, default=480, help="stop `study run` after this long")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-queue-check-"))
    home, study_file = study_home(work / "home"), work / "study.yaml"  # the repository's run queue, SQLite
    study_file.write_text(yaml.safe_dump(study_yaml(args.tiny, work / "study_runs"), sort_keys=False))
    # children (daemon, code server, run workers) share the ledger the sampler reads; none may take the
    # GPU through JAX, which scvi-tools can import and which would preallocate most of its memory
    env = study_env(home, work, XLA_PYTHON_CLIENT_PREALLOCATE="false", JAX_PLATFORMS="cpu",
                    **{LEASE_DIR_ENV: str(work / "leases")})
    os.environ.update({LEASE_DIR_ENV: env[LEASE_DIR_ENV], "DAGSTER_HOME": str(home)})
    report: dict = {"tiny": args.tiny, "work": str(work), "inventory": inventory(),
                    "study": yaml.safe_load(study_file.read_text())}
    sampler = Sampler()
    sampler.start()
    log_path = args.out / "study_run.log"
    run = StudyRun(study_file, env, work, log_path)
    try:
        report["exit_code"] = run.wait(timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        report["exit_code"] = f"stopped after {args.timeout_s:.0f} s ({run.stop()})"
    report["wall_s"] = round(run.wall_s, 1)
    report["mi_rows"] = None
    sampler.stop.set()
    sampler.join()
    report["runs"] = run_rows(home, sampler.samples)
    report["busiest_sample"] = busiest_sample(sampler.samples)
    report["max_concurrent_leases"] = max((len(s.get("leases", [])) for s in sampler.samples), default=0)
    mi = work / "study_runs" / "results" / "mi_table" / "all" / "table.parquet"
    if mi.exists():
        import pandas as pd

        table = pd.read_parquet(mi)
        report["mi_rows"] = len(table)
        report["mi_by_algorithm"] = table.groupby("algorithm").size().to_dict() if "algorithm" in table else None
    report["study_run_tail"] = [line for _, line in run.lines[-15:]]
    report["samples"] = sampler.samples
    (args.out / "gpu_queue_check.json").write_text(json.dumps(report, indent=1, default=str))
    print_summary(report)


def print_summary(report: dict) -> None:
    print(f"\nstudy run: exit {report['exit_code']} in {report['wall_s']} s; MI rows {report['mi_rows']} "
          f"{report.get('mi_by_algorithm') or ''}")
    print(f"{'run':70s} {'status':8s} {'pinned':8s} {'need':>6s} {'steps on':12s} {'NVML peak':>9s}")
    for r in sorted(report["runs"], key=lambda r: r["run"]):
        print(f"{r['run'][:70]:70s} {r['status'][:8]:8s} {str(r['pinned'])[:8]:8s} {r['need_mib']:>6d} "
              f"{','.join(r['steps_on'])[:12]:12s} {str(r['nvml_peak_mib']):>9s}")
    over = [r for r in report["runs"] if r["nvml_peak_mib"] and r["need_mib"] and r["nvml_peak_mib"] > r["need_mib"]]
    print(f"busiest sample: {report['busiest_sample']}; at most {report['max_concurrent_leases']} leases at once")
    print(f"runs whose worker's NVML peak passed its need: {len(over)} {[r['run'] for r in over]}")
    print("\n".join(report["study_run_tail"]))


if __name__ == "__main__":
    main()
