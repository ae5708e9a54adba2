"""Gaussian pairs with known mutual information, for testing and benchmarking LMI.

A low-dimensional latent z ~ N(0, I) is mapped linearly into X and Y and independent noise
is added; the true MI follows from the joint covariance. The noise level is solved so that
the MI equals a requested number of bits.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq

from scaling_assets.errors import InputError


def gaussian_mi_bits(cov: np.ndarray, dx: int) -> float:
    """MI in bits between the first dx and the remaining coordinates of a Gaussian."""
    _, logdet = np.linalg.slogdet(cov)
    _, logdet_x = np.linalg.slogdet(cov[:dx, :dx])
    _, logdet_y = np.linalg.slogdet(cov[dx:, dx:])
    return float(0.5 * (logdet_x + logdet_y - logdet) / np.log(2))


def _latent_cov(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
    w = np.vstack([a, b])  # (dx + dy) x latent
    return w @ w.T + sigma**2 * np.eye(w.shape[0])


def latent_gaussian_pairs(
    n: int, mi_bits: float, dx: int = 16, dy: int = 16, latent: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, float]:
    """n pairs whose dependence lives in a `latent`-d z: X = A z + s e_x, Y = B z + s e_y.

    Returns (x, y, true_mi_bits). mi_bits = 0 gives independent X and Y.
    """
    rng = np.random.default_rng(seed)
    if mi_bits == 0:
        return rng.standard_normal((n, dx)), rng.standard_normal((n, dy)), 0.0
    a = rng.standard_normal((dx, latent)) / np.sqrt(latent)
    b = rng.standard_normal((dy, latent)) / np.sqrt(latent)
    # MI falls monotonically with the noise level: solve in log-sigma for the target.
    f = lambda log_s: gaussian_mi_bits(_latent_cov(a, b, np.exp(log_s)), dx) - mi_bits
    if f(-12.0) < 0:
        raise InputError(f"mi_bits={mi_bits} is too high for this latent mapping")
    sigma = float(np.exp(brentq(f, -12.0, 12.0, xtol=1e-12)))
    z = rng.standard_normal((n, latent))
    x = z @ a.T + sigma * rng.standard_normal((n, dx))
    y = z @ b.T + sigma * rng.standard_normal((n, dy))
    truth = gaussian_mi_bits(_latent_cov(a, b, sigma), dx)
    return x, y, truth


def spread_gaussian_pairs(
    n: int, mi_bits: float, dims: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, float]:
    """n pairs with dependence spread evenly over `dims` independent coordinate pairs.

    Each (x_i, y_i) has correlation rho with -1/2 log2(1 - rho^2) = mi_bits / dims.
    """
    rng = np.random.default_rng(seed)
    rho = np.sqrt(1.0 - 2.0 ** (-2.0 * mi_bits / dims))
    x = rng.standard_normal((n, dims))
    y = rho * x + np.sqrt(1.0 - rho**2) * rng.standard_normal((n, dims))
    return x, y, float(mi_bits)
