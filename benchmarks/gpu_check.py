"""The GPU paths on a real GPU: NVML, device leases, SCVI and Geneformer on CUDA, and SCVI's size law.

    python benchmarks/gpu_check.py --out DIR                 # on a GPU machine (~5 min on one H200)
    python benchmarks/gpu_check.py --out DIR --tiny          # the same code paths on a CPU machine

1. Inventory: the project's NVML backend (``gpu/nvml.py``) against the machine's GPUs, beside torch's view.
2. SCVI, one child process per (task, quality, size), as a study's setting run does it: ``gpu_step`` with
   ``needs.py``'s estimate takes a lease in the real ledger against real NVML; SCVI (``models/scvi.py``,
   the ``paper`` budget: DESIGN §5's epoch rule and early stopping, no cap) trains on the granted device
   and embeds the held-out cells; each signal's MI is estimated by the study's LMI (``fast``, 100 epochs)
   under a lease of its own. Up to ``--concurrency`` children share the GPUs (longest first).
   A sampler reads NVML every 0.5 s: memory used, each process's memory, and the ledger's promises, so
   the estimates are checked against what the processes really held and no GPU may be over-committed.
3. Geneformer: one fit of ``--geneformer-steps`` optimiser steps of 64 cells and one embedding on CUDA
   (``models/geneformer.py``), under a lease of its estimate: steps a second and peak memory.
4. Laws: SCVI's size law (reference rules) per (task, signal, quality) and the noise law per
   (task, signal, size), printed with their verdicts (``bench_simulator_size_effect.report``).

Writes DIR/gpu_check.json (every row and sample) and prints the tables. Past ``--deadline-s`` no child is
started and running ones are stopped; what finished is reported. Without NVML (a CPU machine) the
leases say "cpu" and everything runs on the CPU: ``--tiny`` makes that a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("SCALING_ASSETS_PROGRESS", "0")

MIB = 1024 * 1024
LMI_EPOCHS = 100  # the default study's LMI (fast preset)


# ----------------------------------------------------------------------------------------- children

def _peak_memory(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {}
    return {"torch_peak_allocated_mib": torch.cuda.max_memory_allocated(device) // MIB,
            "torch_peak_reserved_mib": torch.cuda.max_memory_reserved(device) // MIB}


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.zeros(1, device=device)  # the caching allocator of a device exists once it has allocated
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def child_scvi(job: dict, data_path: Path) -> dict:
    """One setting: SCVI fit + embed under one lease, then each signal's MI under another."""
    from bench_simulator_size_effect import mi_rows, thinned_test_set
    from scaling_assets.data.counts import InMemoryCounts
    from scaling_assets.data.thinning import thin_counts
    from scaling_assets.gpu.leases import gpu_step
    from scaling_assets.gpu.needs import asset_need_mib
    from scaling_assets.models.scvi import SCVIModel

    with open(data_path, "rb") as f:
        d = pickle.load(f)
    task, q, n, seed = job["task"], job["quality"], job["cells"], job["seed"]
    X, genes, test, pool = d["X"], d["genes"], d["test"], d["pool"]
    test_src, test_obsm = thinned_test_set(X, d["obs"], d["obsm"], genes, test, q, seed)
    train = pool[:n]
    train_src = InMemoryCounts(thin_counts(X[train], train, q, seed), var_names=genes)
    out = dict(job, pid=os.getpid(), log=[])
    need = asset_need_mib("model_scvi", len(genes))
    with gpu_step({}, need, out["log"].append, run_id=f"{job['id']}-model") as place:
        _reset_peak(place.device)
        model = SCVIModel(genes, budget=job["budget"], seed=seed, device=place.device)
        with place.reporting(every_s=2.0):
            report = model.fit(train_src)
            emb = model.embed(test_src)
        out.update(device=place.device, scvi_need_mib=need, epochs=report.epochs, steps=report.steps,
                   stop=report.stop_reason, fit_s=round(report.wall_time_s, 2),
                   scvi_peak=_peak_memory(place.device))
    need = asset_need_mib("mi_scvi", len(genes))
    start = time.perf_counter()
    with gpu_step({}, need, out["log"].append, run_id=f"{job['id']}-mi") as place:
        _reset_peak(place.device)
        rows = mi_rows(task, test_src, test_obsm, emb, seed=seed, quality=q, cells=n, umis=q * d["umis_full"],
                       epochs=LMI_EPOCHS, device=place.device)
        out.update(lmi_need_mib=need, lmi_s=round(time.perf_counter() - start, 2), lmi_peak=_peak_memory(place.device))
    out["rows"] = rows
    return out


def child_geneformer(job: dict, data_path: Path) -> dict:
    """One Geneformer fit of job['steps'] steps and one embedding, under a lease of its estimate."""
    from scaling_assets.data.corpus import Corpus, TokenDictionary, build_corpus, gene_nonzero_medians
    from scaling_assets.data.counts import InMemoryCounts
    from scaling_assets.gpu.leases import gpu_step
    from scaling_assets.gpu.needs import asset_need_mib
    from scaling_assets.models import budget as budgets
    from scaling_assets.models.geneformer import GeneformerModel

    steps = job["steps"]
    budgets.BUDGETS["gpu_check"] = budgets.Budget(
        "gpu_check", budgets.ScviBudget(None),
        budgets.GeneformerBudget(max_steps=steps, warmup_steps=max(1, steps // 10), eval_steps=max(1, steps // 4)))
    with open(data_path, "rb") as f:
        d = pickle.load(f)
    X, genes, pool, test = d["X"], d["genes"], d["pool"], d["test"]
    src = InMemoryCounts(X, var_names=genes)
    train_rows, val_rows = pool[:job["cells"]], pool[job["cells"]:job["cells"] + 500]
    out = dict(job, pid=os.getpid(), log=[])
    with tempfile.TemporaryDirectory() as tmp:
        medians = gene_nonzero_medians(src, rows=train_rows)
        dictionary = TokenDictionary(genes)
        tok = time.perf_counter()
        summary = build_corpus(src, Path(tmp) / "train", medians, dictionary, rows=np.sort(train_rows))
        build_corpus(src, Path(tmp) / "val", medians, dictionary, rows=np.sort(val_rows))
        build_corpus(src, Path(tmp) / "test", medians, dictionary, rows=np.sort(test))
        out.update(tokenize_s=round(time.perf_counter() - tok, 2), mean_tokens=summary["mean_length"])
        need = asset_need_mib("model_geneformer", len(genes))
        with gpu_step({}, need, out["log"].append, run_id=f"{job['id']}-model") as place:
            _reset_peak(place.device)
            model = GeneformerModel(genes, budget="gpu_check", seed=job["seed"], device=place.device)
            with place.reporting(every_s=2.0):
                report = model.fit(Corpus(Path(tmp) / "train"), Corpus(Path(tmp) / "val"))
            out.update(device=place.device, need_mib=need, steps=report.steps, stop=report.stop_reason,
                       fit_s=round(report.wall_time_s, 2), train_loss=report.train_loss,
                       validation_loss=report.validation_loss, peak=_peak_memory(place.device))
        need = asset_need_mib("embeddings_geneformer", len(genes))
        with gpu_step({}, need, out["log"].append, run_id=f"{job['id']}-embed") as place:
            _reset_peak(place.device)
            model.device = place.device
            start = time.perf_counter()
            emb = model.embed(Corpus(Path(tmp) / "test"))
            out.update(embed_need_mib=need, embed_cells=len(emb), embed_s=round(time.perf_counter() - start, 2),
                       embed_peak=_peak_memory(place.device), embedding_finite=bool(np.isfinite(emb).all()))
    return out


# ----------------------------------------------------------------------------------------- parent

def inventory() -> dict:
    import torch

    from scaling_assets.gpu import nvml

    gpus = nvml.list_gpus()
    info = {"nvml": [g.__dict__ for g in gpus], "nvml_error": getattr(nvml.get_backend(), "init_error", None),
            "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
            "torch_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    for g in gpus:
        print(f"NVML: {g.device} {g.name} total {g.total_mib} MiB, free {g.free_mib}, used {g.used_mib}, healthy {g.healthy}")
    if not gpus:
        print(f"NVML: no GPU ({info['nvml_error']}): leases will say cpu")
    print(f"torch {torch.__version__}: cuda {torch.cuda.is_available()} {info['torch_devices']}")
    return info


class Sampler(threading.Thread):
    """NVML and the lease ledger every ``every_s``: used memory, per-process memory, promises."""

    def __init__(self, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.every_s, self.samples, self.stop = every_s, [], threading.Event()

    def run(self) -> None:
        from scaling_assets.gpu import nvml
        from scaling_assets.gpu.leases import Ledger

        ledger, t0 = Ledger(), time.monotonic()
        while not self.stop.wait(self.every_s):
            try:
                gpus = nvml.list_gpus()
                usage = nvml.process_usage_mib()
                records = ledger.records()
            except Exception as exc:  # a sample lost is not a result lost
                self.samples.append({"t": time.monotonic() - t0, "error": repr(exc)})
                continue
            self.samples.append({
                "t": round(time.monotonic() - t0, 2),
                "used_mib": {g.uuid: g.used_mib for g in gpus}, "total_mib": {g.uuid: g.total_mib for g in gpus},
                "procs_mib": {u: {str(p): m for p, m in procs.items()} for u, procs in usage.items()},
                "leases": [{"gpu": r.gpu_uuid, "need_mib": r.need_mib, "kind": r.kind, "run_id": r.run_id}
                           for r in records]})


def simulate_task(task: str, args, path: Path) -> dict:
    from bench_simulator_size_effect import simulate_in_memory

    start = time.perf_counter()
    X, obs, obsm = simulate_in_memory(task, args.test_cells + max(args.sizes), args.genes, args.data_seed)
    order = np.random.default_rng(args.seed).permutation(X.shape[0])
    test, pool = order[:args.test_cells], order[args.test_cells:]
    genes = np.array([f"G{j}" for j in range(X.shape[1])], dtype=object)
    with open(path, "wb") as f:
        pickle.dump({"X": X, "obs": obs, "obsm": obsm, "genes": genes, "test": test, "pool": pool,
                     "umis_full": float(X[test].sum()) / len(test)}, f, protocol=pickle.HIGHEST_PROTOCOL)
    print(f"simulated {task}: {X.shape[0]} cells x {X.shape[1]} genes in {time.perf_counter() - start:.1f} s", flush=True)
    return {"task": task, "cells": int(X.shape[0])}


def run_jobs(jobs: list[dict], args, tmp: Path) -> list[dict]:
    """Children, at most ``--concurrency`` at once, in the given order; stopped at the deadline."""
    results, running, queue = [], [], list(jobs)
    t0 = time.monotonic()
    while queue or running:
        elapsed = time.monotonic() - t0
        if elapsed > args.deadline_s:
            for p, job, _ in running:
                p.kill()
                results.append(dict(job, error=f"stopped at the {args.deadline_s:.0f}-s deadline"))
            results += [dict(job, error="not started (deadline)") for job in queue]
            break
        while queue and len(running) < args.concurrency:
            job = queue.pop(0)
            res = tmp / f"{job['id']}.json"
            cmd = [sys.executable, __file__, "--child", json.dumps(job), "--data", str(tmp / f"{job['task']}.pkl"),
                   "--result", str(res)]
            log = open(tmp / f"{job['id']}.log", "w")
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), job, time.monotonic()))
        for entry in list(running):
            p, job, started = entry
            if p.poll() is None:
                continue
            running.remove(entry)
            res = tmp / f"{job['id']}.json"
            if p.returncode == 0 and res.exists():
                r = json.loads(res.read_text())
                r["wall_s"] = round(time.monotonic() - started, 1)
                results.append(r)
                print(f"[{time.monotonic() - t0:5.0f} s] {job['id']}: {r.get('device')} "
                      f"steps {r.get('steps')} fit {r.get('fit_s')} s, wall {r['wall_s']} s", flush=True)
            else:
                tail = (tmp / f"{job['id']}.log").read_text()[-1500:]
                results.append(dict(job, error=f"exit {p.returncode}: {tail}"))
                print(f"[{time.monotonic() - t0:5.0f} s] {job['id']}: FAILED exit {p.returncode}\n{tail}", flush=True)
        time.sleep(0.2)
    return results


def peak_mib_by_pid(samples: list[dict]) -> dict[str, int]:
    """Each process's largest NVML memory over the samples."""
    peaks: dict[str, int] = {}
    for s in samples:
        for procs in s.get("procs_mib", {}).values():
            for pid, mib in procs.items():
                peaks[pid] = max(peaks.get(pid, 0), mib)
    return peaks


def busiest_sample(samples: list[dict]) -> dict:
    """The sample with the most GPU memory in use, with the leases and promises the ledger held then."""
    worst = {"used_mib": 0}
    for s in samples:
        for uuid, used in s.get("used_mib", {}).items():
            if used > worst["used_mib"]:
                mine = [x for x in s["leases"] if x["gpu"] == uuid]
                worst = {"t": s["t"], "gpu": uuid, "used_mib": used, "total_mib": s["total_mib"][uuid],
                         "leases": len(mine), "promised_mib": sum(x["need_mib"] for x in mine)}
    return worst


def memory_check(results: list[dict], samples: list[dict]) -> dict:
    """Each child's peak NVML memory against its lease's estimate; the GPUs' peak used against total
    and against what the ledger promised at that moment."""
    peak_by_pid = peak_mib_by_pid(samples)
    rows = []
    for r in results:
        if "error" in r or not r.get("device", "cpu").startswith("cuda"):
            continue
        need = r.get("scvi_need_mib", r.get("need_mib"))
        peak = r.get("scvi_peak", r.get("peak", {}))
        rows.append({"id": r["id"], "need_mib": need, "nvml_peak_mib": peak_by_pid.get(str(r["pid"])),
                     "torch_peak_reserved_mib": peak.get("torch_peak_reserved_mib"),
                     "lmi_need_mib": r.get("lmi_need_mib"),
                     "lmi_torch_peak_reserved_mib": r.get("lmi_peak", {}).get("torch_peak_reserved_mib")})
    over = [x for x in rows if x["nvml_peak_mib"] and x["nvml_peak_mib"] > x["need_mib"]]
    return {"per_child": rows, "children_over_estimate": over, "busiest_sample": busiest_sample(samples),
            "max_concurrent_leases": max((len(s.get("leases", [])) for s in samples), default=0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for gpu_check.json")
    ap.add_argument("--tasks", nargs="+", default=["cite", "development"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600])
    ap.add_argument("--qualities", type=float, nargs="+", default=[1.0, 0.3, 0.1, 0.03])
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--test-cells", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data-seed", type=int, default=1)
    ap.add_argument("--budget", default="paper", help="SCVI's training budget (models/budget.py)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--geneformer-steps", type=int, default=200, help="0: no Geneformer fit")
    ap.add_argument("--geneformer-cells", type=int, default=4000)
    ap.add_argument("--deadline-s", type=float, default=330)
    ap.add_argument("--tiny", action="store_true", help="CPU-sized: 2 sizes, 2 qualities, test budget")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        job = json.loads(args.child)
        fn = child_geneformer if job["kind"] == "geneformer" else child_scvi
        out = fn(job, args.data)
        args.result.write_text(json.dumps(out, default=str))
        return
    if args.out is None:
        ap.error("--out is required")
    if args.tiny:
        args.tasks, args.sizes, args.qualities, args.test_cells = ["cite"], [100, 400], [1.0, 0.1], 300
        args.budget, args.geneformer_steps, args.geneformer_cells, args.concurrency = "test", 2, 64, 2
    args.out.mkdir(parents=True, exist_ok=True)
    # Children share the machine's cores; none may take the GPU through JAX (which scvi-tools can import,
    # and which would preallocate most of the GPU's memory).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // args.concurrency)))
    os.environ.update(XLA_PYTHON_CLIENT_PREALLOCATE="false", JAX_PLATFORMS="cpu")
    start = time.perf_counter()
    report: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["SCALING_ASSETS_LEASE_DIR"] = str(tmp / "leases")  # children inherit the ledger
        report["inventory"] = inventory()
        report["data"] = [simulate_task(t, args, tmp / f"{t}.pkl") for t in args.tasks]
        jobs = []
        if args.geneformer_steps:
            jobs.append({"id": "geneformer", "kind": "geneformer", "task": args.tasks[0], "seed": args.seed,
                         "steps": args.geneformer_steps, "cells": args.geneformer_cells})
        jobs += [{"id": f"scvi-{t}-q{q:g}-n{n}", "kind": "scvi", "task": t, "quality": q, "cells": n,
                  "seed": args.seed, "budget": args.budget}
                 for n in sorted(args.sizes, reverse=True) for t in args.tasks for q in args.qualities]
        sampler = Sampler()
        sampler.start()
        results = run_jobs(jobs, args, tmp)
        sampler.stop.set()
        sampler.join()
    report.update(results=results, samples=sampler.samples, memory=memory_check(results, sampler.samples),
                  wall_s=round(time.perf_counter() - start, 1))
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print_summary(report, args)


def print_summary(report: dict, args) -> None:
    import pandas as pd
    from bench_simulator_size_effect import report as law_report

    done = [r for r in report["results"] if "error" not in r]
    failed = [r for r in report["results"] if "error" in r]
    print(f"\n{len(done)} children finished, {len(failed)} did not, in {report['wall_s']} s")
    for r in failed:
        print(f"  {r['id']}: {r['error'][:300]}")
    scvi = [r for r in done if r["kind"] == "scvi"]
    if scvi:
        cols = ["task", "quality", "cells", "device", "epochs", "steps", "stop", "fit_s", "lmi_s", "wall_s"]
        print(pd.DataFrame(scvi)[cols].sort_values(["task", "quality", "cells"]).to_string(index=False))
    for r in done:
        if r["kind"] == "geneformer":
            print(f"geneformer: {r['steps']} steps of 64 cells ({r['mean_tokens']:.0f} tokens a cell) in {r['fit_s']} s "
                  f"on {r['device']}; train loss {r['train_loss']}, validation {r['validation_loss']}; "
                  f"peak {r['peak']} against the estimate {r['need_mib']} MiB; embedded {r['embed_cells']} cells "
                  f"in {r['embed_s']} s, peak {r['embed_peak']} against {r['embed_need_mib']} MiB")
    mem = report["memory"]
    print("memory per child (MiB): need (needs.py) / NVML peak / torch peak reserved; LMI need / torch peak")
    for x in mem["per_child"]:
        print(f"  {x['id']:28s} {x['need_mib']:>6} / {x['nvml_peak_mib']} / {x['torch_peak_reserved_mib']};"
              f" {x['lmi_need_mib']} / {x['lmi_torch_peak_reserved_mib']}")
    print(f"children over their estimate: {len(mem['children_over_estimate'])}; busiest sample: {mem['busiest_sample']}; "
          f"most leases at once: {mem['max_concurrent_leases']}")
    rows = [row for r in scvi for row in r["rows"]]
    if rows:
        law_report(rows, "scvi")


if __name__ == "__main__":
    main()
