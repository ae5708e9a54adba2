"""Result tables (MI results, parameter counts) written as Parquet and CSV, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from scaling_assets.errors import InputError
from scaling_assets.fs import atomic_file

MI_COLUMNS = [
    "dataset", "task", "signal", "algorithm", "cells", "quality", "umis_per_cell", "seed", "mi_bits", "pairs",
]
PARAM_COLUMNS = ["dataset", "genes", "algorithm", "parameters"]


def require_columns(df: pd.DataFrame, columns: list[str], table: str = "table") -> None:
    """Raise InputError naming the missing columns of `df`."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{table} is missing column(s) {missing}; expected at least {columns}")


def validate_mi_table(df: pd.DataFrame) -> pd.DataFrame:
    """Check an MI table: required columns, numeric measures, non-negative pair counts.

    Returns the table with the required columns first (extras kept after them).
    """
    require_columns(df, MI_COLUMNS, "MI table")
    for col in ("cells", "quality", "umis_per_cell", "mi_bits", "pairs"):
        if not pd.api.types.is_numeric_dtype(df[col]):
            raise InputError(f"MI table column {col!r} must be numeric, got dtype {df[col].dtype}")
    if (df["pairs"] < 0).any():
        raise InputError("MI table column 'pairs' must be >= 0")
    return df[MI_COLUMNS + [c for c in df.columns if c not in MI_COLUMNS]]


def validate_param_table(df: pd.DataFrame) -> pd.DataFrame:
    require_columns(df, PARAM_COLUMNS, "parameter table")
    for col in ("genes", "parameters"):
        if not pd.api.types.is_integer_dtype(df[col]):
            raise InputError(f"parameter table column {col!r} must be integer, got dtype {df[col].dtype}")
    return df[PARAM_COLUMNS + [c for c in df.columns if c not in PARAM_COLUMNS]]


def _atomic_write(path: Path, write) -> None:
    with atomic_file(path) as tmp:
        write(tmp)


def write_table(df: pd.DataFrame, path_without_suffix: str | os.PathLike) -> list[Path]:
    """Write `df` as `<path>.parquet` and `<path>.csv`; returns both paths."""
    base = Path(path_without_suffix)
    parquet, csv = base.with_name(base.name + ".parquet"), base.with_name(base.name + ".csv")
    _atomic_write(parquet, lambda tmp: df.to_parquet(tmp, index=False))
    _atomic_write(csv, lambda tmp: df.to_csv(tmp, index=False))
    return [parquet, csv]


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by write_table (given either file or the path without suffix)."""
    p = Path(path)
    if p.suffix == ".csv":
        return pd.read_csv(p)
    if p.suffix != ".parquet":
        p = p.with_name(p.name + ".parquet")
    if not p.exists():
        raise InputError(f"table file {p} does not exist")
    return pd.read_parquet(p)


def analysis_hyperparameters(lmi_options: dict) -> list[dict]:
    """The study-wide choices outside the models, as hyperparameter-table rows (algorithm = the stage)."""
    from dataclasses import asdict

    from scaling_assets.metrics.laws import RAW_MI, S_MAX
    from scaling_assets.metrics.lmi import resolve_options
    from scaling_assets.metrics.signals import SPATIAL_NEIGHBOURS

    lmi = asdict(resolve_options(lmi_options))
    rows = [("lmi", "preset", lmi_options.get("preset", "fast"))] + [("lmi", k, v) for k, v in sorted(lmi.items())]
    rows += [
        ("tokenize", "gene_medians", "nonzero medians over the full-quality (q = 1) training pool of the seed, "
                                     "used at every quality"),
        ("evaluation", "zero_umi_test_cells", "dropped for every algorithm at that quality"),
        ("signals", "protein", "raw protein counts (no log)"),
        ("signals", "spatial_neighbours", SPATIAL_NEIGHBOURS),
        ("laws", "fitted_on", RAW_MI),
        ("laws", "noise_law_x", "umis_nominal = round(q * mean UMIs per cell at q = 1)"),
        ("laws", "size_law_s_max", S_MAX),
    ]
    return [{"algorithm": stage, "hyperparameter": name, "value": str(value)} for stage, name, value in rows]
