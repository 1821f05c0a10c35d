"""Attribution: the exact in-layer δo equals the edited run's, the exact prediction equals the measured change for
small ε where the linearised path is the whole path, and the three-factor form matches a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import writelens as wl
from writelens.experiments.common import out_proj_slice, unembedding
from writelens.experiments.logit_attribution import (
    AttributionOptions,
    AttributionResult,
    attribution,
    native_point,
    propagate_delta,
)

from .helpers import inert_lens, lens, passages, sae

LAYER, HEAD = 2, 1


def test_in_layer_propagation_equals_the_oracle():
    """propagate_delta (the family's exact propagation) against the float64 per-token oracle run with the edit."""
    ids = passages(2, 24)
    with torch.no_grad():
        atoms = sae().atoms([3, 7])
    u, w = atoms.key[:, 0], atoms.value[:, 0]
    point = native_point(lens(), 1, 0, ids)
    native = lens().run(ids, cache=True, sites=[(1, 0)], oracle=True).cache.output(1, 0)
    t0 = 6
    for row in range(2):
        d_o = propagate_delta(point, row, t0, torch.einsum("ak,av->akv", u, w) * 0.5, 23)  # [2, 18, d_v]
        for a in range(2):
            edit = wl.Add(1, 0, t0, key=u[a], value=w[a], scale=0.5, batch=row)
            out = lens().run(ids, cache=True, sites=[(1, 0)], edits=[edit], oracle=True).cache.output(1, 0)
            measured = out[row, t0:] - native[row, t0:]
            assert torch.allclose(measured.double(), d_o[a], atol=1e-5 * float(d_o[a].abs().max()) + 1e-7)


def test_exact_attribution_equals_measured_change_for_small_epsilon():
    ids = passages(3, 32)
    eps = 1e-3
    opts = AttributionOptions(horizons=(0, 1, 3, 6), target_ranks=(1, 4), progress=False)
    res = attribution(inert_lens(), sae(), (LAYER, HEAD), ids, [0, 5, 9], [eps, -eps], opts)
    m, e, sign = map(np.asarray, (res.measured, res.exact, res.epsilon))
    central = (m[sign > 0] - m[sign < 0]) / 2  # cancels the second-order term
    scale = np.abs(e).max()
    assert scale > 1e-5
    assert np.abs(central - e[sign > 0]).max() < 1e-3 * scale
    assert res.stats_exact.r2 > 0.999 and res.stats_exact.sign_agreement.estimate > 0.97
    # here the direct path is the whole path: the backprop linearisation agrees with it
    assert np.abs(np.asarray(res.linearised) - e).max() < 1e-4 * scale


def test_linearised_prediction_equals_measured_change_through_later_layers():
    ids = passages(2, 28)
    eps = 1e-3
    opts = AttributionOptions(horizons=(0, 2, 5), target_ranks=(1, 3), progress=False)
    res = attribution(lens(), sae(), (1, 0), ids, [1, 6], [eps, -eps], opts)  # layers 2 and 3 follow
    m, lin, sign = map(np.asarray, (res.measured, res.linearised, res.epsilon))
    central = (m[sign > 0] - m[sign < 0]) / 2
    scale = np.abs(lin).max()
    assert scale > 1e-5
    assert np.abs(central - lin[sign > 0]).max() < 2e-3 * scale
    assert res.stats_linearised.r2 > 0.999


def test_three_factor_matches_hand_computation_and_round_trips():
    ids = passages(2, 24)
    opts = AttributionOptions(horizons=(1, 3), progress=False, t0=8, epsilon_mode="write_norm")
    res = attribution(lens(), sae(), (LAYER, HEAD), ids, [2, 4], [0.5], opts)
    out = lens().run(ids, cache=True, sites=[(LAYER, HEAD)])
    f = out.cache.write(LAYER, HEAD)
    with torch.no_grad():
        atoms = sae().atoms([2, 4])
        w_u, w_o = unembedding(lens()), out_proj_slice(lens(), LAYER, HEAD)
    for i in range(len(res.measured)):
        p, t, tok, a = res.passage[i], res.t[i], res.token[i], [2, 4].index(res.atom[i])
        assert tok == int(out.logits[p, t].argmax())
        g = float(f.alpha[p, 9 : t + 1].prod())
        read = float(atoms.key[a, 0] @ f.query[p, t]) * f.scale
        value = float(w_u[tok] @ (w_o @ atoms.value[a, 0]))
        native_norm = float(f.beta[p, 8] * f.key[p, 8].norm() * f.value[p, 8].norm())  # k̂ is l2norm(k) with eps
        assert res.epsilon_abs[i] == pytest.approx(0.5 * native_norm, rel=1e-5)
        assert res.three_factor[i] == pytest.approx(res.epsilon_abs[i] * g * read * value, rel=1e-4, abs=1e-9)
    back = AttributionResult.from_json(res.to_json())
    assert back.to_dict() == res.to_dict() and back.options.horizons == (1, 3)
    assert set(back.stats_exact.r2_by_epsilon) == {"0.5"}


def test_per_passage_t0_and_horizons_equal_the_shared_options():
    """t0s= / horizons= given per passage reproduce the shared-option run, and differ per passage when asked."""
    ids = passages(3, 24)
    opts = AttributionOptions(t0=5, horizons=(1, 3), progress=False)
    shared = attribution(lens(), sae(), (LAYER, HEAD), ids, [0, 5], [0.1], opts)
    per = attribution(lens(), sae(), (LAYER, HEAD), ids, [0, 5], [0.1], opts, t0s=[5, 5, 5], horizons=[[1, 3]] * 3)
    assert per.measured == shared.measured and per.linearised == shared.linearised and per.t == shared.t
    mixed = attribution(lens(), sae(), (LAYER, HEAD), ids, [0], [0.1], opts, t0s=[4, 6, 8], horizons=[[0], [1], [15]])
    assert sorted(set(zip(mixed.passage, mixed.t0, mixed.t, strict=True))) == [(0, 4, 4), (1, 6, 7), (2, 8, 23)]
    with pytest.raises(wl.errors.ExperimentError, match="t0s="):
        attribution(lens(), sae(), (LAYER, HEAD), ids, [0], [0.1], opts, t0s=[4, 6, 9], horizons=[[0], [1], [15]])
    with pytest.raises(wl.errors.ExperimentError, match="horizons="):
        attribution(lens(), sae(), (LAYER, HEAD), ids, [0], [0.1], opts, horizons=[[1]])
