"""Scaling laws of information (bits) with sequencing depth and with the number of cells.

noise law  I(u) = I_max - 1/2 log2((1 + u/u_bar) / (u/u_bar + 2^(-2 I_max)))   (u = UMIs per cell)
size law   I(N) = I_inf - (N/N_0)^(-s)                                          (N = training cells)

Fit rules (``FIT_RULES``), the reference study's by default:

- least squares on the raw MI estimate (``mi_bits_raw``) of every seed, not on max(0, MI): KSG is
  unbiased around zero, and clipped values would bias the fits upward where the information is small;
- ``reference`` bounds: size law for PCA and random projection I_inf in [max MI, 1.5 max MI] (max MI: the
  largest mean over seeds at one N, as a fit on the seed means sees it; the largest single seed's estimate
  would put the bound on the noise), N_0 >= 1e-6, s >= 1e-3, except that the fit's lower bound on I_inf is
  the largest lower confidence bound of a mean, max over N of (mean - 2 standard errors)
  (``I_INF_FLOOR_SES``): the law stays below I_inf at every N, so I_inf exceeds the true MI at every N,
  which that bound does with ~98% confidence, while the largest noisy mean sits above a plateau reached
  inside the grid and held every such fit at its bound (never identified); for SCVI and Geneformer (and any
  other learned model) N_0 in [10, 1e7], s in [0.01, 10], I_inf in [0.1, 10]; noise law u_bar >= 0,
  I_max >= 0. Algorithm names match in any spelling (``PCA``, ``RandomProjection`` as in the reference's own
  table);
- ``wide`` bounds: wide boxes around the data (the platform's earlier fit), for comparison.

A fit is *identified* when no parameter sits at a bound and each standard error is below half its
value; otherwise ``identified`` is false and ``reason`` says which parameter failed.

Whether a series' MI depends on N is a test at a stated false-positive rate (``DEPENDENCE_ALPHA``, 5%:
a series whose true MI is the same at every N is called dependent in 5% of draws or fewer), in two parts
that share it (Bonferroni, 2.5% each): the spread of the means over N (a weighted chi-square, or F, test of
homogeneity) and their trend in log N (a weighted regression slope, what a size law looks like; it finds
a modest rise that the spread alone misses). The noise the means are held against: with repeated
estimates at an N (seeds), the pooled within-N variance of the estimates (one-way ANOVA: F tests with
its degrees of freedom); with one estimate per N, each estimate's own standard error (``mi_bits_se``;
chi-square tests). Comparing only the highest and the lowest of K means, as this module did first,
called a flat series dependent in 19% (K = 4) to 60% (K = 10) of draws at two standard errors.

A series whose MI does not depend on N has no size-law *shape*, but still a plateau: ``i_inf`` is the
constant that the rule's least squares gives, with its standard error; n0, s and R^2 are empty, ``fitted``
and ``identified`` false, ``reason`` "no dependence on N: ...", ``depends_on_n`` false. The constant is the
inverse-variance-weighted mean of the means over N, held to the rule's I_inf box:

- ``reference`` for PCA and random projection: the reference's box starts at the largest mean, which
  every weighted mean lies below, so the plateau is that bound, the largest mean over N (what the
  reference's published fits give for such series; kept for them, although a fitted curve's floor is
  lower by 2 standard errors). It is biased upward by noise: the largest of K noisy means of one level
  overshoots it by about 1.0 (K = 4) to 1.5 (K = 10) standard errors on average;
- ``reference`` for learned models: the weighted mean (their box, [0.1, 10], does not tie I_inf to the
  data, so a constant fitted by least squares is the level of the data), held to [0.1, 10];
- ``wide``: the weighted mean (unbiased; its standard error 1/sqrt(sum of weights)).

A model that does not learn from its cells (``learns_from_cells`` false in the registry or the MI
table's column of that name; by name, random projection, for a table without it) embeds the test cells
identically at every N: its estimates at different N are copies of one estimate per (quality, seed).
They are pooled, averaged over N per (quality, seed), so that copies do not count as independent
points: one noise-law fit per (dataset, signal) (``cells`` = the largest N, ``sizes_pooled`` = how many
sizes were averaged) and, per quality, the plateau of its seeds with the reason "does not learn from
its cells".

Scale parameters (u_bar, N_0) are fitted in log-space, which keeps them positive and makes the fit
well-conditioned across decades; their standard errors come back by the delta method. An unbounded
side of a log-space parameter is a practical bound far beyond the data (``LOG_OPEN`` e-folds).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit

from scaling_assets.errors import InputError
from scaling_assets.metrics.tables import require_columns
from scaling_assets.models.registry import MODELS

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
LEARNS = "learns_from_cells"  # the MI table's column (and the fit tables'): False for a model that learns nothing
# Models whose reference size-law bounds tie I_inf to the series' own maximum (the reference's rule for
# the linear baselines); every other algorithm gets the learned models' box.
LINEAR_ALGORITHMS = ("pca", "random_projection")
LEARNED_I_INF = (0.1, 10.0)  # the reference's I_inf box for learned models
S_MAX = 10.0  # the reference's upper bound of the size-law exponent for learned models (and the wide rule's)
LOG_OPEN = 40.0  # e-folds beyond the data that stand for "unbounded" on a log-space parameter
IDENTIFIED_SE_RATIO = 0.5  # a standard error must be below half its parameter
I_INF_FLOOR_SES = 2.0  # reference rule, PCA/random projection: I_inf >= max over N of (mean - this many SEs)
DEPENDENCE_ALPHA = 0.05  # the N-dependence test calls a flat series dependent at most this often
GOOD_R2 = 0.9  # the R^2 that the summaries count as a good fit


def canonical_name(algorithm) -> str:
    """An algorithm name in any spelling as one key: 'RandomProjection', 'random_projection' -> 'randomprojection'."""
    return re.sub(r"[^a-z0-9]", "", str(algorithm).lower())


def is_linear(algorithm) -> bool:
    return canonical_name(algorithm) in {canonical_name(a) for a in LINEAR_ALGORITHMS}


def learns_by_name(algorithm) -> bool:
    """The registry's ``learns_from_cells`` for an algorithm named in any spelling; True for a name it lacks."""
    static = {canonical_name(name) for name, entry in MODELS.items() if not entry.learns_from_cells}
    return canonical_name(algorithm) not in static


def learns_from_cells(mi_df: pd.DataFrame) -> dict:
    """Per algorithm of the table: whether its embedding depends on its training cells. The MI table's
    ``learns_from_cells`` column where it has a value (one per algorithm), else the registry by name."""
    learns = {}
    for algorithm, rows in mi_df.groupby("algorithm", sort=True):
        values = set(rows[LEARNS].dropna().astype(bool)) if LEARNS in rows.columns else set()
        if len(values) > 1:
            raise InputError(f"MI table: column {LEARNS} is both true and false for algorithm {algorithm!r}; "
                             "expected one value per algorithm")
        learns[algorithm] = values.pop() if values else learns_by_name(algorithm)
    return learns


def pool_over_sizes(points: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The estimates of a model that does not learn from its cells, one row per ``by`` and seed: the mean
    over N of its copies (numeric columns averaged, ``cells`` the largest N of them all, ``sizes_pooled``
    how many sizes), so that a copy at another N is not counted as another independent estimate."""
    keys = by + (["seed"] if "seed" in points.columns else [])
    agg = {c: "mean" for c in points.columns if c not in keys + ["cells"] and pd.api.types.is_numeric_dtype(points[c])}
    if "budget_smoke" in points.columns:
        agg["budget_smoke"] = "any"
    pooled = points.groupby(keys, sort=True, dropna=False).agg(**{c: (c, f) for c, f in agg.items()},
                                                                sizes_pooled=("cells", "nunique"))
    return pooled.reset_index().assign(cells=points["cells"].max())  # one N for all, even a seed that lacks it


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
    depends_on_n: bool | None = None  # size law: whether MI changes with N (None: not tested, e.g. too few points)

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


def size_params(rules: str, algorithm: str | None, cells: np.ndarray, mi: np.ndarray,
                se: np.ndarray | None = None) -> tuple[list[_Param], str]:
    """The size law's parameters under a rule, and a note of the box for the fit table. ``se``: each
    estimate's standard error (``i_inf_floor``)."""
    if check_rules(rules) == "wide":
        span = max(float(np.ptp(mi)), 1e-3)
        lo_i, hi_i = float(mi.min()) - 10 * span - 10, float(mi.max()) + 10 * span + 10
        n_lo, n_hi = float(cells.min() * np.exp(-30)), float(cells.max() * np.exp(30))
        return ([_Param("i_inf", lo_i, hi_i), _Param("n0", n_lo, n_hi, log=True), _Param("s", 1e-3, S_MAX)],
                f"wide: i_inf in [{_fmt(lo_i)}, {_fmt(hi_i)}], n0 within 30 e-folds of the data, s in [0.001, {S_MAX:g}]")
    if is_linear(algorithm):
        top = max_mean_mi(cells, mi)
        floor = i_inf_floor(cells, mi, np.zeros_like(mi) if se is None else se)
        return ([_Param("i_inf", floor, 1.5 * top, lower_label=f"max MI - {I_INF_FLOOR_SES:g} SE {_fmt(floor)}"),
                 _Param("n0", 1e-6, np.inf, log=True), _Param("s", 1e-3, np.inf)],
                f"reference (linear): i_inf in [max MI - {I_INF_FLOOR_SES:g} SE, 1.5 max MI] = "
                f"[{_fmt(floor)}, {_fmt(1.5 * top)}], n0 >= 1e-6, s >= 0.001")
    return ([_Param("i_inf", 0.1, 10.0), _Param("n0", 10.0, 1e7, log=True), _Param("s", 0.01, S_MAX)],
            "reference (learned): i_inf in [0.1, 10], n0 in [10, 1e7], s in [0.01, 10]")


def max_mean_mi(cells: np.ndarray, mi: np.ndarray) -> float:
    """The reference's "max MI" of a size-law series: the largest of its means over seeds at one N."""
    return float(max(mi[cells == n].mean() for n in np.unique(cells)))


def i_inf_floor(cells: np.ndarray, mi: np.ndarray, se: np.ndarray) -> float:
    """The reference rule's lower bound on a linear model's I_inf: the largest over N of a mean less
    ``I_INF_FLOOR_SES`` of its standard errors (``point_means``; the largest mean itself where there are
    none). The reference bounds I_inf by the largest mean, which noise lifts above a plateau that the
    curve reaches inside the grid, so that every such fit sat at the bound."""
    _, means, errors = point_means(cells, mi, se)
    return float((means - I_INF_FLOOR_SES * errors).max())


def point_means(cells: np.ndarray, mi: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct N: (N, mean over seeds, its standard error). A mean's standard error is the larger of
    the seeds' standard error of the mean and the estimates' own (``mi_bits_se``)."""
    grid = np.unique(cells)
    means, errors = [], []
    for n in grid:
        at = cells == n
        k = int(at.sum())
        seed_var = float(np.var(mi[at], ddof=1)) / k if k > 1 else 0.0
        means.append(float(mi[at].mean()))
        errors.append(np.sqrt(max(seed_var, float(np.mean(se[at] ** 2)) / k)))
    return grid, np.array(means), np.array(errors)


def n_dependence(cells: np.ndarray, mi: np.ndarray, se: np.ndarray,
                 alpha: float = DEPENDENCE_ALPHA) -> tuple[bool, str]:
    """Whether MI changes with N beyond the noise of its estimates (module docstring): the weighted spread
    of the means over N and their weighted slope in log N, each tested at ``alpha`` / 2. The noise: the
    pooled within-N variance of repeated estimates (seeds) where there are any, with F tests; else each
    estimate's standard error ``se``, with chi-square tests. Returns the verdict and, for the reason of a
    flat series, what was measured. Without any noise to test against (one estimate per N, no standard
    errors), any difference between the means is a dependence."""
    grid = np.unique(cells)
    at = [cells == n for n in grid]
    counts = np.array([a.sum() for a in at], dtype=float)
    means = np.array([mi[a].mean() for a in at])
    spread = float(means.max() - means.min())
    within_df = int((counts - 1).sum())
    within_var = sum(float(((mi[a] - mi[a].mean()) ** 2).sum()) for a in at) / within_df if within_df else 0.0
    span = f"MI spread {spread:.3f} bits over {_fmt(cells.min())}-{_fmt(cells.max())} cells"
    if within_var > 0:  # one-way ANOVA: the means against the seeds' scatter at each N
        variance = np.full(len(grid), within_var)
        p_value = lambda statistic, df: float(stats.f.sf(statistic / df, df, within_df))
        noise = f"the seeds' scatter within N ({within_df} degrees of freedom)"
    else:
        variance = np.array([np.mean(se[a] ** 2) for a in at])
        p_value = lambda statistic, df: float(stats.chi2.sf(statistic, df))
        noise = "the estimates' standard errors"
    if not (variance > 0).all():
        return spread > 0, f"{span}, and no standard errors or seeds to tell it from noise"
    w = counts / variance  # inverse variance of each mean
    level = float((w * means).sum() / w.sum())
    p_spread = p_value(float((w * (means - level) ** 2).sum()), len(grid) - 1)
    x = np.log(grid)
    dx = x - float((w * x).sum() / w.sum())
    sxx = float((w * dx ** 2).sum())
    slope = float((w * dx * (means - level)).sum()) / sxx
    p_trend = p_value(slope ** 2 * sxx, 1)
    detail = (f"{span}, within the noise of {noise}: p = {p_spread:.2g} for the spread of the means, "
              f"{p_trend:.2g} for a trend in log N (dependence: either below {alpha / 2:g})")
    return min(p_spread, p_trend) < alpha / 2, detail


def weighted_mean(means: np.ndarray, errors: np.ndarray) -> tuple[float, float]:
    """Inverse-variance-weighted mean and its standard error 1/sqrt(sum of weights). Where a point has no
    standard error (one seed, no ``mi_bits_se``), the plain mean and the standard error of the means."""
    if len(means) and (errors > 0).all():
        w = errors ** -2.0
        return float((w * means).sum() / w.sum()), float(w.sum() ** -0.5)
    se = float(np.std(means, ddof=1) / np.sqrt(len(means))) if len(means) > 1 else float("nan")
    return float(means.mean()), se


def size_plateau(cells: np.ndarray, mi: np.ndarray, se: np.ndarray, algorithm: str | None,
                 rules: str) -> tuple[float, float, str, str]:
    """The I_inf of a series that does not depend on N under a rule (module docstring): (value, standard
    error, the bounds note, a problem such as "i_inf at its lower bound 0.1" or "")."""
    _, means, errors = point_means(cells, mi, se)
    if check_rules(rules) == "reference" and is_linear(algorithm):
        top = int(np.argmax(means))  # the reference's own plateau: its box's lower bound, the largest mean
        return (float(means[top]), float(errors[top]) if errors[top] > 0 else float("nan"),
                "reference (linear): no N dependence, i_inf = the largest mean over N (the reference's lower "
                "bound, max MI)",
                "")
    value, value_se = weighted_mean(means, errors)
    if rules == "wide":
        return value, value_se, "wide: no N dependence, i_inf = the inverse-variance-weighted mean over N", ""
    lo, hi = LEARNED_I_INF
    note = f"reference (learned): no N dependence, i_inf = the inverse-variance-weighted mean over N, in [{lo:g}, {hi:g}]"
    if not lo <= value <= hi:
        bound, side = (lo, "lower") if value < lo else (hi, "upper")
        return bound, value_se, note, f"i_inf at its {side} bound {bound:g} (weighted mean {value:.3f})"
    return value, value_se, note, ""


def _plateau_result(cells, mi, se, algorithm, rules, n: int, n_rows: int, why: str) -> FitResult:
    value, value_se, note, problem = size_plateau(cells, mi, se, algorithm, rules)
    return FitResult("size", params={"i_inf": value}, se={"i_inf": value_se}, n_points=n, n_rows=n_rows,
                     reason="; ".join(filter(None, [f"no dependence on N: {why}", problem])), bounds=note,
                     depends_on_n=False)


def fit_size_law(n_cells, mi, *, algorithm: str | None = None, rules: str = DEFAULT_FIT_RULES,
                 mi_se=None, learns_from_cells: bool | None = None) -> FitResult:
    """Fit I_inf, N_0 and s to (training cells, MI bits) estimates (every seed's). ``mi_se``: each
    estimate's standard error, for the dependence check and the plateau (seeds' scatter is used as well).
    A series that does not depend on N gets its plateau (module docstring). ``learns_from_cells`` False
    (None: the registry's, by ``algorithm``'s name): the estimates are one per seed, pooled over N
    (``pool_over_sizes``), and give the plateau without a dependence check."""
    check_rules(rules)
    cells, mi, se = _clean(n_cells, mi, "n", mi_se)
    n = len(np.unique(cells))
    if learns_from_cells is None:
        learns_from_cells = learns_by_name(algorithm)
    if not learns_from_cells and len(cells):
        return _plateau_result(cells, mi, se, algorithm, rules, n, len(cells),
                               f"{algorithm or 'the model'} does not learn from its cells")
    if n < MIN_POINTS_SIZE:
        return FitResult("size", n_points=n, n_rows=len(cells),
                         reason=f"too few points: {n} distinct cell counts, need >= {MIN_POINTS_SIZE}")
    depends, detail = n_dependence(cells, mi, se)
    if not depends:
        return _plateau_result(cells, mi, se, algorithm, rules, n, len(cells), detail)
    if rules == "reference" and is_linear(algorithm) and max_mean_mi(cells, mi) <= 0:
        return FitResult("size", n_points=n, n_rows=len(cells), depends_on_n=True,
                         reason="no information: max MI <= 0, so the reference bound [max MI, 1.5 max MI] is empty")
    params, note = size_params(rules, algorithm, cells, mi, se)
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
                         bounds=note, depends_on_n=True)
    _, popt, pcov = best
    fit = _finish("size", params, popt, pcov, lo, hi, _r2(mi, f(log_n, *popt)), n, len(cells), note)
    fit.depends_on_n = True
    return fit


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
    """One fit per group of ``keys``; a model that does not learn from its cells has its estimates pooled
    over N first (``pool_over_sizes``), and the noise law one group for all its sizes."""
    check_rules(rules)
    y_col = mi_value_column(mi_df)
    require_columns(mi_df, keys + [x_col, y_col], "MI table")
    learns = learns_from_cells(mi_df)
    static = ~mi_df["algorithm"].map(learns).astype(bool)
    table = mi_df.assign(_cells=mi_df["cells"])
    if law == "noise" and static.any():  # one group per (dataset, signal): its cells are the largest N
        largest = table.groupby(["dataset", "signal", "algorithm"], dropna=False)["cells"].transform("max")
        table.loc[static, "cells"] = largest[static]
    rows = []
    for key, group in table.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, key))
        x, bad_x = _numeric(group, x_col)
        y, bad_y = _numeric(group, y_col)
        learner = bool(learns.get(row["algorithm"], True))
        sizes_pooled = 1
        if bad_x or bad_y:  # this group cannot be fitted; the others still are
            bad = [f"{count} non-numeric value(s) in {col}" for col, count in ((x_col, bad_x), (y_col, bad_y)) if count]
            res = FitResult(law, n_rows=len(group), reason="; ".join(bad))
        else:
            se = pd.to_numeric(group[MI_SE], errors="coerce") if MI_SE in group.columns else pd.Series(np.nan, group.index)
            pts = pd.DataFrame({"x": x, "y": y, "se": se, "cells": group["_cells"]})
            if "seed" in group.columns:
                pts["seed"] = group["seed"]
            if not learner:  # noise law: one estimate per (quality, seed); size law: per seed
                by = []
                if law == "noise" and "quality" in group.columns:
                    pts["quality"], by = group["quality"], ["quality"]
                elif law == "noise":
                    by = ["x"]
                pts = pool_over_sizes(pts, by)
                sizes_pooled = int(pts["sizes_pooled"].max())
                if law == "size":  # every pooled estimate stands at the largest N
                    pts["x"] = pts["cells"]
            res = fit(pts["x"].to_numpy(), pts["y"].to_numpy(), row=row, rules=rules,
                      se=None if pts["se"].isna().all() else pts["se"].to_numpy(), learns=learner)
        for name in names:
            row[name] = res.params.get(name, np.nan)
            row[f"{name}_se"] = res.se.get(name, np.nan)
        row.update(r2=res.r2, n_points=res.n_points, n_rows=len(group) if learner else res.n_rows, fitted=res.fitted,
                   identified=res.identified, reason=res.reason, fit_rules=rules, bounds=res.bounds, mi_column=y_col,
                   x_column=x_col, learns_from_cells=learner, sizes_pooled=sizes_pooled,
                   # fitted on a model trained below the study's stopping rules (a smoke test, not a result)
                   budget_smoke=bool(group["budget_smoke"].fillna(False).astype(bool).any())
                   if "budget_smoke" in group.columns else False)
        if law == "size":
            row["depends_on_n"] = res.depends_on_n
        rows.append(row)
    columns = keys + [c for n in names for c in (n, f"{n}_se")] + [
        "r2", "n_points", "n_rows", "fitted", "identified", "reason", "fit_rules", "bounds", "mi_column", "x_column",
        "budget_smoke", "learns_from_cells", "sizes_pooled"] + (["depends_on_n"] if law == "size" else [])
    out = pd.DataFrame(rows, columns=columns)
    if law == "size":  # True / False / <NA> (not tested: too few points, non-numeric values)
        out["depends_on_n"] = out["depends_on_n"].astype("boolean")
    return out


def fit_noise_laws(mi_df: pd.DataFrame, rules: str = DEFAULT_FIT_RULES) -> pd.DataFrame:
    """Noise-law fit per (dataset, signal, algorithm, cells) on every seed's estimate at each nominal
    UMIs-per-cell value; one per (dataset, signal, algorithm) for a model that does not learn from its
    cells (its estimates pooled over N, ``cells`` its largest N)."""
    return _fit_groups(mi_df, "noise", NOISE_GROUP, noise_x_column(mi_df),
                       lambda x, y, row, rules, se, learns: fit_noise_law(x, y, rules=rules),
                       ["i_max", "u_bar"], rules)


def fit_size_laws(mi_df: pd.DataFrame, rules: str = DEFAULT_FIT_RULES) -> pd.DataFrame:
    """Size-law fit per (dataset, signal, algorithm, quality) on every seed's estimate at each cell count;
    the plateau of a series that does not depend on N. A frozen pretrained model (rows at 0 cells: it learns
    from none of the study's cells) has no size law."""
    mi_df = mi_df[mi_df["cells"] > 0] if "cells" in mi_df.columns else mi_df
    return _fit_groups(mi_df, "size", SIZE_GROUP, "cells",
                       lambda x, y, row, rules, se, learns: fit_size_law(
                           x, y, algorithm=row["algorithm"], rules=rules, mi_se=se, learns_from_cells=learns),
                       ["i_inf", "n0", "s"], rules)


# What a fit-table row says about its series, in the words the plots use (one vocabulary): its law
# identified; fitted but not identified; a plateau without N dependence; too few points; not fitted
# (a failed or impossible fit, non-numeric values, or no row at all).
FIT_STATUSES = ("identified", "not identified", "no N dependence", "too few points", "not fitted")


def fit_status(fit) -> str:
    """One of ``FIT_STATUSES`` for a fit-table row (a Series or dict; None: no row)."""
    if fit is None:
        return "not fitted"
    reason = str(fit.get("reason") or "")
    if bool(fit.get("identified", False)):
        return "identified"
    if reason.startswith("no dependence on N"):
        return "no N dependence"
    if bool(fit.get("fitted", False)):
        return "not identified"
    return "too few points" if reason.startswith("too few points") else "not fitted"


def identified_counts(fits: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Per group (default: dataset and algorithm): fits, fitted, identified, and identified with
    R^2 >= 0.9 — what a reader checks before trusting a law. A size-law table adds ``depends_on_n``, the
    series whose MI depends on N (a flat series or one with too few points has no shape to identify), and
    ``good_share_of_dependent``, the share of those identified with R^2 >= 0.9. A model that does not learn
    from its cells has one noise-law fit per (dataset, signal), so it is counted once."""
    by = by or ["dataset", "algorithm"]
    good = fits["identified"].astype(bool) & (fits["r2"] >= GOOD_R2)
    extra = {"dependent": fits["depends_on_n"].fillna(False).astype(bool)} if "depends_on_n" in fits.columns else {}
    counts = fits.assign(good=good, **extra).groupby(by, sort=True).agg(
        fits=("identified", "size"), fitted=("fitted", "sum"), identified=("identified", "sum"),
        identified_r2_ge_0_9=("good", "sum"), **({"depends_on_n": ("dependent", "sum")} if extra else {}))
    counts = counts.astype(int).reset_index()
    if extra:
        counts["good_share_of_dependent"] = counts["identified_r2_ge_0_9"] / counts["depends_on_n"].replace(0, np.nan)
    return counts
