"""Peak RSS of Geneformer CPU training: the 64-cell batch in one pass vs CPU micro-batches.

    python benchmarks/investigations/bench_geneformer_memory.py [--cells 300] [--genes 1000]

Builds a corpus of long cells (up to 512 tokens, the BERT's positions), then in a fresh subprocess
each: fits one default-budget step (one optimiser step of 64 cells, one small evaluation) and embeds
100 validation cells, once with the whole batch in one pass (what transformers' Trainer does given
per_device_train_batch_size=64) and once with the project's CPU micro-batches (spec.geneformer_micro_batch:
gradient accumulation to the same 64-cell step). Prints wall time, peak RSS and the losses side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(corpus_dir: Path, genes: int, one_pass: bool) -> dict:
    import numpy as np

    from scaling_assets.models import spec
    from scaling_assets.models.geneformer import GeneformerModel
    from scaling_assets.data.corpus import Corpus

    if one_pass:
        spec.CPU_ACTIVATION_BUDGET_BYTES = float("inf")
    train, val = Corpus(corpus_dir / "train"), Corpus(corpus_dir / "val")
    model = GeneformerModel([f"gene{j}" for j in range(genes)], budget="default", seed=0, device="cpu")
    t0 = time.perf_counter()
    report = model.fit(train, val)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.embed(val)
    hp = model.hyperparameters()
    return {"fit_s": fit_s, "embed_s": time.perf_counter() - t0, "train_loss": report.train_loss,
            "validation_loss": report.validation_loss, "micro_batch": hp["micro_batch_size"],
            "accumulation": hp["gradient_accumulation_steps"], "mean_tokens": float(np.mean(train.lengths)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--child", choices=["one_pass", "micro"], help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["SCALING_ASSETS_PROGRESS"] = "0"
    if args.child:
        print("RESULT " + json.dumps(child(Path(args.dir), args.genes, args.child == "one_pass")))
        return
    import numpy as np

    from scaling_assets.models.synthetic import simulate_counts
    from scaling_assets.data.corpus import TokenDictionary, build_corpus, gene_nonzero_medians

    with tempfile.TemporaryDirectory() as tmp:
        src = simulate_counts(args.cells + 100, args.genes, seed=1)  # ~2,000 UMIs: hundreds of genes per cell
        train_rows = np.arange(args.cells)
        medians = gene_nonzero_medians(src, rows=train_rows)
        dictionary = TokenDictionary(src.var_names)
        build_corpus(src, Path(tmp) / "train", medians, dictionary, rows=train_rows)
        build_corpus(src, Path(tmp) / "val", medians, dictionary, rows=np.arange(args.cells, args.cells + 100))
        print(f"{'mode':<30} {'micro x steps':>13} {'fit s':>7} {'embed s':>8} {'peak RSS':>9} "
              f"{'train loss':>10} {'val loss':>9}")
        for mode, label in (("one_pass", "64 cells in one pass"), ("micro", "CPU micro-batches")):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--dir", tmp, "--genes", str(args.genes)],
                                 capture_output=True, text=True)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{label}: FAILED\n{out.stderr[-2000:]}")
                continue
            r = json.loads(line[7:])
            print(f"{label:<30} {r['micro_batch']:>6} x {r['accumulation']:<4} {r['fit_s']:7.1f} {r['embed_s']:8.1f} "
                  f"{r['peak_rss_mb']:6.0f} MB {r['train_loss']:10.3f} {r['validation_loss']:9.3f}")
        print(f"(training cells: {args.cells}, mean {r['mean_tokens']:.0f} tokens per cell)")


if __name__ == "__main__":
    main()
