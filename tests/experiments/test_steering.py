"""Install steering, slot erasure and feature amplification: invariants (zero doses change nothing), bookkeeping,
and JSON round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from writelens.experiments.amplify import AmplifyOptions, AmplifyResult, feature_amplification
from writelens.experiments.common import scan_site
from writelens.experiments.erasure import ErasureOptions, ErasureResult, slot_erasure
from writelens.experiments.install import InstallOptions, InstallResult, install_steering

from .helpers import lens, passages, sae

SITE = (1, 0)


def test_install_strata_native_inclusion_and_zero_magnitude():
    prompts = passages(3, 16, seed=4)
    opts = InstallOptions(strata=((1, 5), (5, 40), (40, 1000)), magnitudes=(0.0, 50.0), max_new_tokens=6,
                          progress=False, batch_rows=10)
    res = install_steering(lens(), SITE, prompts, options=opts)
    assert res.install_positions == [13, 14, 15]
    native = lens().generate(prompts, max_new_tokens=6)
    ranks = native.logits[:, 0].argsort(-1, descending=True).argsort(-1) + 1
    for i in range(len(res.prompt)):
        p, tok = res.prompt[i], res.target[i]
        lo, hi = map(int, res.stratum[i].split("-"))
        assert lo <= res.native_rank[i] < hi and res.native_rank[i] == int(ranks[p, tok])
        assert res.included_native[i] == (tok in native.new_tokens[p].tolist())
        if res.magnitude[i] == 0.0:
            assert res.edited_rank[i] == res.native_rank[i] and res.generated[i] == res.native_generated[i]
            assert res.logp_edited[i] == pytest.approx(res.logp_native[i], abs=1e-5)
    strong = res.cell("40-1000", 50.0)
    assert strong.n_trials == 6 and len(res.cells) == 6  # 2 targets x 3 prompts per cell; 3 strata x 2 magnitudes
    back = InstallResult.from_json(res.to_json())
    assert back.to_dict() == res.to_dict() and back.options.strata == opts.strata


def test_install_explicit_targets_and_next_query_key():
    prompts = passages(2, 12, seed=5)
    opts = InstallOptions(magnitudes=(3.0,), max_new_tokens=3, key_side="next_query", end_offset=1, progress=False)
    res = install_steering(lens(), SITE, prompts, targets=[7, 9], options=opts)
    assert res.install_positions == [8, 9, 10] and res.target == [7, 9, 7, 9]


def _frequent_feature(ids):
    scan = scan_site(lens(), sae(), SITE, ids, min_position=1, keep_logits=False, show=False)
    active = scan.indices[scan.values > 0]
    return int(torch.bincount(active).argmax())


def test_slot_erasure_halves_are_disjoint_and_zero_dose_is_null():
    ids = passages(4, 24, seed=6)
    feature = _frequent_feature(ids)
    opts = ErasureOptions(control_doses=(0.0, 2.0), dose_response=(0.0, 4.0), n_controls=10, n_dose=6,
                          progress=False, n_bootstrap=2000)
    res = slot_erasure(lens(), sae(), SITE, ids, feature, opts)
    assert res.n_firings >= 10 and res.n_selection == round(res.n_firings * 0.5)
    assert len(res.delta_logp) == res.n_firings - res.n_selection
    assert all(c > 0 for c in res.coefficient)
    zero = res.controls[0]
    assert zero.magnitude == 0.0 and zero.n == 10 and abs(zero.mean) < 1e-6  # fp32 prefix-reuse rounding only
    assert [c.magnitude for c in res.dose_response] == [0.0, 4.0]
    back = ErasureResult.from_json(res.to_json())
    assert back.to_dict() == res.to_dict() and back.summary()["feature"] == feature
    native = slot_erasure(lens(), sae(), SITE, ids, feature,
                          ErasureOptions(mode="native_write", measure="last", control_doses=(), dose_response=(),
                                         progress=False))
    assert native.n_firings == res.n_firings and len(native.controls) == 0


def test_feature_amplification_zero_dose_reproduces_native_samples():
    sel = passages(4, 24, seed=7)
    prompts = passages(3, 10, seed=8)
    prop = list(range(3, 30))
    opts = AmplifyOptions(n_features=4, doses=(0.0, 20.0), max_new_tokens=8, progress=False, n_bootstrap=2000)
    res = feature_amplification(lens(), sae(), SITE, sel, prompts, prop, opts)
    assert len(res.features) == 4 and len(res.control_features) == 4
    assert not set(res.features) & set(res.control_features)
    assert res.generations["amplify_x0"] == res.generations["native"] == res.generations["random_x0"]
    assert set(res.metrics["native"]) == {"property_rate"}
    rates = np.asarray(res.metrics["native"]["property_rate"])
    expected = [np.mean([t in set(prop) for t in g]) for g in res.generations["native"]]
    assert rates == pytest.approx(expected)
    again = feature_amplification(lens(), sae(), SITE, sel, prompts, prop, opts)
    assert again.generations == res.generations  # seeded sampling
    back = AmplifyResult.from_json(res.to_json())
    assert back.to_dict() == res.to_dict()


def test_bad_inputs_raise_experiment_error():
    from writelens.errors import ExperimentError
    from writelens.experiments.logit_attribution import AttributionOptions, attribution
    from writelens.experiments.replacement import ReplacementOptions, replacement_test

    with pytest.raises(ExperimentError, match="too short"):
        attribution(lens(), sae(), SITE, passages(1, 8), [0], [0.1], AttributionOptions(progress=False))
    with pytest.raises(ExperimentError, match="flat_sae"):
        replacement_test(lens(), sae(), SITE, passages(1, 8), ReplacementOptions(baseline="flat_svd", progress=False))
    with pytest.raises(ExperimentError, match="install positions"):
        install_steering(lens(), SITE, passages(1, 2), options=InstallOptions(progress=False))
    with pytest.raises(ExperimentError, match="no boundary"):
        feature_amplification(lens(), sae(), SITE, passages(1, 8), passages(1, 4), [], AmplifyOptions(progress=False))
