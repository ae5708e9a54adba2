"""Stage 7: latent mutual information between a model's test embeddings and each task signal."""


import math
from pathlib import Path

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, Output, asset

from scaling_assets.assets.common import read_summary, timed
from scaling_assets.assets.devices import step_device
from scaling_assets.assets.embeddings import load_embeddings
from scaling_assets.assets.eval_sets import TEST_FILE, eval_dir, eval_summary
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.study import parse_setting_key

# Estimation noise allowed below zero before the range check fails: 0.1 bits (the LMI tests bound the
# estimator within 0.1 bits of 0 on independent data) or 3 standard errors of the mean pointwise MI,
# whichever is larger (small test sets, e.g. one sister pair per clone, are noisier).
NEGATIVE_TOLERANCE_BITS = 0.1
NEGATIVE_TOLERANCE_SE = 3.0


def mi_asset(ds: DatasetAssets, algorithm: str):
    name = f"mi_{algorithm}"
    key = ds.key(name)

    @asset(
        key=key,
        group_name=ds.name,
        partitions_def=ds.settings_of(algorithm),
        ins={"embeddings": ds.same_in(f"embeddings_{algorithm}"),
             "eval_counts": ds.seed_in("eval_counts", "setting", algorithm),
             "raw": ds.raw_in()},
        kinds={"pytorch"},
        check_specs=[AssetCheckSpec("mi_in_range", asset=key, blocking=True,
                                    description="Every MI estimate lies in [0, log2(pairs)] bits, allowing estimation noise below 0 "
                                    "(0.1 bits or 3 standard errors).")],
        description=f"Latent MI (bits) between {algorithm} test embeddings and the `{ds.config.task}` signals.",
    )
    def mi(context: AssetExecutionContext, embeddings: Path, eval_counts: Path, raw: Path):
        import numpy as np

        from scaling_assets.data.h5ad_io import CsrReader
        from scaling_assets.metrics.lmi import estimate_pointwise
        from scaling_assets.metrics.signals import task_signals

        setting = parse_setting_key(context.partition_key)
        values, cell_ids = load_embeddings(embeddings)
        with CsrReader(eval_dir(eval_counts, setting.quality) / TEST_FILE) as test:
            # Embeddings may cover a subset of the test cells (Geneformer drops cells with no tokens).
            position = {c: i for i, c in enumerate(np.asarray(test.obs_names, dtype=str))}
            rows = np.array([position[c] for c in cell_ids], dtype=np.int64)
            obs = test.read_obs(rows)
            obsm = {"protein": test.read_obsm("protein", rows)} if ds.config.task == "cite" else None
        test_summary = eval_summary(eval_counts, setting.quality)["test"]
        umis_per_cell = test_summary["umis_per_cell"]
        # The noise law's x: nominal UMIs per cell, round(q * u), u the dataset's mean at q = 1, the same
        # for every seed (so seeds average at each quality), as the reference.
        dataset_umis = float(read_summary(raw)["umis_per_cell"])
        signals = task_signals(ds.config.task, obs, values, obsm=obsm, seed=setting.seed)
        results = []
        lmi_preset = ds.study.lmi.get("preset", "fast")
        with step_device(context, name, values.shape[1]) as device, timed() as elapsed:
            for sig in signals:
                est = estimate_pointwise(sig.x, sig.y, seed=setting.seed, device=device, **ds.study.lmi)
                raw_bits = float(est.mi_bits)
                se = float(np.std(est.pmi) / np.sqrt(max(len(est.pmi), 1)))
                # KSG is unbiased around zero, so a signal the embedding does not carry can come out a
                # little negative; the table reports max(0, estimate) and keeps the raw value, which the
                # scaling laws are fitted on (averaging clipped values biases fits upward near zero).
                results.append({"signal": sig.signal, "mi_bits": max(raw_bits, 0.0), "mi_bits_raw": raw_bits,
                                "mi_bits_se": se, "pairs": int(sig.n_pairs), "pairs_evaluated": int(est.n_eval),
                                "lmi_preset": lmi_preset})
                context.log.info(f"{algorithm} {sig.signal}: {est.mi_bits:.3f} bits from {sig.n_pairs} pairs")
        record = {
            "dataset": ds.name, "task": ds.config.task, "algorithm": algorithm, "cells": setting.cells,
            "quality": setting.quality, "umis_per_cell": float(umis_per_cell), "seed": setting.seed,
            "umis_nominal": int(round(setting.quality * dataset_umis)), "dataset_umis_per_cell": dataset_umis,
            "signals": results, "wall_time_s": round(elapsed(), 2),
            "test_cells": len(cell_ids), "zero_umi_test_cells_dropped": test_summary.get("zero_umi_cells_dropped", 0),
        }
        out_of_range = [
            r for r in results
            if not (-max(NEGATIVE_TOLERANCE_BITS, NEGATIVE_TOLERANCE_SE * r["mi_bits_se"])
                    <= r["mi_bits_raw"] <= math.log2(max(r["pairs"], 2)))
        ]
        yield Output(record, metadata={
            **{f"mi_{r['signal']}_bits": round(r["mi_bits"], 4) for r in results},
            **{f"pairs_{r['signal']}": r["pairs"] for r in results},
            "umis_per_cell": round(float(umis_per_cell), 1), "wall_time_s": record["wall_time_s"], "device": device,
        })
        yield AssetCheckResult(passed=not out_of_range, severity=AssetCheckSeverity.ERROR,
                               description="MI outside [0, log2(pairs)] beyond estimation noise" if out_of_range else None,
                               metadata={"out_of_range": str(out_of_range) if out_of_range else "none"})

    return mi
