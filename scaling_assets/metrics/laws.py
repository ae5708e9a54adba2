"""Scaling laws of information (bits) with sequencing depth and with the number of cells.

noise law  I(u) = I_max - 1/2 log2((1 + u/u_bar) / (u/u_bar + 2^(-2 I_max)))   (u = UMIs per cell)
size law   I(N) = I_inf - (N/N_0)^(-s)                                          (N = training cells)

Fit rules (``FIT_RULES``), the reference study's by default:

- least squares on the raw MI estimate (``mi_bits_raw``) of every seed, not on max(0, MI): KSG is
  unbiased around zero, and clipped values would bias the fits upward where the information is small;
- ``reference`` bounds: size law for PCA and random projection I_inf in [max MI, 1.5 max MI] (max MI:
  the largest mean over seeds at one N, as a fit on the seed means sees it; the largest single seed's
  estimate would put the bound on the noise), N_0 >= 1e-6, s >= 1e-3; for SCVI and Geneformer (and any other learned model) N_0 in [10, 1e7],
  s in [0.01, 10], I_inf in [0.1, 10]; noise law u_bar >= 0, I_max >= 0;
- ``wide`` bounds: wide boxes around the data (the platform's earlier fit), for comparison.

A fit is *identified* when no parameter sits at a bound and each standard error is below half its
value; otherwise ``identified`` is false and ``reason`` says which parameter failed. A series whose MI
does not depend on N (random projection learns nothing from its cells) has no size law: when its spread
over N is within two standard errors it is not fitted, with the reason "no dependence on N".

Scale parameters (u_bar, N_0) are fitted in log-space, which keeps them positive and makes the fit
well-conditioned across decades; their standard errors come back by the delta method. An unbounded
side of a log-space parameter is a practical bound far beyond the data (``LOG_OPEN`` e-folds).
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
RAW_MI = "mi_bits_raw"
MI_SE = "mi_bits_se"
FIT_RULES = ("reference", "wide")
DEFAULT_FIT_RULES = "reference"
# Models whose reference size-law bounds tie I_inf to the series' own maximum (the reference's rule for
# the linear baselines); every other algorithm gets the learned models' box.
LINEAR_ALGORITHMS = ("pca", "random_projection")
S_MAX = 10.0  # the reference's upper bound of the size-law exponent for learned models (and the wide rule's)
LOG_OPEN = 40.0  # e-folds beyond the data that stand for "unbounded" on a log-space parameter
IDENTIFIED_SE_RATIO = 0.5  # a standard error must be below half its parameter
DEPENDENCE_SIGMAS = 2.0  # a spread over N within this many standard errors is no dependence
GOOD_R2 = 0.9  # the R^2 that the summaries count as a good fit


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


def check_rules(rules: str) -> str:
    if rules not in FIT_RULES:
        raise InputError(f"unknown fit rules {rules!r}; expected one of {list(FIT_RULES)}")
    return rules


@dataclass
class FitResult:
    law: str
    params: dict[str, float] = field(default_factory=dict)
    se: dict[str, float] = field(default_factory=dict)
    r2: float = float("nan")
    n_points: int = 0  # distinct x values
    n_rows: int = 0  # estimates fitted (every seed)
    fitted: bool = False
    identified: bool = False
    reason: str = ""  # why not fitted, or why not identified; empty for an identified fit
    bounds: str = ""  # the rule and box the fit was held to

    def predict(self, v):
        if not self.fitted:
            raise InputError(f"{self.law} law was not fitted ({self.reason}); nothing to predict")
        law = noise_law if self.law == "noise" else size_law
        return law(v, **self.params)


@dataclass(frozen=True)
class _Param:
    """One fitted parameter: its bounds in natural units (what the reason names) and whether it is
    fitted in log space."""
    name: str
    lower: float
    upper: float
    log: bool = False
    lower_label: str = ""  # e.g. "max MI"; default: the number

    def fit_bounds(self, log_x: np.ndarray) -> tuple[float, float]:
        if not self.log:
            return self.lower, self.upper
        lo = np.log(self.lower) if self.lower > 0 else float(log_x.min()) - LOG_OPEN
        hi = np.log(self.upper) if np.isfinite(self.upper) else float(log_x.max()) + LOG_OPEN
        return float(lo), float(hi)


def _clean(v, mi, name: str, se=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v, mi = np.asarray(v, dtype=float).ravel(), np.asarray(mi, dtype=float).ravel()
    if len(v) != len(mi):
        raise InputError(f"{name} and mi must have the same length, got {len(v)} and {len(mi)}")
    se = np.zeros_like(mi) if se is None else np.nan_to_num(np.asarray(se, dtype=float).ravel(), nan=0.0)
    keep = np.isfinite(v) & np.isfinite(mi) & (v > 0)
    return v[keep], mi[keep], se[keep]


def _r2(y, yhat) -> float:
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - yhat) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def _best_fit(f, x, y, starts, bounds):
    """curve_fit from several starts; keep the lowest residual. None when all fail."""
    best = None
    lo, hi = np.asarray(bounds[0], float), np.asarray(bounds[1], float)
    for p0 in starts:
        # a start must lie strictly inside the box
        margin = 1e-9 * (1 + np.abs(np.where(np.isfinite(lo) & np.isfinite(hi), np.maximum(abs(lo), abs(hi)), 0)))
        p0 = np.clip(np.asarray(p0, float), lo + margin, hi - margin)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)  # overflow probing far corners of the box
                popt, pcov = curve_fit(f, x, y, p0=p0, bounds=bounds, maxfev=2000)
        except (RuntimeError, ValueError):
            continue
        sse = float(((f(x, *popt) - y) ** 2).sum())
        if np.isfinite(sse) and (best is None or sse < best[0]):
            best = (sse, popt, pcov)
    return best


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _finish(law: str, params: list[_Param], popt, pcov, fit_lo, fit_hi, r2: float, n_points: int,
            n_rows: int, bounds_note: str) -> FitResult:
    """Natural-unit parameters, delta-method standard errors, and the identification verdict."""
    se_fit = np.sqrt(np.clip(np.diag(pcov), 0, None))
    values, ses, problems = {}, {}, []
    for p, t, s, lo, hi in zip(params, popt, se_fit, fit_lo, fit_hi):
        value = float(np.exp(t)) if p.log else float(t)
        se = float(value * s) if p.log else float(s)  # delta method from log space
        values[p.name], ses[p.name] = value, se
        tol = 1e-6 * max(1.0, abs(t))
        if abs(t - lo) <= tol:
            label = p.lower_label or (_fmt(p.lower) if p.lower > 0 or not p.log else "0 (unbounded)")
            problems.append(f"{p.name} at its lower bound {label}")
        elif abs(t - hi) <= tol:
            label = _fmt(p.upper) if np.isfinite(p.upper) else "infinity (unbounded)"
            problems.append(f"{p.name} at its upper bound {label}")
        elif not np.isfinite(se):
            problems.append(f"{p.name} standard error not finite")
        elif not se < IDENTIFIED_SE_RATIO * abs(value):
            problems.append(f"{p.name} standard error {_fmt(se)} not below half its value {_fmt(value)}")
    return FitResult(law, params=values, se=ses, r2=r2, n_points=n_points, n_rows=n_rows, fitted=True,
                     identified=not problems, reason="; ".join(problems), bounds=bounds_note)


def noise_params(rules: str, u: np.ndarray, mi: np.ndarray) -> tuple[list[_Param], str]:
    """The noise law's parameters under a rule, and a note of the box for the fit table."""
    if check_rules(rules) == "reference":
        return [_Param("i_max", 0.0, np.inf), _Param("u_bar", 0.0, np.inf, log=True)], "reference: i_max >= 0, u_bar > 0"
    top = max(50.0, 10 * max(float(mi.max()), 1e-3))
    # the earlier fit's box: u_bar within 15 e-folds of the data
    return ([_Param("i_max", 0.0, top), _Param("u_bar", float(u.min() * np.exp(-15)), float(u.max() * np.exp(15)),
                                               log=True)],
            f"wide: i_max in [0, {_fmt(top)}], u_bar within 15 e-folds of the data")


def fit_noise_law(u, mi, *, rules: str = DEFAULT_FIT_RULES) -> FitResult:
    """Fit I_max and u_bar to (UMIs per cell, MI bits) estimates (every seed's)."""
    u, mi, _ = _clean(u, mi, "u")
    n = len(np.unique(u))
    if n < MIN_POINTS_NOISE:
        return FitResult("noise", n_points=n, n_rows=len(u),
                         reason=f"too few points: {n} distinct UMIs-per-cell values, need >= {MIN_POINTS_NOISE}")
    log_u = np.log(u)
    params, note = noise_params(rules, u, mi)
    lo, hi = zip(*(p.fit_bounds(log_u) for p in params))
    f = lambda lu, i_max, log_ubar: noise_law(np.exp(lu), i_max, np.exp(log_ubar))
    top = max(float(mi.max()), 1e-3)
    starts = [(top * m, lu0) for m in (1.05, 1.5) for lu0 in (np.median(log_u), log_u.min(), log_u.max())]
    best = _best_fit(f, log_u, mi, starts, (lo, hi))
    if best is None:
        return FitResult("noise", n_points=n, n_rows=len(u), reason="fit failed: curve_fit did not converge",
                         bounds=note)
    _, popt, pcov = best
    return _finish("noise", params, popt, pcov, lo, hi, _r2(mi, f(log_u, *popt)), n, len(u), note)


def size_params(rules: str, algorithm: str | None, cells: np.ndarray, mi: np.ndarray) -> tuple[list[_Param], str]:
    """The size law's parameters under a rule, and a note of the box for the fit table."""
    if check_rules(rules) == "wide":
        span = max(float(np.ptp(mi)), 1e-3)
        lo_i, hi_i = float(mi.min()) - 10 * span - 10, float(mi.max()) + 10 * span + 10
        n_lo, n_hi = float(cells.min() * np.exp(-30)), float(cells.max() * np.exp(30))
        return ([_Param("i_inf", lo_i, hi_i), _Param("n0", n_lo, n_hi, log=True), _Param("s", 1e-3, S_MAX)],
                f"wide: i_inf in [{_fmt(lo_i)}, {_fmt(hi_i)}], n0 within 30 e-folds of the data, s in [0.001, {S_MAX:g}]")
    if algorithm in LINEAR_ALGORITHMS:
        top = max_mean_mi(cells, mi)
        return ([_Param("i_inf", top, 1.5 * top, lower_label=f"max MI {_fmt(top)}"),
                 _Param("n0", 1e-6, np.inf, log=True), _Param("s", 1e-3, np.inf)],
                f"reference (linear): i_inf in [max MI, 1.5 max MI] = [{_fmt(top)}, {_fmt(1.5 * top)}], "
                "n0 >= 1e-6, s >= 0.001")
    return ([_Param("i_inf", 0.1, 10.0), _Param("n0", 10.0, 1e7, log=True), _Param("s", 0.01, S_MAX)],
            "reference (learned): i_inf in [0.1, 10], n0 in [10, 1e7], s in [0.01, 10]")


def max_mean_mi(cells: np.ndarray, mi: np.ndarray) -> float:
    """The reference's "max MI" of a size-law series: the largest of its means over seeds at one N."""
    return float(max(mi[cells == n].mean() for n in np.unique(cells)))


def n_dependence(cells: np.ndarray, mi: np.ndarray, se: np.ndarray) -> tuple[bool, str]:
    """Whether MI changes with N beyond its standard errors: the spread between the highest and the
    lowest mean over N against two standard errors of their difference. A point's standard error is
    the larger of the seeds' standard error of the mean and the estimates' own (``mi_bits_se``)."""
    means, errors = [], []
    for n in np.unique(cells):
        at = cells == n
        k = int(at.sum())
        seed_var = float(np.var(mi[at], ddof=1)) / k if k > 1 else 0.0
        means.append(float(mi[at].mean()))
        errors.append(np.sqrt(max(seed_var, float(np.mean(se[at] ** 2)) / k)))
    means, errors = np.array(means), np.array(errors)
    hi, lo = int(np.argmax(means)), int(np.argmin(means))
    spread = float(means[hi] - means[lo])
    tolerance = DEPENDENCE_SIGMAS * float(np.hypot(errors[hi], errors[lo]))
    detail = (f"MI spread {spread:.3f} bits over {_fmt(cells.min())}-{_fmt(cells.max())} cells, "
              f"within {DEPENDENCE_SIGMAS:g} standard errors ({tolerance:.3f} bits)")
    return spread > tolerance, detail


def fit_size_law(n_cells, mi, *, algorithm: str | None = None, rules: str = DEFAULT_FIT_RULES,
                 mi_se=None) -> FitResult:
    """Fit I_inf, N_0 and s to (training cells, MI bits) estimates (every seed's). ``mi_se``: each
    estimate's standard error, for the dependence check (seeds' scatter is used as well)."""
    check_rules(rules)
    cells, mi, se = _clean(n_cells, mi, "n", mi_se)
    n = len(np.unique(cells))
    if n < MIN_POINTS_SIZE:
        return FitResult("size", n_points=n, n_rows=len(cells),
                         reason=f"too few points: {n} distinct cell counts, need >= {MIN_POINTS_SIZE}")
    depends, detail = n_dependence(cells, mi, se)
    if not depends:
        return FitResult("size", n_points=n, n_rows=len(cells), reason=f"no dependence on N: {detail}")
    if rules == "reference" and algorithm in LINEAR_ALGORITHMS and max_mean_mi(cells, mi) <= 0:
        return FitResult("size", n_points=n, n_rows=len(cells),
                         reason="no information: max MI <= 0, so the reference bound [max MI, 1.5 max MI] is empty")
    params, note = size_params(rules, algorithm, cells, mi)
    log_n = np.log(cells)
    lo, hi = zip(*(p.fit_bounds(log_n) for p in params))
    f = lambda ln, i_inf, log_n0, s: size_law(np.exp(ln), i_inf, np.exp(log_n0), s)
    first = float(mi[cells == cells.min()].mean())
    starts = []
    for s0 in (0.2, 0.5, 1.0):
        for i_inf0 in _i_inf_starts(params[0], mi):
            # choose N_0 so the start passes through the smallest-N point
            log_n00 = float(log_n.min() + np.log(max(i_inf0 - first, 1e-3)) / s0)
            starts.append((i_inf0, float(np.clip(log_n00, lo[1], hi[1])), s0))
    best = _best_fit(f, log_n, mi, starts, (lo, hi))
    if best is None:
        return FitResult("size", n_points=n, n_rows=len(cells), reason="fit failed: curve_fit did not converge",
                         bounds=note)
    _, popt, pcov = best
    return _finish("size", params, popt, pcov, lo, hi, _r2(mi, f(log_n, *popt)), n, len(cells), note)


def _i_inf_starts(p: _Param, mi: np.ndarray) -> list[float]:
    top, span = float(mi.max()), max(float(np.ptp(mi)), 1e-3)
    starts = [top + 0.1 * span, top + span, top + 0.02 * abs(top) + 1e-3]
    return [float(np.clip(v, p.lower, p.upper)) for v in starts]


def _numeric(group: pd.DataFrame, column: str) -> tuple[pd.Series, int]:
    """The column as numbers, and how many of its values were present but not numbers."""
    values = pd.to_numeric(group[column], errors="coerce")
    return values, int((values.isna() & group[column].notna()).sum())


def _fit_groups(mi_df: pd.DataFrame, law: str, keys: list[str], x_col: str, fit, names: list[str],
                rules: str) -> pd.DataFrame:
    check_rules(rules)
    y_col = mi_value_column(mi_df)
    require_columns(mi_df, keys + [x_col, y_col], "MI table")
    rows = []
    for key, group in mi_df.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, key))
        x, bad_x = _numeric(group, x_col)
        y, bad_y = _numeric(group, y_col)
        if bad_x or bad_y:  # this group cannot be fitted; the others still are
            bad = [f"{count} non-numeric value(s) in {col}" for col, count in ((x_col, bad_x), (y_col, bad_y)) if count]
            res = FitResult(law, n_rows=len(group),
                            reason="; ".join(bad))
        else:
            se = pd.to_numeric(group[MI_SE], errors="coerce").to_numpy() if MI_SE in group.columns else None
            res = fit(x.to_numpy(), y.to_numpy(), row=row, rules=rules, se=se)
        for name in names:
            row[name] = res.params.get(name, np.nan)
            row[f"{name}_se"] = res.se.get(name, np.nan)
        row.update(r2=res.r2, n_points=res.n_points, n_rows=len(group), fitted=res.fitted, identified=res.identified,
                   reason=res.reason, fit_rules=rules, bounds=res.bounds, mi_column=y_col, x_column=x_col,
                   # fitted on a model trained below the study's stopping rules (a smoke test, not a result)
                   budget_smoke=bool(group["budget_smoke"].fillna(False).astype(bool).any())
                   if "budget_smoke" in group.columns else False)
        rows.append(row)
    columns = keys + [c for n in names for c in (n, f"{n}_se")] + [
        "r2", "n_points", "n_rows", "fitted", "identified", "reason", "fit_rules", "bounds", "mi_column", "x_column",
        "budget_smoke"]
    return pd.DataFrame(rows, columns=columns)


def fit_noise_laws(mi_df: pd.DataFrame, rules: str = DEFAULT_FIT_RULES) -> pd.DataFrame:
    """Noise-law fit per (dataset, signal, algorithm, cells) on every seed's estimate at each nominal
    UMIs-per-cell value."""
    return _fit_groups(mi_df, "noise", NOISE_GROUP, noise_x_column(mi_df),
                       lambda x, y, row, rules, se: fit_noise_law(x, y, rules=rules),
                       ["i_max", "u_bar"], rules)


def fit_size_laws(mi_df: pd.DataFrame, rules: str = DEFAULT_FIT_RULES) -> pd.DataFrame:
    """Size-law fit per (dataset, signal, algorithm, quality) on every seed's estimate at each cell count.
    A frozen pretrained model (rows at 0 cells: it learns from none of the study's cells) has no size law."""
    mi_df = mi_df[mi_df["cells"] > 0] if "cells" in mi_df.columns else mi_df
    return _fit_groups(mi_df, "size", SIZE_GROUP, "cells",
                       lambda x, y, row, rules, se: fit_size_law(x, y, algorithm=row["algorithm"], rules=rules,
                                                                 mi_se=se),
                       ["i_inf", "n0", "s"], rules)


def identified_counts(fits: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Per group (default: dataset and algorithm): fits, fitted, identified, and identified with
    R^2 >= 0.9 — what a reader checks before trusting a law."""
    by = by or ["dataset", "algorithm"]
    good = fits["identified"].astype(bool) & (fits["r2"] >= GOOD_R2)
    counts = fits.assign(good=good).groupby(by, sort=True).agg(
        fits=("identified", "size"), fitted=("fitted", "sum"), identified=("identified", "sum"),
        identified_r2_ge_0_9=("good", "sum"))
    return counts.astype(int).reset_index()
