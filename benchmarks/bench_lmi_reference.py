"""The `reference` LMI preset against latentmi itself, on the same arrays and seeds.

    .venv/bin/python benchmarks/bench_lmi_reference.py                      # all cases, both calls, seed 0
    .venv/bin/python benchmarks/bench_lmi_reference.py --calls study --seeds 0 1 2 --cases gauss1 onehot

latentmi (0.1.3) runs in its own venv (it pins numpy<2) through `benchmarks/reference_lmi.py`, on the
arrays saved as npz, seeded as a user seeds it (`np.random.seed(s); torch.manual_seed(s)`); ours runs
in this process with `estimate(x, y, seed=s, preset="reference")` (validation_fraction 0.5 for latentmi's
defaults, the preset's 0.3 for the study's call), both on one CPU thread; the two run side by side.
Set up the reference with:
    python3.11 -m venv /tmp/latentmi-venv && /tmp/latentmi-venv/bin/pip install latentmi torch==2.13.0

Cases (1,000 pairs each by default, the default study's test-set size):
- gauss1, gauss3: a 2-d latent mapped into 16-d X and 16-d Y plus noise, analytic MI 1 and 3 bits
  (`scaling_assets.metrics.synthetic.latent_gaussian_pairs`);
- onehot: a 256-d embedding of a 57-class one-hot label (a Gaussian mixture; the true MI from the
  exact class posteriors, as in bench_lmi_presets.py);
- study: a simulated `cite` dataset (`scaling-assets simulate`), embedded with the project's PCA model
  (16-d, as in the default study) against its one-hot cell type, the default study's cell_type signal.

Prints one row per (case, call, seed): latentmi, ours (reference preset), ours (fast preset, with the
call's held-back share), the analytic value where known, the difference reference - latentmi, and
times; then, per case and call, the spread over seeds of each estimator and the largest difference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scaling_assets.metrics.lmi import estimate, estimate_pointwise  # noqa: E402
from scaling_assets.metrics.synthetic import latent_gaussian_pairs  # noqa: E402

HERE = Path(__file__).resolve().parent
CALL_FRACTION = {"defaults": 0.5, "study": 0.3}  # latentmi's validation_split in each call


def gaussian_case(n: int, bits: float):
    x, y, truth = latent_gaussian_pairs(n, bits, dx=16, dy=16, seed=1)
    return x, y, truth


def onehot_case(n: int):
    from bench_lmi_presets import mixture_case

    _, x, y, truth = mixture_case(n)
    return x, y, truth


def study_case(n: int, workdir: Path):
    """PCA embeddings (16-d) of a simulated cite dataset against its one-hot cell type."""
    from scaling_assets.data.h5ad_io import CsrReader
    from scaling_assets.metrics.signals import task_signals
    from scaling_assets.models.pca import PCAModel

    path = workdir / "cite.h5ad"
    cli = Path(sys.executable).with_name("scaling-assets")
    subprocess.run([str(cli), "simulate", "--quiet", "--task", "cite", "--cells", str(2 * n), "--genes", "2000",
                    "--seed", "0", "--out", str(path)], check=True,
                   stdout=subprocess.DEVNULL)
    with CsrReader(path) as reader:
        model = PCAModel(np.asarray(reader.var_names, dtype=str), seed=0)
        model.fit(reader)
        emb = model.embed(reader)[:n]
        obs = reader.read_obs(np.arange(n))
        obsm = {"protein": reader.read_obsm("protein", np.arange(n))}
    signal = next(s for s in task_signals("cite", obs, emb, obsm=obsm, seed=0) if s.signal == "cell_type")
    return signal.x, signal.y, float("nan")


def run_latentmi(python: Path, npz: Path, call: str, seeds: list[int]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(python), str(HERE / "reference_lmi.py"), str(npz), "--call", call, "--seeds", *map(str, seeds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["gauss1", "gauss3", "onehot", "study"])
    p.add_argument("--calls", nargs="+", default=["defaults", "study"], choices=sorted(CALL_FRACTION))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--reference-python", type=Path, default=Path("/tmp/latentmi-venv/bin/python"))
    p.add_argument("--jsonl", type=Path, help="also append each row here as JSON")
    args = p.parse_args()
    if not args.reference_python.exists():
        sys.exit(f"no latentmi venv at {args.reference_python}; see this script's docstring to make one")
    sys.path.insert(0, str(HERE))

    rows = []
    header = (f"{'case':<8} {'call':<8} {'seed':>4} {'n_eval':>6} {'latentmi':>9} {'ours ref':>9} {'ours fast':>9} "
              f"{'analytic':>8} {'ref-lmi':>8} {'epochs':>6} {'lmi s':>6} {'ref s':>6}")
    print(header, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-lmi-ref-") as tmp:
        for case in args.cases:
            if case.startswith("gauss"):
                x, y, truth = gaussian_case(args.pairs, float(case[5:]))
            elif case == "onehot":
                x, y, truth = onehot_case(args.pairs)
            elif case == "study":
                x, y, truth = study_case(args.pairs, Path(tmp))
            else:
                sys.exit(f"unknown case {case!r}; expected gauss1, gauss3, onehot or study")
            # both read the same float64 arrays
            npz = Path(tmp) / f"{case}.npz"
            np.savez(npz, x=np.asarray(x, dtype=np.float64), y=np.asarray(y, dtype=np.float64))
            with np.load(npz) as saved:
                x, y = saved["x"], saved["y"]
            for call in args.calls:
                ref = run_latentmi(args.reference_python, npz, call, args.seeds)  # in parallel with ours
                ours = {}
                for seed in args.seeds:
                    t0 = time.perf_counter()
                    r = estimate_pointwise(x, y, seed=seed, preset="reference",
                                           validation_fraction=CALL_FRACTION[call], device="cpu")
                    ours[seed] = (r, time.perf_counter() - t0,
                                  estimate(x, y, seed=seed, validation_fraction=CALL_FRACTION[call], device="cpu"))
                out, err = ref.communicate()
                if ref.returncode:
                    sys.exit(f"latentmi failed on {case}/{call}:\n{err[-3000:]}")
                for line in (json.loads(s) for s in out.splitlines() if s.startswith("{")):
                    r, secs, fast = ours[line["seed"]]
                    row = dict(case=case, call=call, seed=line["seed"], n_eval=r.n_eval, latentmi=line["mi_bits"],
                               ours_reference=r.mi_bits, ours_fast=fast, analytic=truth,
                               difference=r.mi_bits - line["mi_bits"], epochs=r.epochs,
                               latentmi_seconds=line["seconds"], ours_seconds=secs, latentmi_n_eval=line["n_eval"])
                    rows.append(row)
                    print(f"{case:<8} {call:<8} {row['seed']:>4} {r.n_eval:>6} {row['latentmi']:>9.4f} "
                          f"{row['ours_reference']:>9.4f} {fast:>9.4f} {truth:>8.3f} {row['difference']:>+8.4f} "
                          f"{r.epochs:>6} {line['seconds']:>6.0f} {secs:>6.0f}", flush=True)
                    if args.jsonl:
                        with args.jsonl.open("a") as f:
                            f.write(json.dumps(row) + "\n")

    print("\nper case and call, over seeds: mean and spread (max - min) of each, largest |ours ref - latentmi|")
    for case in args.cases:
        for call in args.calls:
            sel = [r for r in rows if r["case"] == case and r["call"] == call]
            if not sel:
                continue
            lm, rf, fs = (np.array([r[k] for r in sel]) for k in ("latentmi", "ours_reference", "ours_fast"))
            print(f"{case:<8} {call:<8} seeds={len(sel)} latentmi {lm.mean():.3f} (spread {np.ptp(lm):.3f}) "
                  f"ours ref {rf.mean():.3f} (spread {np.ptp(rf):.3f}) ours fast {fs.mean():.3f} "
                  f"(spread {np.ptp(fs):.3f}); largest |ref - latentmi| {np.abs(rf - lm).max():.2e}")
    worst = max(abs(r["difference"]) for r in rows)
    print(f"\nlargest |ours reference - latentmi| over all rows: {worst:.2e} bits (target: within 0.05)")


if __name__ == "__main__":
    main()
