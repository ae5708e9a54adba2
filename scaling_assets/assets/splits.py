"""Stage 2: test / validation / training-pool split of a dataset, per seed."""


from pathlib import Path

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, Output, asset

from scaling_assets.assets.common import new_stage, write_summary
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.layout import COUNTS_FILE, SPLIT_FILE
from scaling_assets.errors import InputError
from scaling_assets.study.spec import parse_seed_key


def split_summary(split, seed: int, cells: int, n_test: int | None, n_val: int) -> dict:
    """What `study show` reads back: the seed's real set sizes next to the requested ones."""
    from scaling_assets.data.splits import default_sizes

    n_test, n_val = default_sizes(cells, n_test, n_val)
    return {"seed": seed, "cells": cells, "test_cells": len(split.test), "validation_cells": len(split.validation),
            "pool_cells": split.pool_size, "test_cells_requested": n_test, "validation_cells_requested": n_val}


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
        "(signal-aware: whole clones for a sister-pair signal, spatial tiles for a neighbour signal, never more "
        "cells than asked, so the pool holds at least cells - test - validation and the largest training size).",
    )
    def split(context: AssetExecutionContext, raw: Path):
        import numpy as np

        from scaling_assets.data.h5ad_io import CsrReader
        from scaling_assets.data.splits import make_split
        from scaling_assets.study.pairs import check_split, dataset_obs_of

        seed = parse_seed_key(context.partition_key)
        n_test, n_val = ds.study.test_size(ds.name), ds.study.validation_size(ds.name)
        with CsrReader(raw / COUNTS_FILE) as reader:
            result = make_split(reader, ds.config.signals, seed, n_test=n_test, n_val=n_val)
            cells = reader.n_obs
            # Refuse here too, before anything is trained, a test set too small for an MI estimate of a signal
            check_split(ds.study, ds.name, dataset_obs_of(reader, ds.config.signals), seed, result.test)
        # Refuse here, before the seed's pools and evaluation sets are written, a grid the pool cannot hold
        # (a study file whose `cells` differs from the cells the raw file really has).
        largest = ds.study.largest_size(ds.name)
        if largest > result.pool_size:
            raise InputError(
                f"{ds.name} s={seed}: the largest training size {largest} exceeds this seed's training pool of "
                f"{result.pool_size} cells ({cells} cells in the raw file - {len(result.test)} test - "
                f"{len(result.validation)} validation); the study file gives `cells: {ds.config.cells}`: set it "
                f"to {cells}, or give sizes up to {result.pool_size}")
        stage = new_stage(ds.study, "split")
        result.save(stage / SPLIT_FILE)
        write_summary(stage, split_summary(result, seed, cells, n_test, n_val))
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
