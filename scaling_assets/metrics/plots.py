"""Plots of the study (PNG, matplotlib Agg): scaling-law fits and model loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from scaling_assets.errors import InputError  # noqa: E402
from scaling_assets.fs import atomic_file  # noqa: E402
from scaling_assets.metrics.laws import mi_value_column, noise_law, noise_x_column, size_law  # noqa: E402
from scaling_assets.metrics.tables import require_columns  # noqa: E402

DPI, WIDTH_IN = 100, 4.0  # 400 px wide: shown in place, uncut, in the asset Overview's value column (~408 px
# in a 1,280 px window)


def _save(fig, path) -> Path:
    """Save as PNG through a temporary file, then rename (no half-written images). The figure keeps its
    own width (no tight bounding box), so every image fits the UI's metadata column."""
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return path


# Type sizes for images shown at their own size in a ~408 px column: 9 pt labels and ticks.
LEGIBLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9,
           "legend.fontsize": 7.5, "legend.title_fontsize": 7.5, "figure.titlesize": 10}
PANEL_IN = 2.9  # height of one panel


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _fit_lookup(fits: pd.DataFrame, keys: dict) -> pd.Series | None:
    if fits is None or fits.empty:
        return None
    mask = np.ones(len(fits), dtype=bool)
    for k, v in keys.items():
        if k in fits.columns:
            mask &= (fits[k] == v).to_numpy()
    hit = fits[mask]
    return hit.iloc[0] if len(hit) else None


def short_reason(fit: pd.Series | None) -> str:
    """A legend-sized reason why a series has no curve (the fit table has the whole reason)."""
    if fit is None:
        return "not fitted"
    reason = str(fit.get("reason") or "")
    if not bool(fit.get("fitted", False)):
        for start, short in (("no dependence on N", "no N dependence"), ("too few points", "too few points"),
                             ("no information", "no information")):
            if reason.startswith(start):
                return short
        return "not fitted"
    first = reason.split(";")[0].strip()
    name = first.split(" ")[0] if first else ""
    if " at its " in first:
        return f"{name} at bound"
    if "standard error" in first:
        return f"{name} uncertain"
    return "not identified"


class SignalPlot(NamedTuple):
    path: Path
    points: dict[str, int]  # panel title -> points drawn (means over seeds)
    curves: dict[str, int]  # panel title -> law curves drawn (identified fits only)


SERIES_OWN = object()  # a fit key whose value is the series' own (its largest N in the noise panel)


def _draw_law(ax, pts, fits_df, x_col, series_col, law, params, fit_keys, xlabel, title) -> tuple[int, int]:
    """One panel: a series per value of `series_col` (means over seeds with error bars) and its law
    where the fit is identified; other series are points, the reason in their legend entry.
    Returns (points drawn, curves drawn)."""
    y_col = mi_value_column(pts)  # the points the laws were fitted on
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = curves = 0
    for i, (series, spts) in enumerate(pts.groupby(series_col, sort=True)):
        colour = colours[i % len(colours)]
        means = spts.groupby(x_col)[y_col].agg(["mean", "std"]).reset_index()
        keys = {k: (spts[k].iloc[0] if v is SERIES_OWN else v) for k, v in fit_keys.items()}
        fit = _fit_lookup(fits_df, {series_col: series, **keys})
        identified = fit is not None and bool(fit.get("identified", False))
        smoke = _budget_smoke(spts)
        name = f"q={series:g}" if series_col == "quality" else str(series)
        if any(v is SERIES_OWN for v in fit_keys.values()) and pts["cells"].nunique() > 1:
            cells = spts["cells"].iloc[0]  # the series' own largest N; 0: a frozen pretrained model
            name += f" n={compact_number(cells)}" if cells else " (frozen)"
        grid = _grid_note(spts)
        ax.errorbar(means[x_col], means["mean"], yerr=means["std"].fillna(0), fmt="o", ms=3.5,
                    color=colour, capsize=2, mfc="none" if smoke else colour,  # hollow: budget smoke
                    label=f"{name}{grid}" + ("" if identified else f" ({short_reason(fit)})")
                    + (" (smoke)" if smoke and "smoke" not in grid else ""))
        drawn += len(means)
        if identified:
            x = np.geomspace(means[x_col].min(), means[x_col].max(), 200)
            ax.plot(x, law(x, *[float(fit[p]) for p in params]), "-", color=colour, lw=1.3)
            curves += 1
    label_log_axis(ax, pts[x_col])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("MI (bits)")
    ax.set_title(title)
    ax.legend(ncols=2 if pts[series_col].nunique() > 4 else 1)
    return drawn, curves


def label_log_axis(ax, values, most_ticks: int = 6) -> list[str]:
    """Log x axis; a grid of a few values gets its own values as tick labels (a grid within one decade
    would otherwise show a single label, or none), a longer one decade labels. Returns the labels."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap at 440 px
    grid = np.unique(np.asarray(values, dtype=float)[np.isfinite(values)])
    if 1 <= len(grid) <= most_ticks:
        labels = [compact_number(v) for v in grid]
        ax.set_xticks(grid, labels)
        return labels
    return []


def compact_number(v: float) -> str:
    """Tick text for grid values: 400, 3k, 2.71k, 100k, 1.5M, 0.25."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= size:
            return f"{v / size:.3g}{suffix}"
    return f"{v:.3g}"


def _grid_note(pts: pd.DataFrame) -> str:
    """' (smoke test)' for results of an algorithm run on its own smaller grid (the MI table's `grid`)."""
    labels = sorted(set(pts["grid"].dropna()) - {"study"}) if "grid" in pts.columns else []
    return f" ({', '.join(labels)})" if labels else ""


def _budget_smoke(pts: pd.DataFrame) -> bool:
    """Whether any point comes from a model trained below the study's stopping rules."""
    return "budget_smoke" in pts.columns and bool(pts["budget_smoke"].fillna(False).astype(bool).any())


def plot_signal_laws(mi_df: pd.DataFrame, noise_fits_df: pd.DataFrame, size_fits_df: pd.DataFrame,
                     dataset: str, signal: str, path) -> SignalPlot:
    """One (dataset, signal) figure, one panel a row: MI vs UMIs per cell at the largest cell count, a
    series per algorithm with its noise law; then, per algorithm trained at two sizes or more, MI vs
    training cells, a series per quality with its size law. Only identified fits are drawn as laws."""
    require_columns(mi_df, ["dataset", "signal", "algorithm", "cells", "quality", mi_value_column(mi_df)],
                    "MI table")
    pts = mi_df[(mi_df["dataset"] == dataset) & (mi_df["signal"] == signal)]
    if pts.empty:
        raise InputError(f"MI table: no rows for dataset {dataset!r}, signal {signal!r}")
    # the noise law is per N: each algorithm at its own largest N (its grid may stop below the study's)
    largest = pts.groupby("algorithm")["cells"].transform("max")
    noise_pts = pts[pts["cells"] == largest]
    sizes = sorted(noise_pts["cells"].unique())
    title = f"noise law at n = {sizes[0]:,}" if len(sizes) == 1 else "noise law at each algorithm's largest n"
    panels = [(noise_pts, noise_fits_df, noise_x_column(pts), "algorithm", noise_law,
               ["i_max", "u_bar"], {"dataset": dataset, "signal": signal, "cells": SERIES_OWN},
               "UMIs per cell (nominal)", title)]
    for algorithm, apts in pts.groupby("algorithm", sort=True):
        if apts["cells"].nunique() >= 2:
            panels.append((apts, size_fits_df, "cells", "quality", size_law, ["i_inf", "n0", "s"],
                           {"dataset": dataset, "signal": signal, "algorithm": algorithm}, "training cells",
                           f"size law, {algorithm}{_grid_note(apts)}"))
    with plt.rc_context(LEGIBLE):
        fig, axes = plt.subplots(len(panels), 1, figsize=(WIDTH_IN, PANEL_IN * len(panels)), squeeze=False,
                                 layout="constrained")
        fig.suptitle(f"{dataset}: {signal}")
        drawn = {panel[-1]: _draw_law(ax, *panel) for ax, panel in zip(axes.ravel(), panels)}
        path = _save(fig, path)
    return SignalPlot(path, {t: d[0] for t, d in drawn.items()}, {t: d[1] for t, d in drawn.items()})


def loss_points(history: pd.DataFrame) -> tuple[str, dict[str, pd.DataFrame]]:
    """The x column that has values ('step', else 'epoch') and, per recorded loss, its points.

    SCVI records epochs with an empty step column and Geneformer records steps: the x axis is
    whichever of the two was filled in, not merely present."""
    candidates = [c for c in ("step", "epoch") if c in history.columns]
    if not candidates:
        raise InputError(f"loss history needs a 'step' or 'epoch' column, got {list(history.columns)}")
    x_col = next((c for c in candidates if history[c].notna().any()), candidates[0])
    losses = [c for c in ("train_loss", "validation_loss") if c in history.columns]
    if not losses:
        raise InputError(f"loss history needs 'train_loss' and/or 'validation_loss', got {list(history.columns)}")
    return x_col, {c: history[[x_col, c]].dropna() for c in losses}


def plot_loss_curves(history: pd.DataFrame, path, title: str | None = None,
                     empty_note: str = "no loss values recorded", note: str | None = None) -> Path:
    """Train and validation loss against step (or epoch), markers on every point (a fit with one
    evaluation is one point); ``empty_note`` is written on the axes when nothing was recorded."""
    x_col, series = loss_points(history)
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 3.1), layout="constrained")
    drew = False
    for (col, pts), style in zip(series.items(), ("o-", "s--")):
        if len(pts):
            ax.plot(pts[x_col], pts[col], style, ms=4, label=col.replace("_", " "))
            drew = True
    if drew:
        ax.set_xlabel(x_col)
        ax.set_ylabel("loss")
        ax.legend()
        if note:  # e.g. a closed-form fit: its single point is an evaluation, not a training curve
            ax.text(0.5, 0.03, note, ha="center", va="bottom", fontsize=8, transform=ax.transAxes)
    else:
        _empty(ax, empty_note)
    ax.set_title(title or "loss curves")
    return _save(fig, path)
