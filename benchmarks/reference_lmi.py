"""Run the published `latentmi` estimator on saved arrays, in its own environment.

latentmi pins numpy<2, so it runs in a separate venv, never in the project's:
    python3.11 -m venv /tmp/latentmi-venv && /tmp/latentmi-venv/bin/pip install latentmi torch==2.13.0
    /tmp/latentmi-venv/bin/python benchmarks/reference_lmi.py pairs.npz --seeds 0 1 2 --call study
    /tmp/latentmi-venv/bin/python benchmarks/reference_lmi.py x.npy y.npy --seed 0      # older form

pairs.npz holds arrays `x` and `y` (paired rows). `--call defaults` is `lmi.estimate(x, y)` (half the
pairs held back); `--call study` is the reference study's call, `validation_split=0.3`; `--epochs`
overrides the maximum number of epochs (for quick checks). Each seed is seeded the way a latentmi user
seeds it, `np.random.seed(seed); torch.manual_seed(seed)`, on one CPU thread (REF_THREADS or
--threads), so `scaling_assets.metrics.lmi.estimate(x, y, seed=seed, preset="reference")` sees the same
random draws. Prints one JSON line per seed:
{"seed", "mi_bits", "pmi_sd", "n_eval", "seconds", "cpu_seconds", "n", "call"}.
"""

import argparse
import contextlib
import io
import json
import os
import time

import numpy as np
import torch

CALLS = {"defaults": {}, "study": {"validation_split": 0.3}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arrays", nargs="+", help="pairs.npz (arrays x and y), or x.npy y.npy")
    parser.add_argument("--seed", type=int, default=None, help="one seed (same as --seeds SEED)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--call", choices=sorted(CALLS), default="defaults")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs (latentmi's default: 300)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("REF_THREADS", "1")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from latentmi import lmi

    if len(args.arrays) == 1:
        with np.load(args.arrays[0]) as pairs:
            x, y = pairs["x"], pairs["y"]
    elif len(args.arrays) == 2:
        x, y = np.load(args.arrays[0]), np.load(args.arrays[1])
    else:
        parser.error("give pairs.npz, or x.npy and y.npy")
    kwargs = dict(CALLS[args.call], **({"epochs": args.epochs} if args.epochs else {}))
    for seed in [args.seed] if args.seed is not None else args.seeds:
        np.random.seed(seed)
        torch.manual_seed(seed)
        start, cpu_start = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):  # its epoch counter prints even when quiet
            pmi, _, _ = lmi.estimate(x, y, quiet=True, device="cpu", **kwargs)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        held = pmi[~np.isnan(pmi)]
        print(json.dumps({"seed": seed, "mi_bits": float(np.nanmean(pmi)), "pmi_sd": float(held.std()),
                          "n_eval": int(len(held)), "seconds": seconds, "cpu_seconds": cpu_seconds,
                          "n": len(x), "call": args.call}), flush=True)


if __name__ == "__main__":
    main()
