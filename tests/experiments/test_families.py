"""The experiments on Mamba-2 and RWKV-7 (host-matched SAEs: rank-1 atoms for Mamba-2, rank-2 for RWKV-7).

Replacement test: its batched KLs equal float64 oracle runs of the same edits. Attribution (the family-neutral
linearisation): exact in-layer propagation against the float64 oracles, the direct path equal to the measured change
where it is the whole path, the backprop linearisation equal to it through later layers, and the three-factor form
against a hand computation."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from models import ids, mamba2, rwkv7

import writelens as wl
from writelens.experiments.common import kl_from_logits, out_proj_slice, unembedding
from writelens.experiments.logit_attribution import (
    AttributionOptions,
    attribution,
    native_point,
    propagate_delta,
)
from writelens.experiments.replacement import ReplacementOptions, replacement_test
from writelens.sae import BilinearSAE


@functools.cache
def family_lens(family: str, inert_last: bool = False) -> wl.WriteLens:
    """A tiny lens; ``inert_last``: the last layer's channel mix (RWKV-7) writes zero, so from the last layer's head
    output the direct path (readout → final norm → lm_head) is the whole path. Mamba-2 blocks have no MLP."""
    model = mamba2(2, 16) if family == "mamba2" else rwkv7()
    if inert_last and family == "rwkv7":
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.model.layers[-1].ffn.value.weight.zero_()
    return wl.WriteLens(model)


@functools.cache
def family_sae(family: str) -> BilinearSAE:
    lens = family_lens(family)
    rank = 2 if family == "rwkv7" else 1  # RWKV-7: rank-2 atoms (method.md §7)
    return BilinearSAE(d_k=lens.adapter.d_k, d_v=lens.adapter.d_v, n_features=16, k=4, rank=rank, seed=0)


FAMILIES = ["mamba2", pytest.param("rwkv7", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("rwkv7_hf") is None, reason="rwkv7-hf not installed"))]


@pytest.mark.parametrize("family", FAMILIES)
def test_replacement_kls_equal_oracle_runs(family):
    lens, x, site = family_lens(family), ids(3, 20, seed=2), (1, 3)
    sae = family_sae(family)
    res = replacement_test(lens, sae, site, x, ReplacementOptions(max_firings=12, progress=False, batch_rows=5))
    assert res.stats.n_firings == 12 and res.sae_info["rank"] == sae.cfg.rank
    assert 0.0 <= res.stats.win_rate.estimate <= 1.0
    with torch.no_grad():
        mats = sae.atoms(res.atom).matrix().float()
    native = lens.run(x, oracle=True).logits[:, -1]
    for i in (0, 5, 11):
        p, t = res.passage[i], res.position[i]
        atom = [wl.Delete(*site, t), wl.Add(*site, t, matrix=mats[i] / mats[i].norm(), scale=res.scale[i])]
        rand = [wl.RandomAtom(*site, t, scale=res.scale[i], seed=res.random_seed[i])]
        for got, edits in ((res.kl_atom[i], atom), (res.kl_delete[i], [wl.Delete(*site, t)]), (res.kl_random[i], rand)):
            edited = lens.run(x[p : p + 1], edits=edits, oracle=True).logits[0, -1]
            assert got == pytest.approx(float(kl_from_logits(native[p], edited)), rel=2e-3, abs=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_in_layer_propagation_equals_the_oracle(family):
    lens, x = family_lens(family), ids(2, 24, seed=3)
    layer, head, t0 = 1, 2, 5
    with torch.no_grad():
        mats = family_sae(family).atoms([1, 4]).matrix().float()
    point = native_point(lens, layer, head, x)
    native = lens.run(x, cache=True, sites=[(layer, head)], oracle=True).cache.output(layer, head)
    for row in range(2):
        d_o = propagate_delta(point, row, t0, mats * 0.3, 23)
        for a in range(2):
            edit = wl.Add(layer, head, t0, matrix=mats[a], scale=0.3, batch=row)
            out = lens.run(x, cache=True, sites=[(layer, head)], edits=[edit], oracle=True).cache.output(layer, head)
            measured = (out[row, t0:] - native[row, t0:]).double()
            assert torch.allclose(measured, d_o[a], atol=1e-5 * float(d_o[a].abs().max()) + 1e-7)


def _central(res):
    m, sign = np.asarray(res.measured), np.asarray(res.epsilon)
    return (m[sign > 0] - m[sign < 0]) / 2, sign > 0  # cancels the second-order term


@pytest.mark.parametrize("family", FAMILIES)
def test_direct_path_is_exact_where_it_is_the_whole_path(family):
    lens = family_lens(family, inert_last=True)
    last = lens.adapter.num_layers - 1
    opts = AttributionOptions(horizons=(0, 1, 4), target_ranks=(1, 3), progress=False, epsilon_mode="write_norm")
    # ε = 2% of the native write: the fp32 logits' rounding stays ≪ the change, the third-order term small
    res = attribution(lens, family_sae(family), (last, 1), ids(2, 24, seed=4), [0, 5], [0.02, -0.02], opts)
    central, pos = _central(res)
    exact, lin = np.asarray(res.exact)[pos], np.asarray(res.linearised)[pos]
    scale = np.abs(exact).max()
    assert scale > 1e-6
    assert np.abs(central - exact).max() < 4e-3 * scale
    assert np.abs(lin - exact).max() < 1e-5 * scale
    assert res.stats_exact.r2 > 0.999


@pytest.mark.parametrize("family", FAMILIES)
def test_linearised_prediction_equals_measured_change_through_later_layers(family):
    lens = family_lens(family)
    opts = AttributionOptions(horizons=(0, 2, 5), target_ranks=(1, 2), progress=False, epsilon_mode="write_norm")
    res = attribution(lens, family_sae(family), (0, 3), ids(2, 24, seed=5), [2, 7], [0.01, -0.01], opts)
    central, pos = _central(res)
    lin = np.asarray(res.linearised)[pos]
    scale = np.abs(lin).max()
    assert scale > 1e-6
    assert np.abs(central - lin).max() < 2e-3 * scale
    assert res.stats_linearised.r2 > 0.999


@pytest.mark.parametrize("family", FAMILIES)
def test_three_factor_matches_hand_computation(family):
    lens, x = family_lens(family), ids(2, 20, seed=6)
    layer, head, t0 = 1, 0, 6
    opts = AttributionOptions(horizons=(1, 3), progress=False, t0=t0, epsilon_mode="write_norm")
    res = attribution(lens, family_sae(family), (layer, head), x, [2, 4], [0.5], opts)
    out = lens.run(x, cache=True, sites=[(layer, head)])
    f = out.cache.write(layer, head)
    call = out.cache.recurrent_call(layer)
    with torch.no_grad():
        mats = family_sae(family).atoms([2, 4]).matrix().double()
        mats = mats / mats.flatten(1).norm(dim=-1)[:, None, None]
        w_u, w_o = unembedding(lens).double(), out_proj_slice(lens, layer, head).double()
    for i in range(len(res.measured)):
        p, t, tok, a = res.passage[i], res.t[i], res.token[i], [2, 4].index(res.atom[i])
        if family == "rwkv7":  # per-channel decay w_s: G is diagonal
            gain = call.transition(head)[0][p, t0 + 1 : t + 1].double().prod(0)
        else:
            gain = f.alpha[p, t0 + 1 : t + 1].double().prod().expand(f.key.shape[-1])
        read = gain * f.query[p, t].double() * f.scale
        value = w_o.T @ w_u[tok]
        native_norm = float(f.beta[p, t0] * f.key[p, t0].norm() * f.value[p, t0].norm())
        assert res.epsilon_abs[i] == pytest.approx(0.5 * native_norm, rel=1e-5)
        assert res.three_factor[i] == pytest.approx(res.epsilon_abs[i] * float(read @ mats[a] @ value),
                                                    rel=1e-4, abs=1e-9)
