"""Result-table columns and checks shared by the laws, the plots and the results assets.

(The study IO manager writes the tables themselves: Parquet + CSV per table folder.)
"""

from __future__ import annotations

import pandas as pd

from scaling_assets.errors import InputError

MI_COLUMNS = [
    "dataset", "task", "signal", "algorithm", "cells", "quality", "umis_per_cell", "seed", "mi_bits", "pairs",
]


def require_columns(df: pd.DataFrame, columns: list[str], table: str = "table") -> None:
    """Raise InputError naming the missing columns of `df`."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{table} is missing column(s) {missing}; expected at least {columns}")


def analysis_hyperparameters(lmi_options: dict, fit_rules: str = "reference") -> list[dict]:
    """The study-wide choices outside the models, as hyperparameter-table rows (algorithm = the stage)."""
    from dataclasses import asdict

    from scaling_assets.metrics.lmi_options import resolve_options
    from scaling_assets.metrics.signals import SPATIAL_NEIGHBOURS

    lmi = asdict(resolve_options(lmi_options))
    rows = [("lmi", "preset", lmi_options.get("preset", "fast"))] + [("lmi", k, v) for k, v in sorted(lmi.items())]
    rows += [
        ("tokenize", "gene_medians", "nonzero medians over the full-quality (q = 1) training pool of the seed, "
                                     "used at every quality"),
        ("data", "zero_umi_cells", "cells left with no UMI after thinning are dropped from the training, "
                                   "validation and test sets of every algorithm at that quality; N stays nominal"),
        ("signals", "protein", "raw protein counts (no log)"),
        ("signals", "spatial_neighbours", SPATIAL_NEIGHBOURS),
        ("laws", "fitted_on", "mi_bits_raw of every seed (least squares)"),
        ("laws", "noise_law_x", "umis_nominal = round(q * mean UMIs per cell at q = 1)"),
        ("laws", "fit_rules", fit_rules),
        ("laws", "identified", "no parameter at a bound and each standard error below half its value"),
        ("laws", "size_law_needs", "MI depending on N beyond 2 standard errors"),
        ("laws", "flat_size_series", "plateau only (n0, s empty, not identified): the largest mean over N for PCA "
                                     "and random projection under the reference rules, else the "
                                     "inverse-variance-weighted mean over N"),
        ("laws", "learns_from_cells_false", "estimates averaged over N per (quality, seed); one noise-law fit per "
                                            "(dataset, signal)"),
    ]
    return [{"algorithm": stage, "hyperparameter": name, "value": str(value)} for stage, name, value in rows]
