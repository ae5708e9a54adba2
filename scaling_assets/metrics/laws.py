"""Scaling laws of information (bits) with sequencing depth and with the number of cells.

noise law  I(u) = I_max - 1/2 log2((1 + u/u_bar) / (u/u_bar + 2^(-2 I_max)))   (u = UMIs per cell)
size law   I(N) = I_inf - (N/N_0)^(-s)                                          (N = training cells)

Fits use the raw MI estimates (``mi_bits_raw``), not max(0, MI): KSG is unbiased around zero, and
averaging clipped values would bias the fits upward where the information is near zero.

Scale parameters (u_bar, N_0) are fitted in log-space, which keeps them positive and makes the
fit well-conditioned across decades; their standard errors come back by the delta method.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

from scaling_assets.errors import InputError
from scaling_assets.metrics.tables import require_columns

# Fewest distinct points for a fit with standard errors: one more than the parameters,
# so that the residual variance (and hence the covariance) is defined.
MIN_POINTS_NOISE = 3
MIN_POINTS_SIZE = 4
NOISE_GROUP = ["dataset", "signal", "algorithm", "cells"]
SIZE_GROUP = ["dataset", "signal", "algorithm", "quality"]
S_MAX = 10.0  # upper bound of the size-law exponent, as the reference
RAW_MI = "mi_bits_raw"


def noise_x_column(mi_df: pd.DataFrame) -> str:
    """The noise law's x: nominal UMIs per cell round(q * u) (one value per quality, so seeds average);
    the measured ``umis_per_cell`` for a table without it."""
    return "umis_nominal" if "umis_nominal" in mi_df.columns and mi_df["umis_nominal"].notna().all() else "umis_per_cell"


def mi_value_column(mi_df: pd.DataFrame) -> str:
    """The MI column the laws are fitted on: the raw estimates; ``mi_bits`` for a table without them."""
    return RAW_MI if RAW_MI in mi_df.columns else "mi_bits"


def noise_law(u, i_max, u_bar):
    r = np.asarray(u, dtype=float) / u_bar
    return i_max - 0.5 * np.log2((1.0 + r) / (r + 2.0 ** (-2.0 * i_max)))


def size_law(n, i_inf, n0, s):
    return i_inf - (np.asarray(n, dtype=float) / n0) ** (-s)


@dataclass
class FitResult:
    law: str
    params: dict[str, float] = field(default_factory=dict)
    se: dict[str, float] = field(default_factory=dict)
    r2: float = float("nan")
    n_points: int = 0
    fitted: bool = False
    reason: str = ""

    def predict(self, v):
        if not self.fitted:
            raise InputError(f"{self.law} law was not fitted ({self.reason}); nothing to predict")
        law = noise_law if self.law == "noise" else size_law
        return law(v, **self.params)


def _clean(v, mi, name: str) -> tuple[np.ndarray, np.ndarray]:
    v, mi = np.asarray(v, dtype=float).ravel(), np.asarray(mi, dtype=float).ravel()
    if len(v) != len(mi):
        raise InputError(f"{name} and mi must have the same length, got {len(v)} and {len(mi)}")
    keep = np.isfinite(v) & np.isfinite(mi) & (v > 0)
    return v[keep], mi[keep]


def _r2(y, yhat) -> float:
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - yhat) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def _best_fit(f, x, y, starts, bounds):
    """curve_fit from several starts; keep the lowest residual. None when all fail."""
    best = None
    for p0 in starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                popt, pcov = curve_fit(f, x, y, p0=p0, bounds=bounds, maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(((f(x, *popt) - y) ** 2).sum())
        if np.isfinite(sse) and (best is None or sse < best[0]):
            best = (sse, popt, pcov)
    return best


def fit_noise_law(u, mi) -> FitResult:
    """Fit I_max and u_bar to (UMIs per cell, MI bits) points."""
    u, mi = _clean(u, mi, "u")
    n = len(np.unique(u))
    if n < MIN_POINTS_NOISE:
        return FitResult("noise", n_points=n, reason=f"too few points: {n} distinct UMIs-per-cell values, need >= {MIN_POINTS_NOISE}")
    log_u = np.log(u)
    f = lambda lu, i_max, log_ubar: noise_law(np.exp(lu), i_max, np.exp(log_ubar))
    top = max(float(mi.max()), 1e-3)
    bounds = ([0.0, log_u.min() - 15], [max(50.0, 10 * top), log_u.max() + 15])
    starts = [(top * m, lu0) for m in (1.05, 1.5) for lu0 in (np.median(log_u), log_u.min(), log_u.max())]
    best = _best_fit(f, log_u, mi, starts, bounds)
    if best is None:
        return FitResult("noise", n_points=n, reason="fit failed: curve_fit did not converge")
    _, (i_max, log_ubar), pcov = best
    se = np.sqrt(np.clip(np.diag(pcov), 0, None))
    u_bar = float(np.exp(log_ubar))
    return FitResult(
        "noise", params={"i_max": float(i_max), "u_bar": u_bar},
        se={"i_max": float(se[0]), "u_bar": float(u_bar * se[1])},  # delta method from log space
        r2=_r2(mi, f(log_u, i_max, log_ubar)), n_points=n, fitted=True,
    )


def fit_size_law(n_cells, mi) -> FitResult:
    """Fit I_inf, N_0 and s to (training cells, MI bits) points."""
    cells, mi = _clean(n_cells, mi, "n")
    n = len(np.unique(cells))
    if n < MIN_POINTS_SIZE:
        return FitResult("size", n_points=n, reason=f"too few points: {n} distinct cell counts, need >= {MIN_POINTS_SIZE}")
    log_n = np.log(cells)
    f = lambda ln, i_inf, log_n0, s: size_law(np.exp(ln), i_inf, np.exp(log_n0), s)
    span = max(float(np.ptp(mi)), 1e-3)
    bounds = ([float(mi.min()) - 10 * span - 10, log_n.min() - 30, 1e-3], [float(mi.max()) + 10 * span + 10, log_n.max() + 30, S_MAX])
    starts = []
    for s0 in (0.2, 0.5, 1.0):
        for gap in (0.1, 1.0):
            i_inf0 = float(mi.max()) + gap * span
            # choose N_0 so the start passes through the smallest-N point
            log_n00 = float(log_n.min() + np.log(max(i_inf0 - mi[np.argmin(log_n)], 1e-3)) / s0)
            starts.append((i_inf0, float(np.clip(log_n00, bounds[0][1], bounds[1][1])), s0))
    best = _best_fit(f, log_n, mi, starts, bounds)
    if best is None:
        return FitResult("size", n_points=n, reason="fit failed: curve_fit did not converge")
    _, (i_inf, log_n0, s), pcov = best
    se = np.sqrt(np.clip(np.diag(pcov), 0, None))
    n0 = float(np.exp(log_n0))
    return FitResult(
        "size", params={"i_inf": float(i_inf), "n0": n0, "s": float(s)},
        se={"i_inf": float(se[0]), "n0": float(n0 * se[1]), "s": float(se[2])},
        r2=_r2(mi, f(log_n, i_inf, log_n0, s)), n_points=n, fitted=True,
    )


def _fit_groups(mi_df: pd.DataFrame, keys: list[str], x_col: str, fit, names: list[str]) -> pd.DataFrame:
    y_col = mi_value_column(mi_df)
    require_columns(mi_df, keys + [x_col, y_col], "MI table")
    rows = []
    for key, group in mi_df.groupby(keys, sort=True, dropna=False):
        # average seeds at each grid point; the fit sees one point per distinct x
        means = group.groupby(x_col)[y_col].mean()
        res = fit(means.index.to_numpy(), means.to_numpy())
        row = dict(zip(keys, key))
        for name in names:
            row[name] = res.params.get(name, np.nan)
            row[f"{name}_se"] = res.se.get(name, np.nan)
        row.update(r2=res.r2, n_points=res.n_points, n_rows=len(group), fitted=res.fitted, reason=res.reason,
                   mi_column=y_col, x_column=x_col,
                   # fitted on a model trained below the study's stopping rules (a smoke test, not a result)
                   budget_smoke=bool(group["budget_smoke"].fillna(False).astype(bool).any())
                   if "budget_smoke" in group.columns else False)
        rows.append(row)
    columns = keys + [c for n in names for c in (n, f"{n}_se")] + ["r2", "n_points", "n_rows", "fitted", "reason",
                                                                   "mi_column", "x_column", "budget_smoke"]
    return pd.DataFrame(rows, columns=columns)


def fit_noise_laws(mi_df: pd.DataFrame) -> pd.DataFrame:
    """Noise-law fit per (dataset, signal, algorithm, cells); seeds averaged per nominal UMIs-per-cell value."""
    return _fit_groups(mi_df, NOISE_GROUP, noise_x_column(mi_df), fit_noise_law, ["i_max", "u_bar"])


def fit_size_laws(mi_df: pd.DataFrame) -> pd.DataFrame:
    """Size-law fit per (dataset, signal, algorithm, quality); seeds averaged per cell count."""
    return _fit_groups(mi_df, SIZE_GROUP, "cells", fit_size_law, ["i_inf", "n0", "s"])
