"""Both laws fitted on one MI table, written as two fit tables and one figure per (dataset, signal).

The study's ``results`` assets and ``scaling-assets laws fit`` share this code, so a finished study
refitted from its ``mi_table`` (or an MI table computed elsewhere) gives the same tables and plots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from scaling_assets.errors import InputError
from scaling_assets.fs import atomic_file
from scaling_assets.layout import plot_name
from scaling_assets.metrics.laws import DEFAULT_FIT_RULES, check_rules, fit_noise_laws, fit_size_laws, identified_counts

KEY_COLUMNS = ["dataset", "signal", "algorithm", "cells", "quality", "seed"]
# (preferred, fallback): the raw MI estimates, else the clipped ones; nominal UMIs, else measured ones
EITHER_COLUMNS = [("mi_bits_raw", "mi_bits"), ("umis_nominal", "umis_per_cell")]


def read_mi_table(path: str | os.PathLike) -> pd.DataFrame:
    """An MI table from CSV or Parquet, checked for the columns the laws need."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"MI table {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise InputError(f"MI table {path}: expected a .csv or .parquet file, got {suffix or 'no suffix'!r}")
    except InputError:
        raise
    except Exception as exc:  # a file that is not what its suffix says
        raise InputError(f"MI table {path}: cannot be read as {suffix[1:]}: {exc}") from exc
    check_mi_table(df, f"MI table {path}")
    return df


def check_mi_table(df: pd.DataFrame, source: str = "MI table") -> None:
    """Name each missing column (for an either-or pair, both names)."""
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    missing += [f"{a} (or {b})" for a, b in EITHER_COLUMNS if a not in df.columns and b not in df.columns]
    if missing:
        raise InputError(f"{source}: missing column(s) {', '.join(missing)}; an MI table has the columns "
                         f"{', '.join(KEY_COLUMNS)}, mi_bits_raw or mi_bits, and umis_nominal or umis_per_cell")
    if df.empty:
        raise InputError(f"{source}: no rows")


def fit_laws(mi_df: pd.DataFrame, rules: str = DEFAULT_FIT_RULES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(noise-law fits, size-law fits) of every group of the table."""
    check_rules(rules)
    return fit_noise_laws(mi_df, rules), fit_size_laws(mi_df, rules)


def signals_of(mi_df: pd.DataFrame) -> list[tuple[str, str]]:
    """The table's (dataset, signal) pairs, sorted: one figure each."""
    pairs = mi_df[["dataset", "signal"]].drop_duplicates().astype(str)
    return sorted(map(tuple, pairs.to_numpy()))


def plot_laws(mi_df: pd.DataFrame, noise: pd.DataFrame, size: pd.DataFrame, folder: Path) -> dict[tuple[str, str], Path]:
    """One figure per (dataset, signal) in ``folder``; returns their paths."""
    from scaling_assets.metrics.plots import plot_signal_laws

    return {(d, s): plot_signal_laws(mi_df, noise, size, d, s, Path(folder) / plot_name(d, s)).path
            for d, s in signals_of(mi_df)}


SUMMARY_COLUMNS = ["fits", "fitted", "identified", "identified_r2_ge_0_9", "depends_on_n", "good_share_of_dependent"]


def summary_table(noise: pd.DataFrame, size: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Per law and group (default: dataset and algorithm): fits, fitted, identified, identified with
    R^2 >= 0.9; for the size law also the series whose MI depends on N and the share of those identified
    with R^2 >= 0.9 (empty for the noise law)."""
    by = by or ["dataset", "algorithm"]
    table = pd.concat([identified_counts(noise, by).assign(law="noise"), identified_counts(size, by).assign(law="size")],
                      ignore_index=True).reindex(columns=["law", *by, *SUMMARY_COLUMNS])
    table["depends_on_n"] = table["depends_on_n"].astype("Int64")
    return table


def summary_text(noise: pd.DataFrame, size: pd.DataFrame, by: list[str] | None = None) -> str:
    """The summary as a reader reads it: one line per law and group, the size law's share as a percentage."""
    table = summary_table(noise, size, by)
    if table.empty:
        return ""
    share = table.pop("good_share_of_dependent")
    table["depends_on_n"] = [str(v) if pd.notna(v) else "" for v in table["depends_on_n"]]  # empty: noise law
    table["share"] = [f"{v:.0%}" if pd.notna(v) else "" for v in share]
    return table.rename(columns={"identified_r2_ge_0_9": "R^2>=0.9", "depends_on_n": "depend on N",
                                 "share": "R^2>=0.9 of those"}).to_string(index=False, na_rep="")


@dataclass
class LawReport:
    noise: pd.DataFrame
    size: pd.DataFrame
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def summary(self) -> pd.DataFrame:
        return summary_table(self.noise, self.size)


def write_law_report(mi_df: pd.DataFrame, out: str | os.PathLike, rules: str = DEFAULT_FIT_RULES) -> LawReport:
    """Fit both laws on ``mi_df`` and write ``noise_law_fits`` and ``size_law_fits`` (Parquet and CSV)
    and the plots (``plots/scaling_<dataset>_<signal>.png``) under ``out``; each file is written to a
    temporary name and renamed."""
    check_mi_table(mi_df)
    noise, size = fit_laws(mi_df, rules)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, table in (("noise_law_fits", noise), ("size_law_fits", size)):
        for suffix in (".parquet", ".csv"):
            path = out / f"{name}{suffix}"
            with atomic_file(path) as tmp:
                table.to_parquet(tmp, index=False) if suffix == ".parquet" else table.to_csv(tmp, index=False)
            paths[f"{name}{suffix}"] = path
    for (dataset, signal), path in plot_laws(mi_df, noise, size, out / "plots").items():
        paths[f"plot_{dataset}_{signal}"] = path
    return LawReport(noise, size, paths)
