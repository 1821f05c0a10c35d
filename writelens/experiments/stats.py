"""Statistics used by the experiments (method.md §3.8, conventions.md "Statistics").

All functions take 1-D array-likes (lists, numpy arrays, tensors) and return plain floats or small typed dataclasses
(JSON-serialisable through :mod:`writelens.experiments.base`). Every random procedure takes a seed.

- :func:`wilson_ci`: Wilson score interval of a proportion (z = 1.96 for 95%).
- :func:`median_mad`: median and MAD/√n (MAD = median |x − median|, unscaled unless ``scaled=True``).
- :func:`ratio_of_medians`: median(a) / median(b).
- :func:`cluster_bootstrap`: percentile CI of a statistic, resampling whole clusters (atoms, passages) with
  replacement.
- :func:`paired_wilcoxon`: scipy's Wilcoxon signed-rank test on paired samples.
- :func:`cliffs_delta`: P(x > y) − P(x < y) over all pairs.
- :func:`per_atom_population`: mean over atoms (with ≥ ``min_firings``) of per-atom means, with a t interval.
- :func:`r_squared` (no fitted parameter), :func:`fitted_scale`, :func:`sign_agreement`: for attribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from writelens.errors import ExperimentError
from writelens.experiments.base import JsonMixin

__all__ = [
    "Interval",
    "BootstrapCI",
    "WilcoxonResult",
    "PopulationMean",
    "wilson_ci",
    "median_mad",
    "ratio_of_medians",
    "cluster_bootstrap",
    "paired_wilcoxon",
    "cliffs_delta",
    "per_atom_population",
    "proportion",
    "r_squared",
    "fitted_scale",
    "sign_agreement",
]


def _arr(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


@dataclass
class Interval(JsonMixin):
    """An estimate with a confidence interval [lo, hi] (``level`` e.g. 0.95) from ``n`` observations."""

    estimate: float
    lo: float
    hi: float
    n: int
    level: float = 0.95


@dataclass
class BootstrapCI(JsonMixin):
    """A cluster-bootstrap percentile interval: ``estimate`` on the data, [lo, hi] over ``n_resamples`` resamples of
    the ``n_clusters`` clusters (seeded by ``seed``)."""

    estimate: float
    lo: float
    hi: float
    n_clusters: int
    n_resamples: int
    seed: int
    level: float = 0.95


@dataclass
class WilcoxonResult(JsonMixin):
    """Two-sided paired Wilcoxon signed-rank test: the statistic (scipy's, the smaller rank sum), the p-value, the
    number of pairs and how many had a zero difference (dropped, ``zero_method='wilcox'``)."""

    statistic: float
    p_value: float
    n: int
    n_zero: int


@dataclass
class PopulationMean(JsonMixin):
    """Mean over atoms of a per-atom mean (e.g. per-atom win rates), with a t interval over atoms.

    ``n_atoms`` kept (≥ ``min_firings`` each), ``n_firings`` they hold, ``per_atom``: {atom id: per-atom mean}."""

    mean: float
    lo: float
    hi: float
    n_atoms: int
    n_firings: int
    min_firings: int
    per_atom: dict[str, float]
    level: float = 0.95


def wilson_ci(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of ``successes / n``: ``(p + z²/2n ± z √(p(1−p)/n + z²/4n²)) / (1 + z²/n)``.

    Returns (nan, nan) for n = 0.
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(flags: Any, z: float = 1.96) -> Interval:
    """The proportion of true ``flags`` with its Wilson interval."""
    f = _arr(flags)
    k, n = int((f > 0).sum()), int(f.size)
    lo, hi = wilson_ci(k, n, z)
    return Interval(k / n if n else float("nan"), lo, hi, n)


def median_mad(x: Any, scaled: bool = False) -> tuple[float, float]:
    """(median, MAD/√n) with MAD = median |x − median(x)| (× 1.4826 when ``scaled``, the normal-consistent MAD)."""
    a = _arr(x)
    if a.size == 0:
        return float("nan"), float("nan")
    med = float(np.median(a))
    mad = float(np.median(np.abs(a - med))) * (1.4826 if scaled else 1.0)
    return med, mad / math.sqrt(a.size)


def ratio_of_medians(a: Any, b: Any) -> float:
    """median(a) / median(b) (nan when median(b) is 0)."""
    mb = float(np.median(_arr(b)))
    return float(np.median(_arr(a))) / mb if mb != 0 else float("nan")


def cluster_bootstrap(values: Any, clusters: Sequence[Any], statistic: Callable[[np.ndarray], float] | str = "mean",
                      n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> BootstrapCI:
    """Percentile CI of ``statistic(values)`` when whole clusters are resampled with replacement.

    Args:
        values: one number per observation (e.g. 1.0 for a win, 0.0 for a loss) [n].
        clusters: the cluster of each observation (atom id, passage id) [n]; any hashable labels.
        statistic: ``"mean"`` (fast path: per-cluster sums and counts) or a function of the pooled values.
        n_resamples: resamples (≥ 2,000 recommended); seed: numpy ``default_rng`` seed.
    """
    v = _arr(values)
    labels = np.asarray([str(c) for c in clusters])
    if labels.size != v.size:
        raise ExperimentError(f"values ({v.size}) and clusters ({labels.size}) differ in length; give one cluster "
                              "label per value.")
    uniq, inv = np.unique(labels, return_inverse=True)
    c = uniq.size
    if v.size == 0:
        return BootstrapCI(float("nan"), float("nan"), float("nan"), 0, n_resamples, seed, level)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, c, size=(n_resamples, c))
    if statistic == "mean":
        sums = np.bincount(inv, weights=v, minlength=c)
        counts = np.bincount(inv, minlength=c).astype(np.float64)
        stats = sums[draws].sum(1) / counts[draws].sum(1)
        estimate = float(v.mean())
    else:
        if c == v.size:  # one observation per cluster: index directly
            by_cluster = v[np.argsort(inv)]
            stats = np.array([statistic(by_cluster[row]) for row in draws])
        else:
            members = [np.flatnonzero(inv == j) for j in range(c)]
            stats = np.array([statistic(v[np.concatenate([members[j] for j in row])]) for row in draws])
        estimate = float(statistic(v))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return BootstrapCI(estimate, float(lo), float(hi), int(c), int(n_resamples), int(seed), level)


def paired_wilcoxon(a: Any, b: Any) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of a − b (scipy, ``zero_method='wilcox'``); nan p when every pair ties."""
    x, y = _arr(a), _arr(b)
    d = x - y
    n_zero = int((d == 0).sum())
    if d.size - n_zero == 0:
        return WilcoxonResult(float("nan"), float("nan"), int(d.size), n_zero)
    res = sps.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    return WilcoxonResult(float(res.statistic), float(res.pvalue), int(d.size), n_zero)


def cliffs_delta(x: Any, y: Any) -> float:
    """Cliff's δ = (#{x_i > y_j} − #{x_i < y_j}) / (n_x n_y), in O(n log n) by sorting ``y``."""
    a, b = _arr(x), np.sort(_arr(y))
    if a.size == 0 or b.size == 0:
        return float("nan")
    less = np.searchsorted(b, a, side="left")  # y_j < x_i
    greater = b.size - np.searchsorted(b, a, side="right")  # y_j > x_i
    return float((less.sum() - greater.sum()) / (a.size * b.size))


def per_atom_population(values: Any, atoms: Sequence[Any], min_firings: int = 5, level: float = 0.95,
                        bounds: tuple[float, float] | None = None) -> PopulationMean:
    """Mean over atoms of the per-atom mean of ``values`` (atoms with ≥ ``min_firings`` observations), with a
    Student-t interval over atoms: ``mean ± t_{n−1} · sd / √n``, clipped to ``bounds`` where the values cannot
    leave them (a rate: ``(0, 1)``; the t-interval is symmetric and would otherwise claim rates above 1)."""
    v = _arr(values)
    labels = [str(a) for a in atoms]
    per: dict[str, list[float]] = {}
    for label, value in zip(labels, v.tolist(), strict=False):
        per.setdefault(label, []).append(value)
    kept = {k: float(np.mean(vs)) for k, vs in per.items() if len(vs) >= min_firings}
    n_firings = sum(len(per[k]) for k in kept)
    means = np.array(list(kept.values()))
    if means.size == 0:
        return PopulationMean(float("nan"), float("nan"), float("nan"), 0, 0, min_firings, {}, level)
    mean = float(means.mean())
    if means.size == 1:
        return PopulationMean(mean, float("nan"), float("nan"), 1, n_firings, min_firings, kept, level)
    half = float(sps.t.ppf(0.5 + level / 2, means.size - 1) * means.std(ddof=1) / math.sqrt(means.size))
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return PopulationMean(mean, lo, hi, int(means.size), n_firings, min_firings, kept, level)


def r_squared(measured: Any, predicted: Any) -> float:
    """Coefficient of determination with zero fitted parameters: ``1 − Σ(m − p)² / Σ(m − m̄)²`` (can be < 0)."""
    m, p = _arr(measured), _arr(predicted)
    if m.size < 2:
        return float("nan")
    ss_tot = float(((m - m.mean()) ** 2).sum())
    return 1.0 - float(((m - p) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def fitted_scale(measured: Any, predicted: Any) -> float:
    """The least-squares scale c minimising Σ(m − c·p)² (one fitted parameter): ``Σ m p / Σ p²``."""
    m, p = _arr(measured), _arr(predicted)
    den = float((p * p).sum())
    return float((m * p).sum()) / den if den > 0 else float("nan")


def sign_agreement(measured: Any, predicted: Any, atol: float = 0.0) -> Interval:
    """P(sign(predicted) = sign(measured)) over pairs with |measured| > ``atol`` and a finite predicted ≠ 0
    (Wilson CI)."""
    m, p = _arr(measured), _arr(predicted)
    keep = (np.abs(m) > atol) & (p != 0) & np.isfinite(p)
    return proportion(np.sign(m[keep]) == np.sign(p[keep]))
