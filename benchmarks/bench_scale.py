"""Paper scale: a simulated development atlas through the whole data chain, each stage in its own process.

    python benchmarks/bench_scale.py --cells 2000000 --genes 2000 --dir /tmp/bench-scale [--keep]

Stages: raw (simulate) -> split -> pool (one per seed, raw rows in pool order) -> medians (q=1 pool)
-> eval sets (3 qualities) -> corpora (the whole pool at 3 qualities, thinned on read) -> PCA fit on
the whole pool -> one SCVI epoch on a 200k-cell row range -> test-set embeddings (PCA, SCVI) -> LMI
(day signal). Each stage runs in a fresh subprocess and reports its own peak RSS
(``resource.getrusage``), so one stage's memory never hides in another's. Then the figures are
extrapolated linearly in cells to 10 million cells, and the storage of the `paper` grid's development
dataset is compared between the layouts (pools + row ranges, thinned on read, vs per-setting copies).
The data lives under ``--dir`` and is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

QUALITIES = (1.0, 0.1, 0.01)
SEED = 42
SCVI_CELLS = 200_000
N_TEST, N_VAL = 30_000, 1_000


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _thinned(d: Path, n: int | None, q: float):
    from scaling_assets.data.pools import CountsRange

    pool_cells = int(json.loads((d / "pool" / "summary.json").read_text())["cells"])
    return CountsRange(str(d / "pool"), pool_cells if n is None else n, q, SEED).open()


def stage(name: str, d: Path, cells: int, genes: int) -> dict:
    """Run one stage in this process; returns cells processed and bytes written."""
    import numpy as np

    from scaling_assets.data.h5ad_io import CsrReader, write_rows

    os.environ["SCALING_ASSETS_PROGRESS"] = "0"
    _register_one_epoch_budget()  # the SCVI stage trains with it; the embed stage loads a model that names it
    if name == "raw":
        from scaling_assets.data.simulate import simulate

        simulate("development", cells, genes, seed=4, out_path=d / "raw.h5ad", median_umis=2500.0)
        return {"cells": cells, "written": (d / "raw.h5ad").stat().st_size}
    if name == "split":
        from scaling_assets.data.splits import make_split

        with CsrReader(d / "raw.h5ad") as raw:
            make_split(raw, "development", SEED, n_test=N_TEST, n_val=N_VAL).save(d / "split.npz")
        return {"cells": cells, "written": (d / "split.npz").stat().st_size}
    from scaling_assets.data.splits import Split

    split = Split.load(d / "split.npz")
    if name == "pool":
        from scaling_assets.data.pools import write_pool

        with CsrReader(d / "raw.h5ad") as raw:
            write_pool(raw, split.pool_order, d / "pool")
        (d / "pool" / "summary.json").write_text(json.dumps({"cells": int(split.pool_order.size)}))
        return {"cells": int(split.pool_order.size), "written": _dir_bytes(d / "pool")}
    if name == "medians":
        from scaling_assets.data.corpus import TokenDictionary, gene_nonzero_medians

        with _thinned(d, None, 1.0) as pool:
            medians = gene_nonzero_medians(pool)
            TokenDictionary(pool.var_names).save(d / "dictionary.json")
        np.save(d / "medians.npy", medians)
        return {"cells": int(split.pool_order.size), "written": (d / "medians.npy").stat().st_size}
    if name == "eval":
        from functools import partial

        from scaling_assets.data.thinning import thin_counts

        written = 0
        with CsrReader(d / "raw.h5ad") as raw:
            for q in QUALITIES:
                for part, rows in (("test", split.test), ("validation", split.validation)):
                    out = d / f"eval_q{q}_{part}.h5ad"
                    write_rows(raw, rows, out, transform=None if q == 1 else partial(thin_counts, q=q, seed=SEED))
                    written += out.stat().st_size
        return {"cells": len(QUALITIES) * (N_TEST + N_VAL), "written": written}
    if name == "corpora":
        from scaling_assets.data.corpus import TokenDictionary, build_corpus

        medians, dictionary = np.load(d / "medians.npy"), TokenDictionary.load(d / "dictionary.json")
        for q in QUALITIES:
            with _thinned(d, None, q) as pool:
                build_corpus(pool, d / f"corpus_q{q}", medians, dictionary)
        return {"cells": len(QUALITIES) * int(split.pool_order.size),
                "written": sum(_dir_bytes(d / f"corpus_q{q}") for q in QUALITIES)}
    if name == "pca":
        from scaling_assets.models import get_model_class

        with _thinned(d, None, 1.0) as pool:
            model = get_model_class("pca")(list(map(str, pool.var_names)), budget="paper", seed=SEED, device="cpu")
            model.fit(pool)
            model.save(d / "model_pca")
        return {"cells": int(split.pool_order.size), "written": _dir_bytes(d / "model_pca")}
    if name == "scvi":
        from scaling_assets.models import get_model_class

        n = min(SCVI_CELLS, split.pool_order.size)
        with _thinned(d, n, 1.0) as train:
            model = get_model_class("scvi")(list(map(str, train.var_names)), budget="one_epoch", seed=SEED, device="cpu")
            model.fit(train)
            model.save(d / "model_scvi")
        return {"cells": n, "written": _dir_bytes(d / "model_scvi")}
    if name == "embed":
        from scaling_assets.models import load_model

        with CsrReader(d / "eval_q1.0_test.h5ad") as test:
            for algo in ("pca", "scvi"):
                np.save(d / f"emb_{algo}.npy", load_model(d / f"model_{algo}").embed(test))
        return {"cells": 2 * N_TEST, "written": sum((d / f"emb_{a}.npy").stat().st_size for a in ("pca", "scvi"))}
    if name == "lmi":
        from scaling_assets.metrics.lmi import estimate
        from scaling_assets.metrics.signals import task_signals

        with CsrReader(d / "eval_q1.0_test.h5ad") as test:
            obs = test.read_obs()
        out = {}
        for algo in ("pca", "scvi"):
            (pairs,) = [p for p in task_signals("development", obs, np.load(d / f"emb_{algo}.npy")) if p.signal == "day"]
            out[algo] = estimate(pairs.x, pairs.y, seed=SEED)
        (d / "lmi.json").write_text(json.dumps(out))
        return {"cells": 2 * N_TEST, "written": (d / "lmi.json").stat().st_size, "mi_bits": out}
    raise ValueError(name)


def _register_one_epoch_budget() -> None:
    from scaling_assets.models.budget import BUDGETS, Budget, GeneformerBudget, ScviBudget

    BUDGETS["one_epoch"] = Budget("one_epoch", ScviBudget(max_epochs_cap=1),
                                  GeneformerBudget(max_steps=1, warmup_steps=0, eval_steps=1))


STAGES = ("raw", "split", "pool", "medians", "eval", "corpora", "pca", "scvi", "embed", "lmi")


def _child(args) -> None:
    t0 = time.perf_counter()
    result = stage(args.stage, Path(args.dir), args.cells, args.genes)
    result["wall_s"] = time.perf_counter() - t0
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print("RESULT " + json.dumps(result, default=float))


def _paper_storage(cells: int, genes: int, umis: float) -> dict:
    """Bytes of the development dataset's training data on the `paper` grid, per layout (planner model)."""
    from scaling_assets.study.planner import corpus_bytes, csr_bytes, nnz_per_cell
    from scaling_assets.study.spec import load_study

    study = load_study("paper", check_paths=False)
    d = study.datasets["development"]
    pool = cells - N_TEST - N_VAL
    sizes = [min(n, pool) for n in d.sizes]
    nnz = {q: nnz_per_cell(q * umis, genes) for q in d.qualities}
    seeds = len(study.seeds)
    copies = seeds * sum(csr_bytes(n, nnz[q]) + corpus_bytes(n, nnz[q]) for q in d.qualities for n in sizes)
    thinned_pools = seeds * sum(csr_bytes(pool, nnz[q]) + corpus_bytes(pool, nnz[q]) for q in d.qualities)
    one_pool = seeds * (csr_bytes(pool, nnz[1.0] if 1.0 in nnz else nnz[max(nnz)])
                        + sum(corpus_bytes(pool, nnz[q]) for q in d.qualities))
    return {"copies": copies, "thinned_pool_per_quality": thinned_pools, "one_pool_thinned_on_read": one_pool}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=2_000_000)
    ap.add_argument("--genes", type=int, default=2_000)
    ap.add_argument("--dir", default="/tmp/bench-scale")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--only", default=",".join(STAGES), help="comma-separated stages (default: all)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.stage:
        return _child(args)
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for name in args.only.split(","):
            cmd = [sys.executable, __file__, "--stage", name, "--dir", str(d), "--cells", str(args.cells),
                   "--genes", str(args.genes)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"{name}: FAILED\n{proc.stderr[-3000:]}", flush=True)
                break
            r = json.loads(line[7:])
            rows.append((name, r))
            print(f"{name:<8} {r['wall_s']:8.1f} s {r['cells'] / r['wall_s']:11,.0f} cells/s "
                  f"{r['peak_rss_mb']:8.0f} MB peak RSS {r['written'] / 1e6:10.1f} MB written"
                  + (f"  MI(day) {r['mi_bits']}" if "mi_bits" in r else ""), flush=True)
        scale = 10_000_000 / args.cells
        print(f"\nextrapolated to 10,000,000 cells (x{scale:g}; linear in cells; per-model stages scale with "
              "their own sizes and are left as measured):")
        for name, r in rows:
            f = scale if name in ("raw", "split", "pool", "medians", "corpora", "pca") else 1.0
            print(f"{name:<8} {r['wall_s'] * f:9.0f} s  {r['written'] * f / 1e9:8.2f} GB written")
        if (d / "raw.h5ad").exists():
            from scaling_assets.data.h5ad_io import CsrReader
            from scaling_assets.data.thinning import mean_umis

            with CsrReader(d / "raw.h5ad") as raw:
                umis = mean_umis(raw, rows=None) if raw.n_obs <= 200_000 else mean_umis(raw, rows=range_rows(raw))
            storage = _paper_storage(10_000_000, args.genes, umis)
            print(f"\n`paper` grid, development dataset at 10M cells x {args.genes} genes, {umis:,.0f} UMIs/cell "
                  "(3 seeds, 10 sizes, 10 qualities), training counts + corpora:")
            for k, v in storage.items():
                print(f"  {k:<28} {v / 1e9:10.1f} GB  ({storage['copies'] / v:4.2f}x smaller than copies)")
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)


def range_rows(raw):
    import numpy as np

    return np.arange(min(raw.n_obs, 200_000))


if __name__ == "__main__":
    main()
