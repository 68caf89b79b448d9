"""Direction statistics of weights (paper Sec. 4.2): kurtosis (Eq. 3) and the ablations' alternatives.

Each statistic is computed per layer in float64; a model's score is the sum over the selected layers.
  kurtosis  E[(x - mu)^4] / E[(x - mu)^2]^2   (Pearson's, not excess: a Gaussian gives 3; paper Eq. 3)
  variance  E[(x - mu)^2]
  skewness  E[(x - mu)^3] / E[(x - mu)^2]^1.5
  entropy   Shannon entropy (nats) of a histogram with ENTROPY_BINS equal-width bins over [min, max]
A constant layer has no defined kurtosis/skewness/entropy shape: the statistic is NaN there and the caller drops
that layer (with a warning).
"""
from __future__ import annotations

import numpy as np

STATS = ("kurtosis", "variance", "skewness", "entropy")
ENTROPY_BINS = 256


def weight_stat(x: np.ndarray, stat: str = "kurtosis") -> float:
    """One statistic of all values of `x` (any shape), computed in float64; NaN where undefined."""
    if stat not in STATS:
        raise ValueError(f"unknown direction statistic {stat!r}; choose from {list(STATS)}")
    v = np.asarray(x).ravel()
    if not np.issubdtype(v.dtype, np.floating):
        v = v.astype(np.float64)
    if v.size == 0:
        return float("nan")
    if stat == "entropy":
        lo, hi = float(v.min()), float(v.max())
        if not hi > lo:
            return float("nan")
        counts = np.histogram(v, bins=ENTROPY_BINS, range=(lo, hi))[0]
        p = counts[counts > 0] / v.size
        return float(-(p * np.log(p)).sum())
    m2, m3, m4 = central_moments(v)
    if stat == "variance":
        return m2
    if m2 <= 0.0:
        return float("nan")
    if stat == "skewness":
        return m3 / m2 ** 1.5
    return m4 / (m2 * m2)


def central_moments(v: np.ndarray, chunk: int = 1 << 16) -> tuple[float, float, float]:
    """Second, third and fourth central moments (float64) of a flat float array, in chunks (dot products, no big temporaries)."""
    n = v.size
    mu = float(np.add.reduce(v, dtype=np.float64)) / n
    m2 = m3 = m4 = 0.0
    for s in range(0, n, chunk):
        c = v[s:s + chunk].astype(np.float64)
        c -= mu
        c2 = c * c
        m2 += float(c2.sum())
        m3 += float(c2 @ c)
        m4 += float(c2 @ c2)
    return m2 / n, m3 / n, m4 / n


def stack_stat(xs: np.ndarray, stat: str = "kurtosis") -> np.ndarray:
    """weight_stat of each model in a stack (n, ...) -> (n,)."""
    return np.array([weight_stat(x, stat) for x in xs])
