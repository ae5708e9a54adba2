"""Plots of the study (PNG, matplotlib Agg): scaling-law fits and model loss curves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from scaling_assets.errors import InputError  # noqa: E402
from scaling_assets.fs import atomic_file  # noqa: E402
from scaling_assets.metrics.laws import (  # noqa: E402
    FIT_STATUSES, fit_status, learns_from_cells, mi_value_column, noise_law, noise_x_column, pool_over_sizes, size_law,
)
from scaling_assets.metrics.tables import require_columns  # noqa: E402

DPI = 100
# The one width of every image, in pixels: shown whole and at its own size (so its type sizes hold) in the
# asset Overview's value column of a 1,280 px window, which is 294 px beside metadata names of 22 characters
# on the widest dates (scaling_assets_tests/test_assets_ui_fit.py measures it in Chromium).
WIDTH_PX = 280
WIDTH_IN = WIDTH_PX / DPI


def _save(fig, path) -> Path:
    """Save as PNG through a temporary file, then rename (no half-written images). The figure keeps its
    own width (no tight bounding box), so every image is WIDTH_PX wide."""
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return path


# Type sizes: nothing below 9 pt, which at DPI 100 is 12.5 px a line and ~9 px a capital letter when the
# image is shown WIDTH_PX wide.
MIN_TEXT_PT = 9
LEGIBLE = {"font.size": MIN_TEXT_PT, "axes.titlesize": MIN_TEXT_PT, "axes.labelsize": MIN_TEXT_PT,
           "xtick.labelsize": MIN_TEXT_PT, "ytick.labelsize": MIN_TEXT_PT, "legend.fontsize": MIN_TEXT_PT,
           "legend.title_fontsize": MIN_TEXT_PT, "figure.titlesize": 10}
PANEL_IN = 2.5  # height of one panel's axes
KEY_ROW_IN = 0.2  # height of one row of a key (legend) at 9 pt
# A point's marker says what its series' fit is (FIT_STATUSES); a hollow marker, that the point comes
# from a model trained below the study's stopping rules (budget smoke).
MARKERS = {"identified": "o", "not identified": "s", "no N dependence": "D", "too few points": "^",
           "not fitted": "v"}
MARKER_LABELS = {"identified": "law identified (line)", "not identified": "fitted, not identified",
                 "no N dependence": "no N dependence: plateau (dashed)", "too few points": "too few points",
                 "not fitted": "not fitted"}
SMOKE_LABEL = "hollow: budget smoke"
KEY_COLOUR = "0.25"  # the marker key's handles: shape only, no series colour


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


class Panel(NamedTuple):
    """One axes of a signal's figure: the points of one law, a series per value of ``series_col``."""
    title: str
    pts: pd.DataFrame
    fits: pd.DataFrame
    x_col: str
    series_col: str
    law: Callable
    params: list[str]
    fit_keys: dict  # fit-table columns to match, besides the series' own value
    xlabel: str
    colours: dict  # series value -> colour


class SignalPlot(NamedTuple):
    path: Path
    points: dict[str, int]  # panel title -> points drawn (means over seeds)
    curves: dict[str, int]  # panel title -> law curves drawn (identified fits only)
    markers: pd.DataFrame  # one row per point drawn: panel, series, x, mi, status, marker, hollow
    lines: pd.DataFrame  # one row per line drawn: panel, series, kind ("law" or "plateau"), level (plateau's I_inf)


def _series_points(spts: pd.DataFrame, x_col: str, y_col: str) -> pd.DataFrame:
    """Per x: the mean over seeds, their sd, and whether any estimate there is budget smoke."""
    smoke = spts["budget_smoke"].fillna(False).astype(bool) if "budget_smoke" in spts.columns else False
    return (spts.assign(_smoke=smoke).groupby(x_col)
            .agg(mean=(y_col, "mean"), sd=(y_col, "std"), smoke=("_smoke", "any")).reset_index())


def _draw_panel(ax, panel: Panel) -> tuple[list[dict], list[dict]]:
    """Each series' points (marker: its fit's status; hollow: budget smoke) with seed sd bars; the law
    where the fit is identified, the plateau (dashed) where MI does not depend on N. Returns the points
    and the lines drawn."""
    y_col = mi_value_column(panel.pts)  # the points the laws were fitted on
    points, lines = [], []
    for series, spts in panel.pts.groupby(panel.series_col, sort=True):
        colour = panel.colours[series]
        fit = _fit_lookup(panel.fits, {panel.series_col: series, **{
            k: (spts[k].iloc[0] if v is SERIES_OWN else v) for k, v in panel.fit_keys.items()}})
        status = fit_status(fit)
        means = _series_points(spts, panel.x_col, y_col)
        ax.errorbar(means[panel.x_col], means["mean"], yerr=means["sd"].fillna(0), fmt="none", ecolor=colour,
                    elinewidth=0.8, capsize=2)
        for hollow, at in means.groupby("smoke"):
            ax.plot(at[panel.x_col], at["mean"], ls="", marker=MARKERS[status], ms=5, color=colour,
                    mfc="white" if hollow else colour, mew=1.2)
        points += [{"panel": panel.title, "series": series, "x": float(r[panel.x_col]), "mi": float(r["mean"]),
                    "status": status, "marker": MARKERS[status], "hollow": bool(r["smoke"])}
                   for _, r in means.iterrows()]
        x = np.geomspace(means[panel.x_col].min(), means[panel.x_col].max(), 200)
        if status == "identified":
            ax.plot(x, panel.law(x, *[float(fit[p]) for p in panel.params]), "-", color=colour, lw=1.3)
            lines.append({"panel": panel.title, "series": series, "kind": "law", "level": np.nan})
        elif status == "no N dependence" and np.isfinite(fit.get("i_inf", np.nan)):
            ax.plot(x[[0, -1]], [fit["i_inf"]] * 2, "--", color=colour, lw=1.2)
            lines.append({"panel": panel.title, "series": series, "kind": "plateau", "level": float(fit["i_inf"])})
    label_log_axis(ax, panel.pts[panel.x_col])
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel("MI (bits)")
    ax.set_title(panel.title)
    return points, lines


def _text_width_px(fig, text: str) -> float:
    t = fig.text(0, 0, text, fontsize=plt.rcParams["legend.fontsize"])
    width = t.get_window_extent(fig.canvas.get_renderer()).width
    t.remove()
    return width


KEY_SPACING = {"handlelength": 1.5, "handletextpad": 0.6, "columnspacing": 1.2}  # in font sizes


def _key_columns(fig, labels: list[str]) -> int:
    """Legend columns: as few rows as the figure's width allows (the widest entry, a font size spare each
    side), the entries spread evenly over them (matplotlib fills a column before the next)."""
    em = plt.rcParams["legend.fontsize"] * DPI / 72
    entry = max(_text_width_px(fig, label) for label in labels) + em * (
        KEY_SPACING["handlelength"] + KEY_SPACING["handletextpad"] + KEY_SPACING["columnspacing"])
    most = max(1, min(len(labels), int((WIDTH_PX - 2 * em) // entry)))
    rows = -(-len(labels) // most)
    return -(-len(labels) // rows)


def _add_key(fig, slot, handles, labels: list[str]) -> float:
    """A legend in an axes of its own (no data under it), in as many columns as fit the width; returns the
    height (inches) it needs."""
    ax = fig.add_subplot(slot)
    ax.set_axis_off()
    ncols = _key_columns(fig, labels)
    # centred on the figure, not on the key's axes: constrained layout shifts that axes right with the data
    # axes' y labels, and a key as wide as the figure would run off the right edge
    centre = blended_transform_factory(fig.transFigure, ax.transAxes)
    ax.legend(handles, labels, loc="center", bbox_to_anchor=(0.5, 0.5), bbox_transform=centre, ncols=ncols,
              frameon=False, borderaxespad=0, **KEY_SPACING)
    return KEY_ROW_IN * -(-len(labels) // ncols) + 0.05


def _colour_key(panel: Panel) -> tuple[list, list[str]]:
    # qualities from the deepest down, the order of their colours
    order = sorted(panel.pts[panel.series_col].unique(), reverse=panel.series_col == "quality")
    names = {series: _series_name(panel, series) for series in order}
    return [Line2D([], [], color=panel.colours[s], lw=3) for s in names], list(names.values())


def _series_name(panel: Panel, series) -> str:
    """A series' identity only (its fit's status is its marker): q=0.3, pca, scvi n=1.6k, random_projection all n."""
    if panel.series_col == "quality":
        return f"q={series:.3g}"
    spts = panel.pts[panel.pts[panel.series_col] == series]
    name = str(series)
    if "sizes_pooled" in spts.columns and spts["sizes_pooled"].max() > 1:
        name += " all n"  # pooled over N: a model that does not learn from its cells
    elif panel.pts["cells"].nunique() > 1:
        cells = spts["cells"].iloc[0]  # the series' own largest N; 0: a frozen pretrained model
        name += f" n={compact_number(cells)}" if cells else " (frozen)"
    return name + _grid_note(spts)


def _marker_key(points: pd.DataFrame) -> tuple[list, list[str]]:
    present = [s for s in FIT_STATUSES if s in set(points["status"])]
    handles = [Line2D([], [], ls="", marker=MARKERS[s], ms=5, color=KEY_COLOUR) for s in present]
    labels = [MARKER_LABELS[s] for s in present]
    if points["hollow"].any():
        handles.append(Line2D([], [], ls="", marker="o", ms=5, color=KEY_COLOUR, mfc="white", mew=1.2))
        labels.append(SMOKE_LABEL)
    return handles, labels


SERIES_OWN = object()  # a fit key whose value is the series' own (its largest N in the noise panel)


def label_log_axis(ax, values, most_ticks: int = 6) -> list[str]:
    """Log x axis; a grid of a few values gets its own values as tick labels (a grid within one decade
    would otherwise show a single label, or none), a longer one decade labels. Returns the labels."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap at WIDTH_PX
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


def _noise_points(pts: pd.DataFrame) -> pd.DataFrame:
    """Each algorithm at its own largest N (its grid may stop below the study's); a model that does not learn
    from its cells pooled over N per (quality, seed), as its one noise-law fit was."""
    learns = learns_from_cells(pts)
    y_col, x_col = mi_value_column(pts), noise_x_column(pts)
    parts = []
    for algorithm, apts in pts.groupby("algorithm", sort=True):
        if learns[algorithm]:
            parts.append(apts[apts["cells"] == apts["cells"].max()])
            continue
        numeric = apts.assign(**{c: pd.to_numeric(apts[c], errors="coerce") for c in (x_col, y_col)})
        columns = [c for c in ("quality", "seed", "cells", x_col, y_col, "budget_smoke") if c in numeric.columns]
        pooled = pool_over_sizes(numeric[columns], ["quality"])
        parts.append(pooled.assign(algorithm=algorithm, cells=apts["cells"].max(),  # as its fit-table row
                                   grid=apts["grid"].iloc[0] if "grid" in apts.columns else None))
    return pd.concat(parts, ignore_index=True)


def _panels(pts: pd.DataFrame, noise_fits_df: pd.DataFrame, size_fits_df: pd.DataFrame, dataset: str,
            signal: str) -> list[Panel]:
    """The noise-law panel, then a size-law panel per algorithm trained at two sizes or more."""
    noise_pts = _noise_points(pts)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    algorithm_colours = {a: palette[i % len(palette)] for i, a in enumerate(sorted(pts["algorithm"].unique()))}
    # the same quality has the same colour in every size panel
    quality_colours = {q: plt.get_cmap("viridis")(v) for q, v in zip(
        sorted(pts["quality"].unique(), reverse=True), np.linspace(0, 0.85, pts["quality"].nunique()))}
    own = noise_pts.get("sizes_pooled", pd.Series(1, noise_pts.index)).fillna(1) == 1
    sizes = sorted(noise_pts.loc[own if own.any() else slice(None), "cells"].unique())
    title = f"noise law at n = {sizes[0]:,}" if len(sizes) == 1 else "noise law, each at its largest n"
    panels = [Panel(title, noise_pts, noise_fits_df, noise_x_column(pts), "algorithm", noise_law, ["i_max", "u_bar"],
                    {"dataset": dataset, "signal": signal, "cells": SERIES_OWN}, "UMIs per cell (nominal)",
                    algorithm_colours)]
    for algorithm, apts in pts.groupby("algorithm", sort=True):
        if apts["cells"].nunique() >= 2:
            panels.append(Panel(f"size law, {algorithm}{_grid_note(apts)}", apts, size_fits_df, "cells", "quality",
                                size_law, ["i_inf", "n0", "s"],
                                {"dataset": dataset, "signal": signal, "algorithm": algorithm}, "training cells",
                                quality_colours))
    return panels


def draw_signal_laws(mi_df: pd.DataFrame, noise_fits_df: pd.DataFrame, size_fits_df: pd.DataFrame,
                     dataset: str, signal: str):
    """The figure of ``plot_signal_laws`` (not saved; the caller closes it) and what it drew."""
    require_columns(mi_df, ["dataset", "signal", "algorithm", "cells", "quality", mi_value_column(mi_df)],
                    "MI table")
    pts = mi_df[(mi_df["dataset"] == dataset) & (mi_df["signal"] == signal)]
    if pts.empty:
        raise InputError(f"MI table: no rows for dataset {dataset!r}, signal {signal!r}")
    panels = _panels(pts, noise_fits_df, size_fits_df, dataset, signal)
    with plt.rc_context(LEGIBLE):
        fig = plt.figure(figsize=(WIDTH_IN, 1.0), dpi=DPI, layout="constrained")  # height set once drawn
        grid = fig.add_gridspec(2 * len(panels) + 1, 1)
        points, lines, heights = [], [], []
        for i, panel in enumerate(panels):
            drawn, drawn_lines = _draw_panel(fig.add_subplot(grid[2 * i]), panel)
            points += drawn
            lines += drawn_lines
            heights += [PANEL_IN, _add_key(fig, grid[2 * i + 1], *_colour_key(panel))]
        points = pd.DataFrame(points, columns=["panel", "series", "x", "mi", "status", "marker", "hollow"])
        lines = pd.DataFrame(lines, columns=["panel", "series", "kind", "level"])
        heights.append(_add_key(fig, grid[-1], *_marker_key(points)))
        grid.set_height_ratios(heights)
        fig.set_size_inches(WIDTH_IN, sum(heights) + 0.35)  # + the figure title
        fig.suptitle(f"{dataset}: {signal}")
    counts = points.groupby("panel", sort=False).size()
    curves = lines[lines["kind"] == "law"].groupby("panel").size()
    titles = [p.title for p in panels]
    return fig, SignalPlot(None, {t: int(counts.get(t, 0)) for t in titles}, {t: int(curves.get(t, 0)) for t in titles},
                           points, lines)


def plot_signal_laws(mi_df: pd.DataFrame, noise_fits_df: pd.DataFrame, size_fits_df: pd.DataFrame,
                     dataset: str, signal: str, path) -> SignalPlot:
    """One (dataset, signal) figure, WIDTH_PX wide, one panel a row: MI vs UMIs per cell at each algorithm's
    largest cell count (a model that does not learn from its cells: pooled over N), a series per algorithm
    with its noise law; then, per algorithm trained at two sizes or more, MI vs training cells, a series per
    quality with its size law. Only identified fits are drawn as laws, a plateau (no N dependence) dashed; a
    point's marker says its series' fit status, hollow a budget-smoke point. Each panel's colour key sits
    under it, the marker key at the bottom: no legend over data."""
    fig, drawn = draw_signal_laws(mi_df, noise_fits_df, size_fits_df, dataset, signal)
    return drawn._replace(path=_save(fig, path))


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
