"""Replacement test: invariants of the edits it uses, agreement of its batched KLs with single runs, options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import writelens as wl
from writelens.experiments.common import kl_from_logits, run_rows
from writelens.experiments.replacement import ReplacementOptions, ReplacementResult, replacement_test

from .helpers import flat_sae, lens, passages, sae

LAYER, HEAD = 1, 0


def _native(ids):
    out = lens().run(ids, cache=True, sites=[(LAYER, HEAD)])
    return out.logits, out.cache.write(LAYER, HEAD)


def test_delete_then_readd_native_write_gives_zero_kl():
    ids = passages(2, 24)
    native, w = _native(ids)
    rows = []
    for p in range(2):
        for t in (0, 5, 11, 23):
            rows.append((p, [wl.Delete(LAYER, HEAD, t),
                             wl.Add(LAYER, HEAD, t, key=w.key[p, t], value=w.value[p, t], scale=float(w.beta[p, t]))]))
    kls = run_rows(lens(), ids, rows, lambda i, lg: kl_from_logits(native[rows[i][0]], lg).max().item(), show=False)
    assert max(kls) < 1e-10


def test_random_atom_with_scale_zero_equals_delete():
    ids = passages(2, 24)
    native, _ = _native(ids)
    rows = [(p, [e]) for p in range(2) for t in (3, 17)
            for e in (wl.RandomAtom(LAYER, HEAD, t, scale=0.0, seed=11 + t), wl.Delete(LAYER, HEAD, t))]
    kls = run_rows(lens(), ids, rows, lambda i, lg: float(kl_from_logits(native[rows[i][0], -1], lg[-1])), show=False)
    # equal up to fp32 rounding of the logits (the two rows may continue from different prefix caches); a nonzero
    # random atom would differ by orders of magnitude
    assert kls[0::2] == pytest.approx(kls[1::2], rel=1e-4, abs=1e-14)
    assert all(k > 0 for k in kls)


def _single(ids, p, edits, t_kl=-1):
    native = lens().run(ids[p : p + 1]).logits[0, t_kl]
    edited = lens().run(ids[p : p + 1], edits=edits, _fast=False).logits[0, t_kl]
    return float(kl_from_logits(native, edited))


def test_batched_kls_equal_single_runs_and_stats_are_consistent():
    ids = passages(3, 24)
    opts = ReplacementOptions(max_firings=30, progress=False, n_bootstrap=2000, batch_rows=7)
    res = replacement_test(lens(), sae(), (LAYER, HEAD), ids, opts)
    assert res.stats.n_firings == 30 == len(res.kl_atom) == len(res.kl_random)
    with torch.no_grad():
        atoms = sae().atoms(res.atom)
    for i in (0, 13, 29):
        p, t = res.passage[i], res.position[i]
        assert res.scale[i] == pytest.approx(res.coefficient[i] * float(atoms.scale[i, 0]), rel=1e-6)
        atom = wl.Replace(LAYER, HEAD, t, key=atoms.key[i, 0], value=atoms.value[i, 0], scale=res.scale[i])
        rand = wl.RandomAtom(LAYER, HEAD, t, scale=res.scale[i], seed=res.random_seed[i])
        for got, edit in ((res.kl_atom[i], atom), (res.kl_delete[i], wl.Delete(LAYER, HEAD, t)),
                          (res.kl_random[i], rand)):
            assert got == pytest.approx(_single(ids, p, [edit]), rel=1e-4, abs=1e-12)
    a, d, r = map(np.asarray, (res.kl_atom, res.kl_delete, res.kl_random))
    assert res.stats.win_rate.estimate == pytest.approx((a < d).mean())
    assert res.stats.strict_chain.estimate == pytest.approx(((a < d) & (d < r)).mean())
    assert res.stats.bootstrap_by_atom.n_resamples == 2000
    back = ReplacementResult.from_json(res.to_json())
    assert back.to_dict() == res.to_dict()
    assert back.options == opts and back.summary()["n_firings"] == 30


def test_dominant_atom_is_the_largest_coefficient():
    ids = passages(2, 20)
    res = replacement_test(lens(), sae(), (LAYER, HEAD), ids, ReplacementOptions(max_firings=10, progress=False))
    out = lens().run(ids, cache=True, sites=[(LAYER, HEAD)])
    for i in range(10):
        s = out.cache.state(LAYER, HEAD, res.position[i])[res.passage[i]]
        with torch.no_grad():
            codes = sae().encode(s)
        assert int(codes.argmax()) == res.atom[i] == res.feature[i]
        assert res.coefficient[i] == pytest.approx(float(codes.max()), rel=1e-5)


def test_options_matched_norm_positions_controls_population_flat_baseline():
    ids = passages(3, 20)
    base = dict(max_firings=24, progress=False, n_bootstrap=2000)
    res = replacement_test(lens(), sae(), (LAYER, HEAD), ids,
                           ReplacementOptions(scale="matched_norm", kl_position="mean_from_t",
                                              random_control="alive_atom", baseline="flat_svd", **base),
                           flat_sae=flat_sae())
    assert res.scale == pytest.approx(res.native_norm)
    assert all(a >= 0 for a in res.random_atom) and len(res.kl_flat_svd) == 24
    assert res.stats.flat_svd_win_rate is not None
    nxt = replacement_test(lens(), sae(), (LAYER, HEAD), ids,
                           ReplacementOptions(kl_position="next", timing="after_read", **base))
    assert max(nxt.position) < 19  # after_read: the last position has no affected distribution
    pop = replacement_test(lens(), sae(), (LAYER, HEAD), ids,
                           ReplacementOptions(cap_per_atom=3, min_firings_per_atom=2, **{**base, "max_firings": None}))
    counts = np.bincount(pop.feature)
    assert counts.max() <= 3
    assert pop.stats.population.n_atoms == int((counts >= 2).sum())
    named = replacement_test(lens(), sae(), (LAYER, HEAD), ids,
                             ReplacementOptions(features=[pop.feature[0]], atom_choice="feature", **base))
    assert set(named.feature) == {pop.feature[0]} == set(named.atom)


@pytest.mark.parametrize("kl_position,timing", [("last", "with_read"), ("next", "with_read"), ("next", "after_read"),
                                                ("mean_from_t", "with_read")])
def test_delete_kls_equal_full_edited_forwards(kl_position, timing):
    """The KLs the test measures through one native pass (with tail= / span= trimming the forward) equal KLs from full
    edited forwards of each firing's passage."""
    from writelens.experiments.common import kl_positions

    ids = passages(3, 20)
    res = replacement_test(lens(), sae(), (LAYER, HEAD), ids,
                           ReplacementOptions(max_firings=8, progress=False, n_bootstrap=100, kl_position=kl_position,
                                              timing=timing))
    native = lens().run(ids).logits
    for p, t, kl in zip(res.passage, res.position, res.kl_delete, strict=True):
        edited = lens().run(ids[p : p + 1], edits=[wl.Delete(LAYER, HEAD, t, timing=timing)], _fast=False).logits[0]
        pos = kl_positions(t, ids.shape[1], kl_position, timing)
        want = float(kl_from_logits(native[p, pos], edited[pos].float()).mean()) if pos else float("nan")
        assert kl == pytest.approx(want, rel=1e-4, abs=1e-9, nan_ok=True)


def test_rank2_atoms_at_matched_norm():
    """A rank-2 SAE (RWKV-7's WriteSAE) at scale='matched_norm': the atom is added at the native write's norm (this
    used to fail with float(None)); its KL equals Delete + Add of the unit atom matrix at that norm, run directly."""
    from writelens.experiments.common import kl_positions
    from writelens.sae import BilinearSAE

    sae2 = BilinearSAE(d_k=16, d_v=16, n_features=32, k=4, rank=2, seed=1)
    ids = passages(3, 20)
    res = replacement_test(lens(), sae2, (LAYER, HEAD), ids,
                           ReplacementOptions(max_firings=6, progress=False, n_bootstrap=100, scale="matched_norm",
                                              allow_foreign_sae=True))
    assert res.scale == pytest.approx(res.native_norm)
    native = lens().run(ids).logits
    for i in range(3):
        p, t = res.passage[i], res.position[i]
        m = sae2.atoms([res.atom[i]]).matrix()[0]
        edits = [wl.Delete(LAYER, HEAD, t), wl.Add(LAYER, HEAD, t, matrix=m / m.norm(), scale=res.native_norm[i])]
        edited = lens().run(ids[p : p + 1], edits=edits, _fast=False).logits[0]
        pos = kl_positions(t, ids.shape[1], "last")
        assert res.kl_atom[i] == pytest.approx(float(kl_from_logits(native[p, pos], edited[pos]).mean()), rel=1e-4,
                                               abs=1e-9)


@pytest.mark.parametrize("control", ["gaussian", "alive_atom"])
def test_reuse_takes_a_firings_kls_from_an_earlier_result(control):
    """A population run after a pooled run reruns only the firings it lacks; the KLs are what a rerun gives (each
    firing's random control is seeded by the firing, not by its index in the selection)."""
    ids = passages(3, 24)
    pooled = ReplacementOptions(max_firings=12, progress=False, n_bootstrap=50, random_control=control)
    population = ReplacementOptions(max_firings=None, cap_per_atom=4, progress=False, n_bootstrap=50,
                                    random_control=control)
    first = replacement_test(lens(), sae(), (LAYER, HEAD), ids, pooled)
    fresh = replacement_test(lens(), sae(), (LAYER, HEAD), ids, population)
    again = replacement_test(lens(), sae(), (LAYER, HEAD), ids, population, reuse=first)
    held = set(zip(first.passage, first.position, strict=True))
    shared = [i for i, pt in enumerate(zip(fresh.passage, fresh.position, strict=True)) if pt in held]
    assert again.n_reused == len(shared) > 0 and len(shared) < fresh.stats.n_firings  # some reused, some rerun
    assert (again.passage, again.position, again.atom) == (fresh.passage, fresh.position, fresh.atom)
    assert again.random_seed == fresh.random_seed and again.random_atom == fresh.random_atom
    for name in ("kl_atom", "kl_delete", "kl_random", "kl_null"):
        assert getattr(again, name) == pytest.approx(getattr(fresh, name), rel=1e-4, abs=1e-12)
    assert any("taken from an earlier result" in n for n in again.notes)
    # a result measured differently is refused, with what differs named
    with pytest.raises(wl.errors.ExperimentError, match="kl_position"):
        replacement_test(lens(), sae(), (LAYER, HEAD), ids, ReplacementOptions(
            max_firings=5, kl_position="next", progress=False, random_control=control), reuse=first)
    with pytest.raises(wl.errors.ExperimentError, match="passages or SAE"):
        replacement_test(lens(), sae(), (LAYER, HEAD), passages(3, 24, seed=5), population, reuse=first)
    loaded = ReplacementResult.from_json(first.to_json())  # the fingerprint survives JSON: reuse of a saved run
    assert loaded.fingerprint == first.fingerprint
    assert replacement_test(lens(), sae(), (LAYER, HEAD), ids, population, reuse=loaded).n_reused == len(shared)


def test_kl_from_logits_in_chunks_equals_the_whole(monkeypatch):
    """The KL runs over chunks of positions (float64 temporaries bounded at any vocabulary): same values as the
    one-shot form, both directions, broadcasting a native row against many edited rows."""
    import writelens.experiments.common as common

    gen = torch.Generator().manual_seed(3)
    native, edited = torch.randn(3, 7, 50, generator=gen), torch.randn(3, 7, 50, generator=gen)

    def whole(a, b):
        a, b = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
        return (a.exp() * (a - b)).sum(-1).clamp_min(0.0)

    monkeypatch.setattr(common, "KL_CHUNK_ELEMENTS", 120)  # 2 positions per chunk
    got = kl_from_logits(native, edited)
    assert got.shape == (3, 7) and torch.allclose(got, whole(native, edited), rtol=0, atol=1e-14)
    assert torch.allclose(kl_from_logits(native, edited, "edited_native"), whole(edited, native), rtol=0, atol=1e-14)
    assert torch.allclose(kl_from_logits(native[0, 0], edited[0]), whole(native[0, 0].expand(7, -1), edited[0]))


def test_null_every_runs_the_null_edit_on_a_subset_and_the_rest_is_unchanged():
    """A per-batch floor: the null edit at every 3rd firing only; every other KL is what the full run gives, the
    floor comes from the nulls that ran, and the result survives JSON with its nan nulls."""
    ids = passages(3, 24)
    full = replacement_test(lens(), sae(), (LAYER, HEAD), ids, ReplacementOptions(max_firings=12, progress=False,
                                                                                n_bootstrap=50))
    sub = replacement_test(lens(), sae(), (LAYER, HEAD), ids, ReplacementOptions(max_firings=12, progress=False,
                                                                               n_bootstrap=50, null_every=3))
    ran = [i for i in range(12) if i % 3 == 0]
    assert all(np.isfinite(sub.kl_null[i]) == (i in ran) for i in range(12))
    assert sub.floor.n_null == len(ran) and full.floor.n_null == 12
    assert sub.floor.max == pytest.approx(max(full.kl_null[i] for i in ran), rel=1e-3, abs=1e-15)
    for name in ("kl_atom", "kl_delete", "kl_random"):
        assert getattr(sub, name) == pytest.approx(getattr(full, name), rel=1e-4, abs=1e-12)
    back = ReplacementResult.from_json(sub.to_json())
    assert back.kl_null[1] is None and back.options.null_every == 3  # JSON has no NaN: a skipped null is null
    with pytest.raises(wl.errors.ExperimentError, match="null_every"):
        ReplacementOptions(null_every=0)
