"""Run the published `latentmi` reference at its defaults on saved arrays.

Runs inside the separate reference venv (latentmi pins numpy<2), e.g.
    /tmp/lmi-ref/bin/python benchmarks/reference_lmi.py x.npy y.npy --seed 0
Prints one JSON line: {"mi_bits": ..., "seconds": ..., "cpu_seconds": ..., "n": ...}
(after the reference's own epoch counter, which it prints without a newline).
"""

import argparse
import json
import os
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("x")
    parser.add_argument("y")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("REF_THREADS", "1")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    from latentmi import lmi

    x, y = np.load(args.x), np.load(args.y)
    start, cpu_start = time.perf_counter(), time.process_time()
    pmi, _, _ = lmi.estimate(x, y, quiet=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    print(json.dumps({"mi_bits": float(np.nanmean(pmi)), "seconds": seconds, "cpu_seconds": cpu_seconds, "n": len(x)}))


if __name__ == "__main__":
    main()
