"""LMI cost and accuracy: this tree's estimator against main's before the stacked training, side by side.

    .venv/bin/python benchmarks/bench_lmi_speed.py --study-root /work/baseline/study_runs/default
    .venv/bin/python benchmarks/bench_lmi_speed.py --gaussian-dims 64x10 10x10 --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/bench_lmi_speed.py --baseline /work/main --new-options patience=8

The baseline is the estimator of a git commit (`--baseline-commit`, default f6f8b68: main before the
stacked training; extracted with `git archive`) or of a checkout (`--baseline`). Each estimator runs
in a worker process of its own (PYTHONPATH = its tree, one CPU thread, torch imported before timing);
per seed the baseline's worker runs every setting, then this tree's, so that both see the same stretch
of machine load. A setting is what one MI step estimates (a dataset's signals against one model's
embeddings at one size, quality and seed, see lmi_cases.py; a Gaussian MI level is a setting of one
signal): the baseline estimates its signals one by one (`estimate_pointwise`), this tree with
`estimate_pointwise_many`, as the MI asset calls it.

Cases: Gaussian pairs of known MI (a 2-d latent in dx-d x and dy-d y, `--gaussian-dims`, default 16x16;
`--gaussian-pairs` pairs, the default study's test-set size) and, with `--study-root`, up to `--per-algorithm` settings of each dataset and
algorithm of a materialised study (the largest and the smallest size at the highest and the lowest
quality). `--new-options` (repeatable) runs this tree once more per set of options.

Prints per signal the analytic MI where known, then for the baseline and each run of this tree the mean
estimate over seeds, its scatter (sample sd over seeds), the difference from the baseline, the CPU
seconds per estimate of the setting and the mean epochs trained; then per run: CPU seconds per estimate
and per MI step (study settings) against the baseline's, and how many signals moved by less than their
seed scatter (|mean difference| < the larger of the two sds). `--json` (default
results/<date>_<machine>_bench_lmi_speed.json) keeps every row.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def worker(cases: Path, seed: int, options: dict) -> None:
    """Estimate every setting of `cases` with the estimator on PYTHONPATH; print one JSON row per setting."""
    import torch

    from scaling_assets.metrics import lmi

    torch.set_num_threads(1)
    settings = pickle.loads(cases.read_bytes())
    many = getattr(lmi, "estimate_pointwise_many", None)
    x, y = settings[0]["signals"][0][1:]
    lmi.estimate(x[:200], y[:200], epochs=2)  # torch's lazy initialisation, not timed
    for s in settings:
        pairs = [(x, y) for _, x, y in s["signals"]]
        cpu, wall = time.process_time(), time.perf_counter()
        if many is not None:
            results = many(pairs, seed=seed, device="cpu", **options)
        else:
            results = [lmi.estimate_pointwise(x, y, seed=seed, device="cpu", **options) for x, y in pairs]
        row = {"setting": s["name"], "seed": seed, "cpu_s": time.process_time() - cpu,
               "wall_s": time.perf_counter() - wall, "mi": [r.mi_bits for r in results],
               "epochs": [r.epochs for r in results]}
        print(json.dumps(row), flush=True)


def run_worker(code: Path, cases: Path, seed: int, options: dict) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--worker", str(cases), "--seed", str(seed),
                          "--options", json.dumps(options)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"worker on {code} failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def baseline_tree(args, tmp: Path) -> Path:
    if args.baseline:
        return args.baseline
    tree = tmp / "baseline"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_commit, "scaling_assets"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def parse_options(pairs: list[str]) -> dict:
    options = {}
    for item in pairs:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value  # a bare string, e.g. preset=fast
    return options


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study-root", type=Path, help="a materialised study root (e.g. study_runs/default)")
    p.add_argument("--algorithms", nargs="+", default=["pca", "scvi", "random_projection", "geneformer"])
    p.add_argument("--per-algorithm", type=int, default=2, help="settings of each dataset and algorithm")
    p.add_argument("--gaussian-bits", type=float, nargs="*", default=[0.5, 1, 2, 3, 4])
    p.add_argument("--gaussian-pairs", type=int, default=3000, help="the default study's test cells")
    p.add_argument("--gaussian-dims", nargs="+", default=["16x16"],
                   help="features of x and y of the Gaussian pairs, DXxDY (the study's embeddings: 10-64)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--baseline-commit", default="f6f8b68")
    p.add_argument("--baseline", type=Path, help="a tree holding the baseline's scaling_assets (instead of a commit)")
    p.add_argument("--options", nargs="*", default=[], help="LMI options for both, key=value")
    p.add_argument("--new-options", nargs="*", action="append", default=None,
                   help="LMI options for this tree only, key=value; repeat to run this tree once per set")
    p.add_argument("--json", type=Path, help="also write every row here (default: results/<date>_<machine>_...)")
    p.add_argument("--report", type=Path, help="print the tables of a saved --json file and exit")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.seed, json.loads(args.options[0]) if args.options else {})

    sys.path.insert(0, str(HERE))
    from harness import load, result_path
    from lmi_cases import Setting, gaussian_settings, study_settings

    if args.report:
        saved = json.loads(args.report.read_text())
        names = [n for n in saved["options"]]
        found = {r["setting"]: len(r["mi"]) for r in saved["baseline"]}
        truths = saved.get("truth") or [[np.nan] * found[name] for name in saved["settings"]]
        settings = [Setting(name, [(f"signal {i}", None, None) for i in range(found[name])], truth)
                    for name, truth in zip(saved["settings"], truths)]
        for s, signals in zip(settings, saved.get("signals", [None] * len(settings))):
            if signals:
                s.signals = [(signal, None, None) for signal in signals]
        return report(settings, {n: saved[n] for n in names}, len({r["seed"] for r in saved["baseline"]}))

    dims = [tuple(int(d) for d in text.split("x")) for text in args.gaussian_dims]
    settings = gaussian_settings(args.gaussian_bits, args.gaussian_pairs, dims)
    if args.study_root:
        settings += study_settings(args.study_root, args.algorithms, args.per_algorithm)
    common = parse_options(args.options)
    runs = {"baseline": common}
    for i, extra in enumerate(args.new_options or [[]]):
        runs[f"new{i + 1}" if args.new_options and len(args.new_options) > 1 else "new"] = {**common, **parse_options(extra)}
    rows = {name: [] for name in runs}
    with tempfile.TemporaryDirectory(prefix="bench-lmi-speed-") as tmp:
        cases = Path(tmp) / "cases.pkl"
        cases.write_bytes(pickle.dumps([{"name": s.name, "signals": s.signals} for s in settings]))
        baseline = baseline_tree(args, Path(tmp))
        print(f"baseline: {baseline} ({args.baseline or args.baseline_commit}); this tree: {ROOT}; "
              f"{len(settings)} settings, {sum(len(s.signals) for s in settings)} signals, seeds {args.seeds}; "
              f"one CPU thread each; options: {runs}; load average {load()}", flush=True)
        for seed in args.seeds:  # interleaved: every run sees the same stretch of machine load
            for name, options in runs.items():
                t = time.perf_counter()
                rows[name] += run_worker(baseline if name == "baseline" else ROOT, cases, seed, options)
                print(f"  seed {seed} {name}: {time.perf_counter() - t:.0f} s wall", flush=True)
    print(f"load average at the end {load()}")
    out = args.json or result_path("bench_lmi_speed.json")
    out.write_text(json.dumps({"settings": [s.name for s in settings], "truth": [s.truth for s in settings],
                               "signals": [[signal for signal, _, _ in s.signals] for s in settings],
                               "options": runs, "load": load(), **rows}, indent=1))
    report(settings, rows, len(args.seeds))


def report(settings, rows: dict[str, list[dict]], n_seeds: int) -> None:
    by = {name: {} for name in rows}
    for name, found in rows.items():
        for r in found:
            by[name].setdefault(r["setting"], []).append(r)
    names = list(rows)
    head = " ".join(f"{name + ' bits':>15} {'diff':>6} {'cpu s':>5} {'ep':>3}" for name in names)
    print(f"\n{'setting':<46} {'signal':<10} {'truth':>5} {head}")
    cpu = {name: 0.0 for name in names}
    step_cpu = {name: 0.0 for name in names}  # study settings only: what one mi_<algorithm> step costs
    steps = 0
    moved_less = {name: 0 for name in names}
    estimates = signals = 0
    for s in settings:
        for name in names:
            cpu[name] += sum(r["cpu_s"] for r in by[name][s.name])
        estimates += len(by["baseline"][s.name]) * len(s.signals)
        if not s.name.startswith("gaussian"):
            steps += len(by["baseline"][s.name])
            for name in names:
                step_cpu[name] += sum(r["cpu_s"] for r in by[name][s.name])
        for i, (signal, _, _) in enumerate(s.signals):
            signals += 1
            cells, base, base_sd = [], None, None
            for name in names:
                found = by[name][s.name]
                values = np.array([r["mi"][i] for r in found])
                sd = values.std(ddof=1) if n_seeds > 1 else np.nan
                if base is None:
                    base, base_sd = values.mean(), sd
                diff = values.mean() - base
                moved_less[name] += bool(abs(diff) < max(sd, base_sd))
                cells.append(f"{values.mean():>7.3f} ±{sd:<6.3f} {diff:>+6.3f} "
                             f"{np.mean([r['cpu_s'] for r in found]) / len(s.signals):>5.2f} "
                             f"{np.mean([r['epochs'][i] for r in found]):>3.0f}")
            print(f"{s.name:<46} {signal:<10} {s.truth[i]:>5.2f} " + " ".join(cells))
    chance = same_distribution_pass_rate(n_seeds)
    print(f"(two estimators with the same distribution pass |mean difference| < the larger sd on "
          f"{100 * chance:.0f}% of signals with {n_seeds} seeds each: {chance * signals:.1f} of {signals})")
    for name in names[1:]:
        print(f"{name}: {cpu[name] / estimates:.2f} CPU s per estimate against the baseline's "
              f"{cpu['baseline'] / estimates:.2f} ({cpu['baseline'] / cpu[name]:.2f}x cheaper, {estimates} estimates each)"
              + (f"; {moved_less[name]} of {signals} signals moved by less than their seed scatter" if n_seeds > 1 else ""))
        if steps:
            print(f"{name}: {step_cpu[name] / steps:.2f} CPU s per MI step against the baseline's "
                  f"{step_cpu['baseline'] / steps:.2f} ({step_cpu['baseline'] / step_cpu[name]:.2f}x cheaper, "
                  f"{steps} steps each)")


def same_distribution_pass_rate(n_seeds: int, draws: int = 200_000) -> float:
    """How often two sets of n_seeds draws from one normal distribution have |mean difference| below the
    larger sample sd: the share of signals that pass the scatter rule when nothing changed."""
    if n_seeds < 2:
        return float("nan")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, draws, n_seeds))
    return float(np.mean(np.abs(a.mean(1) - b.mean(1)) < np.maximum(a.std(1, ddof=1), b.std(1, ddof=1))))


if __name__ == "__main__":
    main()
