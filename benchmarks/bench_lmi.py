"""Benchmark the project's LMI estimator against the published reference (`latentmi`).

    .venv/bin/python benchmarks/bench_lmi.py                       # 2k/10k/30k pairs, 16-d and 256-d X
    .venv/bin/python benchmarks/bench_lmi.py --pairs 1500 --dims 16 --seeds 0 1 2
    .venv/bin/python benchmarks/bench_lmi.py --reference-max-pairs 4000

Data: a 2-d latent mapped linearly into X (16- or 256-d) and 16-d Y plus noise, true MI 2 bits
(`scaling_assets.metrics.synthetic.latent_gaussian_pairs`). The reference runs at its defaults in a
separate venv (it pins numpy<2) through `benchmarks/reference_lmi.py`, by default only up to
`--reference-max-pairs` pairs because it takes minutes per estimate; it is skipped, with a message,
when the venv is absent. Set up the reference with:
    python3 -m venv /tmp/lmi-ref && /tmp/lmi-ref/bin/pip install torch==2.13.0 latentmi
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scaling_assets.metrics import lmi  # noqa: E402
from scaling_assets.metrics.synthetic import latent_gaussian_pairs  # noqa: E402

HERE = Path(__file__).resolve().parent
ROW = "%-9s %-5s %4d %6d %2d %5.2f %6.3f %8.2f %8.2f %4d"


def run_reference(python: Path, x, y, seed: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-lmi-") as tmp:
        np.save(f"{tmp}/x.npy", x)
        np.save(f"{tmp}/y.npy", y)
        out = subprocess.run(
            [str(python), str(HERE / "reference_lmi.py"), f"{tmp}/x.npy", f"{tmp}/y.npy",
             "--seed", str(seed), "--threads", str(threads)],
            capture_output=True, text=True, check=True,
        ).stdout
    # the reference prints its epoch counter on the same line: take the JSON at the end
    return json.loads(out[out.rindex("{"):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, nargs="+", default=[2000, 10_000, 30_000])
    p.add_argument("--dims", type=int, nargs="+", default=[16, 256], help="X dimension (Y is 16-d)")
    p.add_argument("--mi", type=float, default=2.0, help="true MI in bits")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    p.add_argument("--reference-python", type=Path, default=Path("/tmp/lmi-ref/bin/python"))
    p.add_argument("--reference-max-pairs", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for both estimators")
    args = p.parse_args()

    have_ref = args.reference_python.exists()
    if not have_ref:
        print(f"reference skipped: {args.reference_python} not found (see the module docstring to set it up)")
    print(f"cpu threads={args.threads}; columns: estimator device dims pairs seed truth estimate wall_s cpu_s epochs")
    print("(cpu_s: CPU time of the estimating process; with 1 thread it is the wall time on an idle core)")
    # warm-up, so the first row does not pay torch's lazy initialisation
    wx, wy, _ = latent_gaussian_pairs(500, 1.0, seed=0)
    lmi.estimate(wx, wy, epochs=2, threads=args.threads)
    rows = []
    for dx in args.dims:
        for n in args.pairs:
            x, y, truth = latent_gaussian_pairs(n, args.mi, dx=dx, dy=16, seed=1)
            for seed in args.seeds:
                for device in args.devices:
                    t, cpu = time.perf_counter(), time.process_time()
                    r = lmi.estimate_pointwise(x, y, seed=seed, device=device, threads=args.threads)
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
                    rows.append(("ours", device, dx, n, seed, truth, r.mi_bits, dt, dcpu, r.epochs))
                    print(ROW % rows[-1], flush=True)
                if have_ref and n <= args.reference_max_pairs:
                    ref = run_reference(args.reference_python, x, y, seed, args.threads)
                    rows.append(("reference", "cpu", dx, n, seed, truth, ref["mi_bits"], ref["seconds"],
                                 ref.get("cpu_seconds", float("nan")), -1))
                    print(ROW % rows[-1], flush=True)
                elif have_ref:
                    print(f"reference  cpu   {dx:4d} {n:6d} {seed:2d} skipped: above --reference-max-pairs "
                          f"{args.reference_max_pairs} (minutes per estimate)", flush=True)
    print("\nsummary (mean over seeds): estimator device dims pairs | mean estimate | mean wall s | mean cpu s")
    keys = sorted({(r[0], r[1], r[2], r[3]) for r in rows}, key=lambda k: (k[2], k[3], k[0], k[1]))
    for key in keys:
        sel = [r for r in rows if (r[0], r[1], r[2], r[3]) == key]
        est, sec, cpu = (np.array([r[i] for r in sel]) for i in (6, 7, 8))
        spread = f" (min {est.min():.3f}, max {est.max():.3f})" if len(sel) > 1 else ""
        print(f"{key[0]:9s} {key[1]:5s} {key[2]:4d} {key[3]:6d} | {est.mean():.3f}{spread} | {sec.mean():.2f}s | {cpu.mean():.2f}s")


if __name__ == "__main__":
    main()
