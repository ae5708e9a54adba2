"""Stage 7: latent mutual information between a model's test embeddings and each task signal."""


from pathlib import Path

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, Output, asset

from scaling_assets.assets.common import (SETTING_KEY_NOTE, budget_smoke_of, eval_summary, load_embeddings,
                                          read_summary, readable, timed)
from scaling_assets.assets.devices import step_device
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.layout import EvalCountsFolder
from scaling_assets.models.registry import ModelEntry
from scaling_assets.study.spec import parse_setting_key


def mi_asset(ds: DatasetAssets, entry: ModelEntry):
    algorithm = entry.name
    name = f"mi_{algorithm}"
    key = ds.key(name)

    @asset(
        key=key,
        group_name=ds.name,
        partitions_def=ds.settings_of(algorithm),
        ins={"embeddings": ds.same_in(f"embeddings_{algorithm}"),
             "eval_counts": ds.seed_in("eval_counts", "setting", algorithm),
             "raw": ds.raw_in()},
        kinds={"numpy"},
        check_specs=[AssetCheckSpec("mi_in_range", asset=key, blocking=True, partitions_def=ds.settings_of(algorithm),
                                    description="Every MI estimate lies in [0, log2(pairs)] bits, allowing estimation noise below 0 "
                                    "(0.1 bits or 5 standard errors).")],
        description=f"Latent MI (bits) between {algorithm} test embeddings and each signal of `{ds.name}` "
        f"({', '.join(ds.config.signal_names)}) "
        "(one value per signal; `budget_smoke` when the model trained below the study's stopping rules)."
        + SETTING_KEY_NOTE,
    )
    def mi(context: AssetExecutionContext, embeddings: Path, eval_counts: EvalCountsFolder, raw: Path):
        from scaling_assets.metrics.lmi import estimate_pointwise_many
        from scaling_assets.metrics.signal_mi import out_of_range, signal_estimates

        setting = parse_setting_key(context.partition_key)
        values, cell_ids = load_embeddings(embeddings)
        signals = _test_signals(ds, setting, values, cell_ids, eval_counts)
        test_summary = eval_summary(eval_counts.folder, setting.quality)["test"]
        umis_per_cell = test_summary["umis_per_cell"]
        # The noise law's x: nominal UMIs per cell, round(q * u), u the dataset's mean at q = 1, the same
        # for every seed (so seeds average at each quality), as the reference.
        dataset_umis = float(read_summary(raw)["umis_per_cell"])
        lmi_preset = ds.study.lmi.get("preset", "fast")
        with step_device(context, name, entry.gpu_need_mib("mi", values.shape[1])) as device, timed() as elapsed:
            results = signal_estimates(  # the setting's signals in one pass: their networks train as one stack
                signals, lambda pairs, names: estimate_pointwise_many(
                    pairs, seed=setting.seed, names=names, device=device, **ds.study.lmi),
                lmi_preset)
        for r in results:
            context.log.info(f"{algorithm} {r['signal']}: {r['mi_bits_raw']:.3f} bits from {r['pairs']} pairs")
        record = {
            "dataset": ds.name, "task": ds.config.task, "algorithm": algorithm, "cells": setting.cells,
            "quality": setting.quality, "umis_per_cell": float(umis_per_cell), "seed": setting.seed,
            "umis_nominal": int(round(setting.quality * dataset_umis)), "dataset_umis_per_cell": dataset_umis,
            "signals": results, "wall_time_s": round(elapsed(), 2),
            "test_cells": len(cell_ids), "zero_umi_test_cells_dropped": test_summary.get("zero_umi_cells_dropped", 0),
            # the setting's other zero-UMI counts (DESIGN §3): cells the model did not train on, and the
            # held-out validation set's at q (Geneformer's; SCVI's 80/20 split is drawn from the training cells)
            **_training_counts(ds, algorithm, context.partition_key, setting.cells),
            "zero_umi_validation_cells_dropped":
                eval_summary(eval_counts.folder, setting.quality)["validation"].get("zero_umi_cells_dropped", 0),
        }
        budget_smoke = budget_smoke_of(ds.study, ds.name, algorithm, context.partition_key)
        record["budget_smoke"] = budget_smoke
        bad = out_of_range(results)
        yield Output(record, metadata=_mi_metadata(results, float(umis_per_cell), elapsed(), device, budget_smoke))
        yield AssetCheckResult(passed=not bad, severity=AssetCheckSeverity.ERROR,
                               description="MI outside [0, log2(pairs)] beyond estimation noise" if bad else None,
                               metadata={"out_of_range": str(bad) if bad else "none"})

    return mi


def _training_counts(ds: DatasetAssets, algorithm: str, setting_key: str, nominal: int) -> dict:
    """Cells the setting's model trained on and the zero-UMI cells left out, from its summary."""
    from scaling_assets.layout import SUMMARY_FILE, partition_dir

    folder = partition_dir(ds.study.root, [ds.name, f"model_{algorithm}"], setting_key)
    summary = read_summary(folder) if (folder / SUMMARY_FILE).exists() else {}
    trained = summary.get("training_cells")
    return {"training_cells": trained,
            "zero_umi_training_cells_dropped": None if trained is None else nominal - int(trained)}


def _test_signals(ds: DatasetAssets, setting, values, cell_ids, eval_counts: EvalCountsFolder) -> list:
    """The dataset's (embedding, signal) pairs over the embedded test cells, read in the embeddings' order."""
    from scaling_assets.data.h5ad_io import CsrReader
    from scaling_assets.data.tasks import signal_columns, signal_obsm_keys
    from scaling_assets.metrics.signal_mi import embedded_test_rows
    from scaling_assets.metrics.signals import build_signals

    signals = ds.config.signals
    path = eval_counts.held_out(setting.quality, "test")
    with CsrReader(path) as test:
        rows = embedded_test_rows(test.obs_names, cell_ids)
        obs = test.read_obs(rows, columns=signal_columns(signals))
        obsm = {key: test.read_obsm(key, rows) for key in signal_obsm_keys(signals)}  # cite: proteins
    return build_signals(signals, obs, values, obsm=obsm, seed=setting.seed, where=f"dataset {ds.name!r}: {path}")


def _mi_metadata(results: list[dict], umis_per_cell: float, wall_time_s: float, device: str,
                 budget_smoke: bool | None) -> dict:
    return readable({
        **{f"mi_{r['signal']}_bits": r["mi_bits"] for r in results},
        **{f"mi_{r['signal']}_bits_se": r["mi_bits_se"] for r in results},
        **{f"pairs_{r['signal']}": r["pairs"] for r in results},
        "umis_per_cell": umis_per_cell, "wall_time_s": wall_time_s, "device": device,
        **({"budget_smoke": budget_smoke} if budget_smoke is not None else {}),
    })
