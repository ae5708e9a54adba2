"""How much co-located SCVI fits slow each other on one GPU: K processes train at once, for K in --k.

    python benchmarks/investigations/gpu_colocation.py --out DIR --k 1 4 16 32     # on a GPU machine (~2 min on one H200)
    python benchmarks/investigations/gpu_colocation.py --out DIR --k 1 2 --tiny    # the same path on the CPU

The run queue packs runs on a GPU by memory alone (``gpu/placement.py``), so a GPU may hold dozens
of small SCVI fits at once. Whether stacking them on the fullest GPU (best fit, the coordinator's choice
for runs under ``PACK_BELOW_MIB``) or spreading them (the GPU with the most room) is the better policy
depends on how much they share the GPU's compute, which a replay of the plan
(``scaling_assets/gpu/schedule_bounds.py``) cannot know. This measures it: each of K processes fits
``SCVIModel`` (the paper's hyperparameters, models/scvi.py) on the same simulated counts for a fixed
number of epochs (no early stopping, so every fit takes the same steps), all starting together;
reported per K: the median and slowest ms per gradient step, the aggregate steps a second, and the
slowdown against K = 1. Each process uses one CPU thread, so K past
the machine's cores measures the CPU too (the report says how many cores there were).
Writes DIR/gpu_colocation.json. On a lent H200, carry the wheels of ``benchmarks/tools/device_wheels.sh``.
Ran here only with ``--tiny`` on the CPU (K = 1, 2: 74-80 ms a step, x1.12-1.18 at K = 2 on 2 cores);
the GPU figures are for the next session lent a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def child(data: Path, epochs: int, device: str, barrier: Path) -> dict:
    """One fixed-length SCVI fit, started when ``barrier``/go exists so that the K fits overlap."""
    import scipy.sparse as sp
    import scvi  # noqa: F401  (imported by the fit; here, before the clock)

    from scaling_assets.data.counts import InMemoryCounts
    from scaling_assets.models import budget as budgets
    from scaling_assets.models.scvi import SCVIModel

    # a cap below the 1e7/N rule and a patience longer than the fit: exactly `epochs` epochs
    budgets.BUDGETS["colocation"] = budgets.Budget(
        "colocation", budgets.ScviBudget(max_epochs_cap=epochs, early_stopping_patience=10 * epochs),
        budgets.BUDGETS["test"].geneformer)
    X = sp.load_npz(data)
    genes = [f"g{i}" for i in range(X.shape[1])]
    model = SCVIModel(genes, budget="colocation", seed=0, device=device)
    if device.startswith("cuda"):
        import torch

        torch.zeros(1, device=device)  # CUDA context before the clock starts
    (barrier / f"ready-{os.getpid()}").touch()
    while not (barrier / "go").exists():
        time.sleep(0.01)
    begin = time.time()
    report = model.fit(InMemoryCounts(X, var_names=genes))
    return {"steps": report.steps, "epochs": report.epochs, "fit_s": report.wall_time_s, "begin": begin,
            "end": time.time(), "ms_per_step": 1000 * report.wall_time_s / max(1, report.steps), "pid": os.getpid()}


def run_k(k: int, data: Path, epochs: int, device: str, out: Path) -> dict:
    """K children started together (once all have imported and made their CUDA context); their results
    and the span from the common start to the last fit's end."""
    barrier = out / f"barrier{k}"
    barrier.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    procs = []
    for i in range(k):
        result = out / f"k{k}_{i}.json"
        procs.append((result, subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps({"data": str(data), "epochs": epochs,
                                                              "device": device, "barrier": str(barrier)}),
             "--result", str(result)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    # all ready, or ready but for those that died first (their error is reported below)
    while len(list(barrier.glob("ready-*"))) + sum(p.poll() is not None for _, p in procs) < k:
        time.sleep(0.05)
    start = time.time()
    (barrier / "go").touch()
    results, errors = [], []
    for result, p in procs:
        _, err = p.communicate()
        if p.returncode == 0:
            results.append(json.loads(result.read_text()))
        else:
            errors.append(err.decode()[-500:])
    wall = max((r["end"] for r in results), default=start) - start
    ms = [r["ms_per_step"] for r in results]
    steps = sum(r["steps"] for r in results)
    return {"k": k, "done": len(results), "errors": errors, "span_s": round(wall, 2),
            "median_ms_per_step": round(statistics.median(ms), 2) if ms else None,
            "max_ms_per_step": round(max(ms), 2) if ms else None,
            "steps_per_s": round(steps / wall, 1) if wall > 0 else None, "fits": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--cells", type=int, default=6400)
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--tiny", action="store_true", help="CPU-sized: 500 cells x 100 genes, 2 epochs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        job = json.loads(args.child)
        args.result.write_text(json.dumps(child(Path(job["data"]), job["epochs"], job["device"], Path(job["barrier"]))))
        return
    if args.out is None:
        ap.error("--out is required")
    if args.tiny:
        args.cells, args.genes, args.epochs = 500, 100, 2
    import scipy.sparse as sp
    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    # negative binomial counts of a typical depth; the step time does not depend on what they encode
    mean = rng.lognormal(-1.0, 1.5, size=args.genes)
    X = sp.csr_matrix(rng.negative_binomial(2, 2 / (2 + mean), size=(args.cells, args.genes)).astype(np.float32))
    report = {"device": torch.cuda.get_device_name(0) if device != "cpu" else "cpu", "cpu_cores": os.cpu_count(),
              "torch": torch.__version__, "cells": args.cells, "genes": args.genes, "epochs": args.epochs,
              "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "counts.npz"
        sp.save_npz(data, X)
        for k in args.k:
            row = run_k(k, data, args.epochs, device, Path(tmp))
            report["runs"].append(row)
            solo = report["runs"][0]["median_ms_per_step"]
            slow = row["median_ms_per_step"] / solo if solo and row["median_ms_per_step"] else None
            print(f"K={k:3d}: {row['done']}/{k} fits, median {row['median_ms_per_step']} ms/step "
                  f"(slowest {row['max_ms_per_step']}), {row['steps_per_s']} steps/s in all, "
                  f"slowdown x{slow:.2f}" if slow else f"K={k}: {row['errors'][:1]}", flush=True)
            (args.out / "gpu_colocation.json").write_text(json.dumps(report, indent=1))
    print(f"{report['device']}, {report['cpu_cores']} CPU cores, {args.cells} cells x {args.genes} genes, "
          f"{args.epochs} epochs a fit")


if __name__ == "__main__":
    main()
