"""Statistics against values computed by hand (the arithmetic is spelled out in each test)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from writelens.experiments import stats as st


def test_wilson_ci_hand_computed():
    # k = 8, n = 10, z = 1.96: p = .8, z² = 3.8416
    # centre = (.8 + 3.8416/20) / (1 + .38416) = .99208 / 1.38416 = .716738
    # half = 1.96 * sqrt(.016 + 3.8416/400) / 1.38416 = 1.96 * sqrt(.025604) / 1.38416 = .226580
    lo, hi = st.wilson_ci(8, 10)
    assert lo == pytest.approx(0.490158, abs=1e-5)
    assert hi == pytest.approx(0.943318, abs=1e-5)
    # k = 0: lower bound 0, upper z²/n / (1 + z²/n) = .38416 / 1.38416
    lo, hi = st.wilson_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.38416 / 1.38416, abs=1e-9)
    assert all(math.isnan(x) for x in st.wilson_ci(0, 0))


def test_median_mad_and_ratio():
    x = [1.0, 2.0, 3.0, 4.0, 100.0]
    # median 3; |x - 3| = 2, 1, 0, 1, 97 -> median 1; MAD/sqrt(5) = 0.447214
    med, se = st.median_mad(x)
    assert med == 3.0 and se == pytest.approx(1 / math.sqrt(5))
    assert st.median_mad(x, scaled=True)[1] == pytest.approx(1.4826 / math.sqrt(5))
    assert st.ratio_of_medians([2.0, 6.0, 10.0], [1.0, 2.0, 3.0]) == pytest.approx(3.0)


def test_cliffs_delta_hand_computed():
    # pairs (x_i, y_j): x = [1, 2, 3], y = [2, 2]: greater: (3,2)x2 = 2, less: (1,2)x2 = 2, ties (2,2)x2
    assert st.cliffs_delta([1, 2, 3], [2, 2]) == 0.0
    # x = [3, 4], y = [1, 2, 5]: greater 2 + 2 = 4, less 1 + 1 = 2 -> (4 - 2) / 6
    assert st.cliffs_delta([3, 4], [1, 2, 5]) == pytest.approx(2 / 6)
    assert st.cliffs_delta([5, 6], [1, 2]) == 1.0


def test_cliffs_delta_matches_brute_force():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 40), rng.integers(0, 5, 30)
    brute = (np.sign(x[:, None] - y[None, :])).mean()
    assert st.cliffs_delta(x, y) == pytest.approx(brute)


def test_paired_wilcoxon_hand_computed():
    # differences 1, 2, -3, 4, 5 (no ties): ranks 1..5, negative rank sum 3 = scipy's statistic;
    # exact two-sided p = 2 * #{subsets of {1..5} with sum <= 3} / 32 = 2 * 5 / 32 (sums 0, 1, 2, 3, 1+2)
    a = [2.0, 4.0, 0.0, 8.0, 10.0]
    b = [1.0, 2.0, 3.0, 4.0, 5.0]
    res = st.paired_wilcoxon(a, b)
    assert res.statistic == 3.0 and res.p_value == pytest.approx(10 / 32) and res.n == 5 and res.n_zero == 0
    ties = st.paired_wilcoxon([1.0, 2.0], [1.0, 2.0])
    assert math.isnan(ties.p_value) and ties.n_zero == 2


def test_cluster_bootstrap_degenerate_and_seeded():
    # identical clusters: every resample has the same mean -> a zero-width interval at the mean
    values = [1, 0, 1, 0, 1, 0]
    clusters = ["a", "a", "b", "b", "c", "c"]
    ci = st.cluster_bootstrap(values, clusters, n_resamples=2000, seed=3)
    assert (ci.estimate, ci.lo, ci.hi, ci.n_clusters, ci.n_resamples) == (0.5, 0.5, 0.5, 3, 2000)
    # two clusters with means 1 and 0 (sizes 1 and 3): resample means are 0, 1 (both twice the same cluster) or 1/4;
    # P(both draws = the size-1 cluster) = 1/4, so the 97.5% quantile is 1 and the 2.5% quantile is 0
    ci = st.cluster_bootstrap([1, 0, 0, 0], ["x", "y", "y", "y"], n_resamples=4000, seed=0)
    assert ci.estimate == 0.25 and ci.lo == 0.0 and ci.hi == 1.0
    again = st.cluster_bootstrap([1, 0, 0, 0], ["x", "y", "y", "y"], n_resamples=4000, seed=0)
    assert again == ci
    generic = st.cluster_bootstrap([1, 0, 0, 0], ["x", "y", "y", "y"], statistic=np.mean, n_resamples=4000, seed=0)
    assert (generic.lo, generic.hi) == (ci.lo, ci.hi)


def test_per_atom_population_hand_computed():
    # atom a: 5 firings, 4 wins (0.8); atom b: 6 firings, 3 wins (0.5); atom c: 2 firings (dropped)
    wins = [1, 1, 1, 1, 0] + [1, 1, 1, 0, 0, 0] + [1, 1]
    atoms = ["a"] * 5 + ["b"] * 6 + ["c"] * 2
    pop = st.per_atom_population(wins, atoms, min_firings=5)
    assert pop.n_atoms == 2 and pop.n_firings == 11 and pop.mean == pytest.approx(0.65)
    # sd of (0.8, 0.5) = 0.212132; t_{.975, 1} = 12.7062; half = 12.7062 * 0.212132 / sqrt(2) = 1.905930
    assert pop.hi - pop.mean == pytest.approx(12.706205 * 0.2121320 / math.sqrt(2), rel=1e-5)
    assert pop.per_atom == {"a": 0.8, "b": 0.5}
    rate = st.per_atom_population(wins, atoms, min_firings=5, bounds=(0.0, 1.0))  # a rate's interval stays in [0, 1]
    assert (rate.lo, rate.hi, rate.mean) == (0.0, 1.0, pop.mean) and pop.lo < 0 < 1 < pop.hi


def test_r_squared_fitted_scale_sign_agreement():
    m = [1.0, 2.0, 3.0]
    # SS_tot = 2; predictions off by (0, 0, 1): SS_res = 1 -> R² = 0.5
    assert st.r_squared(m, [1.0, 2.0, 2.0]) == pytest.approx(0.5)
    assert st.r_squared(m, m) == 1.0
    assert st.fitted_scale(m, [0.5, 1.0, 1.5]) == pytest.approx(2.0)
    sa = st.sign_agreement([1.0, -1.0, 2.0, 0.0], [0.5, 1.0, 3.0, 1.0])  # the zero measurement is left out
    assert sa.n == 3 and sa.estimate == pytest.approx(2 / 3)


def test_stats_objects_round_trip_json():
    ci = st.cluster_bootstrap([1, 0, 1], ["a", "b", "c"], n_resamples=2000, seed=1)
    assert st.BootstrapCI.from_json(ci.to_json()) == ci
    pop = st.per_atom_population([1] * 5, ["a"] * 5)
    back = st.PopulationMean.from_json(pop.to_json())
    assert back.mean == 1.0 and back.lo is None  # nan (one atom) is written as null
