"""Does SCVI's MI fall as quality falls? Quality-order violations of the default study's SCVI grid, in-process.

    .venv/bin/python benchmarks/bench_scvi_quality_order.py --tasks cite --budgets default --seeds 42
    .venv/bin/python benchmarks/bench_scvi_quality_order.py --tasks cite lineage spatial development \\
        --budgets default --seeds 42 1404 --out /tmp/scvi_order.jsonl
    .venv/bin/python benchmarks/bench_scvi_quality_order.py --report /tmp/scvi_order.jsonl

What a study's SCVI grid measures, without Dagster, as the default study does it: each task simulated as
``studies/default.yaml`` gives it (``data/simulate.py``'s blocks, in memory), the study's signal-aware
split (``data/splits.make_split``: test, validation and the seeded pool order), per quality the study's
binomial thinning (``data/thinning.thin_counts``, cells left with no UMI dropped) of the first N pool
cells and of the test cells; SCVI (``models/scvi.py``) under a training budget
(``models/budget.py``), its posterior-mean embedding of the test cells, and every signal's MI by the
study's LMI (``fast`` preset, 100 epochs). The seed is the study's: split, thinning, SCVI and LMI.

A *violation* is a step down in quality (q_hi -> q_lo, at one size and signal) where the mean MI over
seeds *rises* by more than the standard error of that difference, sqrt(SE_hi^2 + SE_lo^2): SE = the
seeds' standard deviation / sqrt(seeds) with >= 2 seeds, else the estimate's own standard error (the
pointwise MI's). Also printed: steps whose mean MI rises by > 0.05 bits (issue 42's count), the training
steps SCVI took, and where the time went (fit, embedding, MI).

``--scvi NAME:KEY=VALUE,...`` registers a trial budget NAME: the ``default`` budget's SCVI settings with
the given ``ScviBudget`` fields replaced (e.g. ``--scvi ms50:min_steps=50,max_steps=400``). Rows
are appended to ``--out`` (JSON lines) and a (task, budget, seed, size, quality) already there is not
run again, so a comparison can grow run by run; ``--report FILE`` prints the comparison alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_simulator_size_effect import simulate_in_memory  # noqa: E402

from scaling_assets.data.counts import InMemoryCounts  # noqa: E402
from scaling_assets.data.splits import make_split  # noqa: E402
from scaling_assets.data.tasks import TASKS  # noqa: E402
from scaling_assets.data.thinning import thin_counts  # noqa: E402
from scaling_assets.metrics.lmi import estimate_pointwise  # noqa: E402
from scaling_assets.metrics.signals import build_signals  # noqa: E402
from scaling_assets.models.budget import BUDGETS, Budget  # noqa: E402
from scaling_assets.models.scvi import SCVIModel  # noqa: E402
from scaling_assets.study.spec import load_study  # noqa: E402

RISE_BITS = 0.05  # issue 42's count: steps down in quality that raise the MI by more than this
LABEL_SIGNALS = {"cite": ["cell_type"], "development": ["day", "cell_type"], "lineage": [], "spatial": []}


def linear_probe(x, y_onehot, seed: int):
    """A cheap MI lower bound for a label signal (``--probe linear``): H(Y) - the cross-entropy of a
    5-fold cross-validated multinomial logistic regression on the standardised embedding, in bits.
    Not the study's LMI: a stand-in that ranks training rules ~100x faster."""
    from types import SimpleNamespace

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.preprocessing import StandardScaler

    y = np.argmax(y_onehot, axis=1)
    z = StandardScaler().fit_transform(x)
    proba = cross_val_predict(LogisticRegression(max_iter=500), z, y, cv=5, method="predict_proba")
    prior = np.bincount(y) / len(y)
    pmi = np.log2(np.clip(proba[np.arange(len(y)), y], 1e-12, None)) - np.log2(prior[y])
    return SimpleNamespace(mi_bits=float(pmi.mean()), pmi=pmi)


def register_trial_budget(spec: str) -> str:
    """``NAME:KEY=VALUE,...`` -> a budget NAME whose SCVI settings are the default's with those fields."""
    name, _, fields = spec.partition(":")
    base = BUDGETS["default"]
    known = [f.name for f in dataclasses.fields(base.scvi)]
    changes = {}
    for item in filter(None, fields.split(",")):
        key, _, value = item.partition("=")
        if key not in known:
            raise SystemExit(f"--scvi {spec!r}: ScviBudget has no field {key!r}; fields: {known}")
        float_field = isinstance(getattr(base.scvi, key), float)  # min delta; the others are counts
        changes[key] = None if value == "None" else float(value) if float_field else int(value)
    BUDGETS[name] = Budget(name, dataclasses.replace(base.scvi, **changes), base.geneformer)
    return name


def thinned(X, obs, obsm, genes, rows, q: float, seed: int):
    """Rows of the simulated set thinned to q, cells left with no UMI dropped (the study's rule)."""
    Xq = thin_counts(X[rows], rows, q, seed)
    keep = np.asarray(Xq.sum(axis=1)).ravel() > 0
    kept = rows[keep]
    return InMemoryCounts(Xq[keep], obs.iloc[kept], genes), {k: v[kept] for k, v in obsm.items()}


def run_task(task: str, dataset: dict, args, done: set, out) -> None:
    X, obs, obsm = simulate_in_memory(task, dataset["cells"], dataset["genes"], dataset["seed"])
    genes = np.array([f"G{j}" for j in range(X.shape[1])], dtype=object)
    source = InMemoryCounts(X, obs, genes, obsm)
    for seed in args.seeds:
        split = make_split(source, TASKS[task].signals, seed, n_test=dataset["test_cells"],
                           n_val=dataset["validation_cells"])
        for q in args.qualities:
            test, test_obsm = thinned(X, obs, obsm, genes, split.test, q, seed)
            for n in args.sizes:
                for budget in args.budgets:
                    if (task, budget, seed, n, q) in done:
                        continue
                    train, _ = thinned(X, obs, obsm, genes, split.train_rows(n), q, seed)
                    model = SCVIModel(genes, budget=budget, seed=seed, device="cpu")
                    cpu = time.process_time()
                    report = model.fit(train)
                    fit_cpu = time.process_time() - cpu
                    start, cpu = time.perf_counter(), time.process_time()
                    emb = model.embed(test)
                    embed_s, embed_cpu = time.perf_counter() - start, time.process_time() - cpu
                    start, cpu = time.perf_counter(), time.process_time()
                    signals = build_signals(TASKS[task].signals, test.read_obs(), emb, test_obsm, seed)
                    if args.probe == "linear":  # label signals only: a cheap stand-in while choosing a rule
                        signals = [sig for sig in signals if sig.signal in LABEL_SIGNALS[task]]
                        estimates = [linear_probe(sig.x, sig.y, seed) for sig in signals]
                    else:
                        estimates = [estimate_pointwise(sig.x, sig.y, seed=seed, epochs=args.lmi_epochs) for sig in signals]
                    mi_s, mi_cpu = (time.perf_counter() - start) / len(signals), (time.process_time() - cpu) / len(signals)
                    for sig, est in zip(signals, estimates):
                        row = dict(task=task, budget=budget, seed=seed, cells=n, quality=q, signal=sig.signal,
                                   mi=float(est.mi_bits), se=float(np.std(est.pmi) / np.sqrt(max(len(est.pmi), 1))),
                                   epochs=int(report.epochs), steps=int(report.steps), stop=report.stop_reason,
                                   fit_s=round(report.wall_time_s, 2), embed_s=round(embed_s, 2), mi_s=round(mi_s, 2),
                                   fit_cpu=round(fit_cpu, 2), embed_cpu=round(embed_cpu, 2), mi_cpu=round(mi_cpu, 2))
                        out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(f"{task} {budget} s={seed} n={n} q={q}: {report.steps} steps ({report.stop_reason}), "
                          f"fit {report.wall_time_s:.1f} s ({fit_cpu:.1f} CPU s), MI " + ", ".join(
                              f"{sig.signal} {est.mi_bits:.2f}" for sig, est in zip(signals, estimates)), flush=True)


def violations(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, budget, signal, size, q_hi -> q_lo) step: the rise of the mean and its SE."""
    rows = []
    for (task, budget, signal, n), g in df.groupby(["task", "budget", "signal", "cells"]):
        stats = g.groupby("quality").agg(mean=("mi", "mean"), sd=("mi", "std"), k=("mi", "size"), se_est=("se", "mean"))
        stats["sem"] = np.where(stats.k >= 2, stats.sd / np.sqrt(stats.k), stats.se_est)
        stats = stats.sort_index(ascending=False)  # highest quality first
        for (q_hi, hi), (q_lo, lo) in zip(stats.iterrows(), list(stats.iterrows())[1:]):
            rise = lo["mean"] - hi["mean"]
            bound = float(np.hypot(hi["sem"], lo["sem"]))
            rows.append(dict(task=task, budget=budget, signal=signal, cells=n, q_hi=q_hi, q_lo=q_lo,
                             seeds=int(min(hi.k, lo.k)), rise=rise, se=bound, violation=rise > bound,
                             rise_005=rise > RISE_BITS))
    return pd.DataFrame(rows)


def report(df: pd.DataFrame) -> None:
    v = violations(df)
    for (budget, task), g in v.groupby(["budget", "task"]):
        bad = g[g.violation]
        print(f"{budget:14s} {task:12s} seeds {g.seeds.min()}: violations {len(bad)} of {len(g)} steps "
              f"(rise > 0.05 bits: {int(g.rise_005.sum())}); mean SE of a step {g.se.mean():.3f} bits")
        for _, r in bad.iterrows():
            print(f"    {r.signal:10s} n={r.cells:<5d} q {r.q_hi:g} -> {r.q_lo:g}: +{r.rise:.3f} bits (SE {r.se:.3f})")
    for budget, g in v.groupby("budget"):
        print(f"{budget:14s} all tasks: violations {int(g.violation.sum())} of {len(g)}, "
              f"rise > 0.05 bits {int(g.rise_005.sum())}")
    fits = df.drop_duplicates(["task", "budget", "seed", "cells", "quality"])
    steps = fits.pivot_table(index=["budget", "cells"], columns="quality", values="steps", aggfunc="median")
    print("\nmedian optimiser steps by budget, size (rows) and quality (columns):")
    print(steps.round(0).to_string())
    per = df.groupby(["budget"]).apply(lambda g: pd.Series({
        "fits": len(g.drop_duplicates(["task", "seed", "cells", "quality"])),
        "fit_cpu_s": g.drop_duplicates(["task", "seed", "cells", "quality"]).fit_cpu.sum(),
        "embed_cpu_s": g.drop_duplicates(["task", "seed", "cells", "quality"]).embed_cpu.sum(),
        "mi_estimates": len(g), "mi_cpu_s": g.mi_cpu.sum(),
        "wall_s": g.drop_duplicates(["task", "seed", "cells", "quality"]).fit_s.sum() + g.mi_s.sum()}),
        include_groups=False)
    print("\nCPU seconds by budget (one torch thread; wall on the shared machine for reference):")
    print(per.round(1).to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["cite"], choices=list(TASKS))
    ap.add_argument("--study", default="default", help="the study whose datasets (cells, genes, seed, test cells) are simulated")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400, 800, 1600])
    ap.add_argument("--qualities", type=float, nargs="+", default=[1.0, 0.3, 0.1, 0.03])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--budgets", nargs="+", default=["default"], help="budgets of models/budget.py (or --scvi trials)")
    ap.add_argument("--scvi", action="append", default=[], metavar="NAME:KEY=VALUE,...", help="a trial budget")
    ap.add_argument("--lmi-epochs", type=int, default=100)
    ap.add_argument("--probe", choices=["lmi", "linear"], default="lmi",
                    help="lmi: the study's estimate; linear: a fast label-signal stand-in for choosing a rule")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a study run on 2 cores gets 1)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_scvi_quality_order.jsonl"))
    ap.add_argument("--report", type=Path, help="print the comparison of this file's rows and stop")
    args = ap.parse_args()
    if args.report:
        report(pd.read_json(args.report, lines=True, precise_float=True))
        return
    for spec in args.scvi:
        register_trial_budget(spec)
    unknown = [b for b in args.budgets if b not in BUDGETS]
    if unknown:
        ap.error(f"unknown budget(s) {unknown}; known: {sorted(BUDGETS)}")
    # one thread, as a study run on the 2-core machine gets (two run slots): CPU seconds then measure
    # what a step costs there, however loaded the shared machine is
    torch.set_num_threads(args.threads)
    study = load_study(args.study, check_paths=False)
    done = set()
    if args.out.exists():
        prior = pd.read_json(args.out, lines=True, precise_float=True)
        done = set(map(tuple, prior[["task", "budget", "seed", "cells", "quality"]].itertuples(index=False)))
    start = time.perf_counter()
    with args.out.open("a") as out:
        for task in args.tasks:
            name = next(k for k, d in study.datasets.items() if d.task == task)
            d = study.datasets[name]
            dataset = dict(cells=d.cells, genes=d.genes, seed=d.seed, test_cells=study.test_size(name),
                           validation_cells=study.validation_size(name))
            run_task(task, dataset, args, done, out)
    df = pd.read_json(args.out, lines=True, precise_float=True)
    report(df[df.task.isin(args.tasks) & df.budget.isin(args.budgets) & df.seed.isin(args.seeds)
              & df.cells.isin(args.sizes) & df.quality.isin(args.qualities)])
    print(f"wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
