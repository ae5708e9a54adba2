"""PCA's size law on a study's simulated datasets, in-process: the study's own steps without Dagster.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/investigations/bench_pca_size_law.py --cache /tmp/pca_mi.csv
    # the grids of docs/laws.md's table: 25-6,400 computed once, refitted on sub-grids and seeds
    PYTHONPATH=$PWD .venv/bin/python benchmarks/investigations/bench_pca_size_law.py --cache /tmp/pca_mi.csv \\
        --seeds 42 1404 --sizes 25 50 100 200 400 800 1600 3200 6400 \\
        --grid 100,200,400,800,1600,3200,6400 --grid 25,50,100,200,400,800,1600,3200,6400 \\
        --grid-seeds 42 --grid-seeds 1404 --grid-seeds 42,1404
    # the earlier default (7,000-cell datasets, 25-3,200 cells)
    PYTHONPATH=$PWD .venv/bin/python benchmarks/investigations/bench_pca_size_law.py --cache /tmp/pca_mi.csv \\
        --add-cells -3000 --sizes 25 50 100 200 400 800 1600 3200

For each simulated dataset of a study (default: the embedded default study), what the study's assets do for
PCA, with the package's functions: simulate (``raw_counts``); split with the study's seed, test and validation
sizes (``split``); the test cells thinned to each quality, cells left without UMIs dropped (``eval_counts``);
the training pool written once (``pool_counts``); the 750 HVGs chosen on the largest full-quality training set
of PCA's grid (``pca_genes``); per (seed, quality, N) PCA on pool rows [0, N) thinned on read without their
zero-UMI cells (``train_counts``, ``model_pca``), the test cells embedded (``embeddings_pca``) and every signal's
MI estimated with the study's LMI options (``mi_pca``). Files go to a temporary folder.

The MI rows are appended to ``--cache`` (CSV) under a key of everything they depend on (the dataset's
simulation, its split sizes, the HVGs' training size, seed, quality, N), so later calls reuse them: the MI at a
setting does not depend on the other sizes of the grid as long as the largest (where the HVGs are chosen) stays.
Then, for every ``--grid`` x ``--grid-seeds`` (default: the sizes and seeds computed), the size law is fitted by
the package (``fit_size_laws``, the study's fit rules) and counted as the study's summary counts it
(``identified_counts``): identified with R^2 >= 0.9 among the series whose MI depends on N.

It answers which grid and seeds let the default study identify PCA's size law before a whole study is run.
Printed: per grid, the counts per dataset and quality; with ``--detail``, every series' MI and fit; and the mean
wall time of each step per setting (PCA fit, embedding, LMI) from the settings computed in this call.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from scaling_assets.assets.eval_sets import thinning  # noqa: E402
from scaling_assets.data.h5ad_io import CsrReader, write_rows  # noqa: E402
from scaling_assets.data.pools import CountsRange, find_zero_umi_rows, write_pool  # noqa: E402
from scaling_assets.data import simulate as simulator  # noqa: E402
from scaling_assets.data.simulate import simulate  # noqa: E402
from scaling_assets.data.splits import make_split  # noqa: E402
from scaling_assets.data.tasks import SIMULATED, signal_columns, signal_obsm_keys  # noqa: E402
from scaling_assets.data.thinning import rows_with_counts  # noqa: E402
from scaling_assets.metrics.laws import fit_size_laws, identified_counts  # noqa: E402
from scaling_assets.metrics.lmi import estimate_pointwise  # noqa: E402
from scaling_assets.metrics.signal_mi import embedded_test_rows, signal_estimates  # noqa: E402
from scaling_assets.metrics.signals import build_signals  # noqa: E402
from scaling_assets.models.hvg import seurat_highly_variable  # noqa: E402
from scaling_assets.models.pca import N_HVG, PCAModel  # noqa: E402
from scaling_assets.study.spec import load_study  # noqa: E402

# what an MI row depends on besides (seed, quality, cells): the cache key
KEY = ["dataset", "sim_cells", "genes", "data_seed", "simulator", "test_request", "val_request", "hvg_cells"]
SETTING = ["seed", "quality", "cells"]


SIMULATOR_SETTINGS: list[str] = []  # --set NAME=VALUE overrides, part of the cache key


def simulator_label() -> str:
    return " ".join([str(simulator.SIMULATOR_VERSION), *SIMULATOR_SETTINGS])


def dataset_key(study, name: str, hvg_cells: int) -> dict:
    cfg = study.datasets[name]
    return dict(dataset=name, sim_cells=cfg.cells, genes=cfg.genes, data_seed=cfg.seed, simulator=simulator_label(),
                test_request=study.test_size(name), val_request=study.validation_size(name), hvg_cells=hvg_cells)


def pca_settings(study, name: str, seed: int, qualities, sizes, work: Path, done: set) -> list[dict]:
    """MI rows of the settings of one dataset and seed not in ``done``, computed as the study's assets do
    (the HVGs chosen at the largest of ``sizes``)."""
    cfg, chunk = study.datasets[name], study.chunk_size
    todo = [(q, n) for q in qualities for n in sizes if (seed, q, n) not in done]
    if not todo:
        return []
    folder = work / f"{name}_s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    raw = work / f"{name}.h5ad"
    if not raw.exists():
        summary = simulate(cfg.task, cfg.cells, cfg.genes, cfg.seed, raw, chunk_size=chunk)
        (work / f"{name}.umis").write_text(str(summary["umis_per_cell"]))
    dataset_umis = float((work / f"{name}.umis").read_text())  # the raw summary's, for umis_nominal
    rows = []
    with CsrReader(raw) as reader:
        split = make_split(reader, cfg.signals, seed, n_test=study.test_size(name), n_val=study.validation_size(name))
        write_pool(reader, split.pool_order, folder / "pool", chunk_size=chunk)
        tests = {}
        for q in sorted({q for q, _ in todo}):
            kept = rows_with_counts(reader, split.test, q, seed, chunk_size=chunk)
            path = folder / f"test_q{q:g}.h5ad"
            write_rows(reader, kept, path, transform=thinning(q, seed), chunk_size=chunk)
            tests[q] = path
    largest = max(sizes)
    handle, _ = find_zero_umi_rows(CountsRange(str(folder / "pool"), largest, 1.0, seed), chunk)
    with handle.open() as train:
        genes = seurat_highly_variable(train, min(N_HVG, train.n_vars), chunk_size=chunk)
    for q, n in todo:
        t0 = time.perf_counter()
        handle, _ = find_zero_umi_rows(CountsRange(str(folder / "pool"), n, q, seed), chunk)
        with handle.open() as train:
            model = PCAModel(train.var_names, budget=study.budget, seed=seed)
            model.use_genes(genes, f"largest full-quality training set (n={largest}, q=1)")
            model.fit(train)
        t1 = time.perf_counter()
        with CsrReader(tests[q]) as test:
            values, cell_ids = model.embed(test), np.asarray(test.obs_names, dtype=str)
            at = embedded_test_rows(test.obs_names, cell_ids)
            obs = test.read_obs(at, columns=signal_columns(cfg.signals))
            obsm = {k: test.read_obsm(k, at) for k in signal_obsm_keys(cfg.signals)}
        values = np.asarray(values, dtype=np.float32)  # as the embeddings asset stores them
        signals = build_signals(cfg.signals, obs, values, obsm=obsm, seed=seed)
        t2 = time.perf_counter()
        results = signal_estimates(signals, lambda x, y: estimate_pointwise(x, y, seed=seed, device="cpu", **study.lmi),
                                   study.lmi.get("preset", "fast"))
        t3 = time.perf_counter()
        for r in results:
            rows.append(dict(signal=r["signal"], algorithm="pca", seed=seed, quality=q, cells=n,
                             training_cells=handle.training_cells, test_cells=len(cell_ids),
                             mi_bits=r["mi_bits"], mi_bits_raw=r["mi_bits_raw"], mi_bits_se=r["mi_bits_se"],
                             umis_nominal=int(round(q * dataset_umis)), learns_from_cells=True,
                             pca_s=t1 - t0, embed_s=t2 - t1, lmi_s=t3 - t2))
        print(f"  {name} s={seed} q={q:g} n={n}: " + ", ".join(f"{r['signal']} {r['mi_bits_raw']:.3f}" for r in results)
              + f"  (PCA {t1 - t0:.1f} s, embed {t2 - t1:.1f} s, LMI {t3 - t2:.1f} s)", flush=True)
    return rows


def load_cache(path: Path | None) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"simulator": str}) if path is not None and path.exists() else pd.DataFrame()


def compute(study, args) -> pd.DataFrame:
    """The cache's rows for the requested datasets, seeds, qualities and sizes, computing what is missing."""
    cache = load_cache(args.cache)
    hvg_cells = max(args.sizes)
    new = []
    with tempfile.TemporaryDirectory(prefix="bench_pca_size_law_") as tmp:
        for name in args.datasets:
            key = dataset_key(study, name, hvg_cells)
            have = cache
            for k, v in key.items():
                have = have[have[k] == v] if len(have) else have
            done = set(map(tuple, have[SETTING].to_numpy())) if len(have) else set()
            for seed in args.seeds:
                rows = pca_settings(study, name, seed, args.qualities, args.sizes, Path(tmp), done)
                new += [dict(key, **r) for r in rows]
                if args.cache is not None and rows:  # written as they come: a long call can be stopped
                    fresh = pd.DataFrame([dict(key, **r) for r in rows])
                    fresh.to_csv(args.cache, mode="a", header=not args.cache.exists(), index=False)
    table = pd.concat([cache, pd.DataFrame(new)], ignore_index=True) if new or len(cache) else pd.DataFrame()
    if new:
        steps = pd.DataFrame(new).drop_duplicates(["dataset", *SETTING])
        print(f"step seconds per setting, mean of {len(steps)} computed now (machine shared): "
              f"PCA {steps.pca_s.mean():.2f}, embed {steps.embed_s.mean():.2f}, LMI {steps.lmi_s.mean():.2f} "
              f"({len(new) / len(steps):.2f} signals a setting)")
    sel = table[table.dataset.isin(args.datasets) & (table.hvg_cells == hvg_cells)
                & (table.simulator.astype(str) == simulator_label())
                & (table.sim_cells == table.dataset.map({n: study.datasets[n].cells for n in args.datasets}))]
    return sel.drop_duplicates(["dataset", "signal", *SETTING], keep="last")


def summarise(mi: pd.DataFrame, sizes, seeds, rules: str, detail: bool) -> dict:
    """Fit the size law on the grid's rows and print its counts; returns the totals."""
    grid = mi[mi.cells.isin(sizes) & mi.seed.isin(seeds)]
    fits = fit_size_laws(grid, rules)
    good = fits.identified.astype(bool) & (fits.r2 >= 0.9)
    dependent = fits.depends_on_n.fillna(False).astype(bool)
    label = f"sizes {','.join(str(int(n)) for n in sizes)} x seeds {','.join(str(int(s)) for s in seeds)}"
    total_good, total_dep = int((good & dependent).sum()), int(dependent.sum())
    share = total_good / total_dep if total_dep else float("nan")
    print(f"\n{label}: identified with R^2 >= 0.9 {total_good} of {total_dep} series that depend on N "
          f"({share:.0%}; {len(fits)} series, {int(good.sum())} identified in all)")
    per_quality = fits.assign(good=good, dependent=dependent).groupby(["dataset", "quality"]).agg(
        good=("good", "sum"), dependent=("dependent", "sum"), series=("good", "size"))
    print(per_quality.unstack("quality").to_string())
    if detail:
        means = grid.groupby(["dataset", "signal", "quality", "cells"]).mi_bits_raw.mean().unstack("cells")
        for _, f in fits.iterrows():
            row = means.loc[(f.dataset, f.signal, f.quality)]
            verdict = "IDENTIFIED" if f.identified and f.r2 >= 0.9 else ("flat" if f.depends_on_n is False else "no")
            print(f"  {f.dataset:11s} {f.signal:9s} q={f.quality:<5g} " + " ".join(f"{v:5.2f}" for v in row)
                  + f"  {verdict:10s} I_inf {f.i_inf:.2f} N0 {f.n0:.3g} s {f.s:.2f} R2 {f.r2:.3f}  {f.reason}")
    counts = identified_counts(fits)
    return dict(grid=label, identified=total_good, dependent=total_dep, share=share, counts=counts)


def parse_list(text: str, kind=float) -> list:
    return [kind(v) for v in text.split(",") if v]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="default", help="a study name or file (its simulated datasets)")
    ap.add_argument("--datasets", nargs="+", help="default: every simulated dataset of the study")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds to compute (default: the study's)")
    ap.add_argument("--sizes", type=int, nargs="+", help="sizes to compute (default: PCA's grid); the largest "
                    "is where the HVGs are chosen, as in the study")
    ap.add_argument("--qualities", type=float, nargs="+", help="default: PCA's grid")
    ap.add_argument("--add-cells", type=int, default=0, help="simulate this many more cells per dataset than the "
                    "study (a larger training pool, for sizes above the study's; negative: fewer)")
    ap.add_argument("--test-cells", type=int, help="test cells per dataset instead of the study's")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                    help="simulator constants to override (data/simulate.py), for probes of the simulator")
    ap.add_argument("--cache", type=Path, help="CSV of MI rows, read and appended to")
    ap.add_argument("--grid", action="append", default=[], help="sizes to fit, comma-separated (repeatable)")
    ap.add_argument("--grid-seeds", action="append", default=[], help="seeds to fit, comma-separated (repeatable)")
    ap.add_argument("--rules", help="fit rules (default: the study's)")
    ap.add_argument("--detail", action="store_true", help="print every series' MI and fit")
    args = ap.parse_args()
    study = load_study(args.study, check_paths=False)
    for item in args.set:
        name, value = item.split("=", 1)
        if not hasattr(simulator, name):
            ap.error(f"--set: the simulator has no constant {name!r}")
        setattr(simulator, name, type(getattr(simulator, name))(float(value)))
        SIMULATOR_SETTINGS.append(f"{name}={value}")
    simulated = [n for n, d in study.datasets.items() if d.source == SIMULATED]
    args.datasets = args.datasets or simulated
    if args.add_cells or args.test_cells:
        datasets = {n: dataclasses.replace(d, cells=d.cells + args.add_cells,
                                           test_cells=args.test_cells or study.test_size(n))
                    for n, d in study.datasets.items()}
        study = dataclasses.replace(study, datasets=datasets)
    first = study.datasets[args.datasets[0]]
    args.seeds = args.seeds or list(study.seeds)
    args.sizes = sorted(args.sizes or study.sizes_of(args.datasets[0], "pca"))
    args.qualities = args.qualities or list(study.qualities_of(args.datasets[0], "pca"))
    print(f"study {study.name}: datasets {args.datasets}, {first.cells} cells, seeds {args.seeds}, sizes {args.sizes}, "
          f"qualities {args.qualities}, LMI {study.lmi}", flush=True)
    start = time.perf_counter()
    mi = compute(study, args)
    mi = mi[mi.quality.isin(args.qualities)]
    grids = [parse_list(g, int) for g in args.grid] or [args.sizes]
    seed_sets = [parse_list(s, int) for s in args.grid_seeds] or [args.seeds]
    results = [summarise(mi, sizes, seeds, args.rules or study.fit_rules, args.detail)
               for sizes in grids for seeds in seed_sets]
    print("\n" + "\n".join(f"{r['identified']:3d} of {r['dependent']:3d} ({r['share']:.0%})  {r['grid']}"
                           for r in results))
    print(f"wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
