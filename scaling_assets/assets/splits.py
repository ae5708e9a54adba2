"""Stage 2: test / validation / training-pool split of a dataset, per seed."""


from pathlib import Path

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, Output, asset

from scaling_assets.assets.common import new_stage
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.layout import COUNTS_FILE, SPLIT_FILE
from scaling_assets.study import parse_seed_key


def split_asset(ds: DatasetAssets):
    key = ds.key("split")

    @asset(
        key=key,
        group_name=ds.name,
        partitions_def=ds.seeds,
        ins={"raw": ds.raw_in()},
        kinds={"numpy"},
        check_specs=[AssetCheckSpec("disjoint_sets", asset=key, blocking=True, partitions_def=ds.seeds,
                                    description="No test or validation cell is in the training pool.")],
        description="Held-out test set, validation set and the training pool in a seeded order "
        "(signal-aware: whole clones for a sister-pair signal, spatial tiles for a neighbour signal).",
    )
    def split(context: AssetExecutionContext, raw: Path):
        import numpy as np

        from scaling_assets.data.h5ad_io import CsrReader
        from scaling_assets.data.splits import make_split

        seed = parse_seed_key(context.partition_key)
        with CsrReader(raw / COUNTS_FILE) as reader:
            result = make_split(reader, ds.config.signals, seed, n_test=ds.study.test_size(ds.name),
                                n_val=ds.study.validation_size(ds.name))
        stage = new_stage(ds.study, "split")
        result.save(stage / SPLIT_FILE)
        overlap = len(np.intersect1d(result.pool_order, np.union1d(result.test, result.validation)))
        overlap += len(np.intersect1d(result.test, result.validation))
        yield Output(stage, metadata={
            "test_cells": len(result.test), "validation_cells": len(result.validation),
            "pool_cells": len(result.pool_order), "seed": seed,
        })
        yield AssetCheckResult(
            passed=overlap == 0, severity=AssetCheckSeverity.ERROR, metadata={"overlapping_cells": overlap}
        )

    return split
