"""Mamba-2 write sites against the float64 per-token oracle, on tiny random-init ``Mamba2ForCausalLM``s."""

from __future__ import annotations

import pytest
import torch
from models import ids, mamba2

import writelens as wl
from writelens import errors
from writelens.sites.mamba2_oracle import naive_ssd

TOL = 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops on a shared 2-core box: one intra-op thread is several times faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=["groups2", "groups1_dstate8"])
def lens(request):
    model = mamba2(2, 16) if request.param == "groups2" else mamba2(1, 8)  # d_state 8 ≠ headdim 16
    return wl.WriteLens(model)


def _dims(lens):
    return lens.adapter.d_k, lens.adapter.d_v


def _factors(lens, seed: int):
    g = torch.Generator().manual_seed(seed)
    dk, dv = _dims(lens)
    return torch.randn(dk, generator=g), torch.randn(dv, generator=g)


def test_sites_are_role_ordered(lens):
    dk, dv = _dims(lens)
    assert lens.recurrent_layers == [0, 1, 2] and len(lens.sites) == 3 * 8
    s = lens.site(2, 7)
    assert (s.d_k, s.d_v, s.family) == (dk, 16, "mamba2")
    assert lens.adapter.out_proj_slice(1, 3).shape == (64, dv)


def test_capture_leaves_logits_unchanged_and_states_match_oracle(lens):
    x = ids(2, 150)
    out = lens.run(x, cache=True, use_cache=True)
    with torch.no_grad():
        assert torch.equal(out.logits, lens.model(x).logits)
    call = out.cache._calls[1]
    for head in (0, 5):
        for pos in (0, 17, 63, 64, 127, 149):
            _, S = naive_ssd(call.x[:, : pos + 1], call.dt[:, : pos + 1], call.A, call.Bm[:, : pos + 1],
                             call.Cm[:, : pos + 1], call.D)
            assert rel(out.cache.state(1, head, pos), S[:, head].transpose(-1, -2)) < TOL
    # HF keeps [B, H, headdim, d_state]: role order is its transpose; hf_state gives HF layout
    hf = out.past_key_values.layers[1].recurrent_states[0]
    assert rel(out.cache.final_state(1, 3), hf[:, 3].transpose(-1, -2)) < TOL
    assert rel(lens.adapter.hf_state(call, 149), hf) < TOL
    # the read: y_t = S_tᵀ C_t + D x_t
    w = out.cache.write(1, 6)
    dk, dv = _dims(lens)
    assert w.key.shape == (2, 150, dk) and w.value.shape == (2, 150, dv) and w.beta.shape == (2, 150)
    assert (w.beta > 0).all() and (w.alpha < 1).all() and rel(w.alpha, w.g.exp()) < 1e-6
    S = out.cache.state(1, 6, 40)
    y = torch.einsum("bkv,bk->bv", S, w.query[:, 40]) + lens.model.backbone.layers[1].mixer.D[6] * w.value[:, 40]
    assert rel(y, w.output[:, 40]) < TOL
    # the write matrix is dt · B ⊗ x
    wm = out.cache.write_matrix(1, 6, 40)
    assert rel(wm, w.beta[:, 40, None, None] * w.key[:, 40, :, None] * w.value[:, 40, None, :]) < 1e-6
    per_row = out.cache.state(1, 2, torch.tensor([3, 99]))
    assert rel(per_row[1], out.cache.state(1, 2, 99)[1]) < 1e-6
    many = out.cache.states(1, 2, [5, 70, 6])
    assert rel(many[:, 2], out.cache.state(1, 2, 6)) < 1e-6


def _edit_cases(lens):
    u, w = _factors(lens, 1)
    dk, dv = _dims(lens)
    return {
        "delete": [wl.Delete(0, 0, pos=30)],
        "delete_after_read": [wl.Delete(0, 1, pos=30, timing="after_read")],
        "replace": [wl.Replace(0, 5, 70, key=u, value=w, scale=0.7, batch=1)],
        "replace_matched_norm": [wl.Replace(2, 0, 12, key=u, value=w)],
        "add_matrix": [wl.Add(1, 1, 5, matrix=0.3 * torch.outer(u, w), batch=[0, 2])],
        "add_factors": [wl.Add(2, 7, 88, key=u, value=w, scale=2.0)],
        "random_atom": [wl.RandomAtom(2, 0, 89, seed=3)],
        "install": [wl.Install(0, 1, (40, 41, 42), value=w, magnitude=3.0)],
        "install_key": [wl.Install(0, 3, (40, 60), value=w, key=u, magnitude=1.5, timing="after_read")],
        "install_next_query": [wl.Install(2, 1, (20, 21), value=w, key_side="next_query")],
        "several_in_one_layer": [wl.Delete(0, 0, 30), wl.Add(0, 0, 30, key=u, value=w), wl.Delete(0, 6, 60, batch=2)],
        "two_layers": [wl.Delete(0, 0, 10), wl.Replace(2, 1, 50, key=u, value=w)],
        "first_and_last_position": [wl.Delete(1, 2, 0), wl.Add(1, 4, 89, matrix=torch.ones(dk, dv))],
    }


def test_every_edit_matches_oracle(lens):
    x = ids(3, 90, seed=2)
    native = lens.run(x).logits
    for name, edits in _edit_cases(lens).items():
        fast = lens.run(x, edits=edits, cache=True, use_cache=True)
        ref = lens.run(x, edits=edits, oracle=True, use_cache=True)
        reuse = lens.run(x, edits=edits).logits  # native prefix reused (a cache built at the first edit)
        assert rel(fast.logits, ref.logits) < TOL, name
        assert rel(reuse, ref.logits) < TOL, name
        assert rel(fast.logits, native) > 1e-4, f"{name} had no effect"
        for layer in lens.recurrent_layers:
            a = fast.past_key_values.layers[layer].recurrent_states[0]
            b = ref.past_key_values.layers[layer].recurrent_states[0]
            assert rel(a, b) < TOL, (name, layer)
        e = edits[0]
        call = fast.cache._calls[e.layer]
        _, S = naive_ssd(call.x, call.dt, call.A, call.Bm, call.Cm, call.D, injections=call.injections)
        assert rel(fast.cache.state(e.layer, e.head, 89), S[:, e.head].transpose(-1, -2)) < TOL, name


def test_install_uses_the_native_write_norm(lens):
    """Install's size is m·‖B_t‖·‖x_t‖ (the dt-free write norm), along B̂_t ⊗ value/‖value‖."""
    x = ids(1, 30, seed=3)
    _, w = _factors(lens, 4)
    f = lens.run(x, cache=True).cache.write(0, 2)
    k, v = f.key[0, 12], f.value[0, 12]
    matrix = 2.5 * k.norm() * v.norm() * torch.outer(k / k.norm(), w / w.norm())
    a = lens.run(x, edits=[wl.Install(0, 2, (12,), value=w, magnitude=2.5)]).logits
    b = lens.run(x, edits=[wl.Add(0, 2, 12, matrix=matrix)]).logits
    assert rel(a, b) < TOL


def test_edit_effects_add_exactly(lens):
    x = ids(2, 80, seed=4)
    u, w = _factors(lens, 5)
    e1, e2 = wl.Delete(0, 0, 20), wl.Add(0, 0, 50, key=u, value=w)
    base = lens.run(x, cache=True).cache.output(0, 0)
    d1 = lens.run(x, cache=True, edits=[e1]).cache.output(0, 0) - base
    d2 = lens.run(x, cache=True, edits=[e2]).cache.output(0, 0) - base
    d12 = lens.run(x, cache=True, edits=[e1, e2]).cache.output(0, 0) - base
    assert rel(d12, d1 + d2) < 1e-4


def test_invariants(lens):
    x = ids(2, 50, seed=7)
    out = lens.run(x, cache=True)
    native = out.logits
    wm = out.cache.write_matrix(0, 1, 20)
    readd = [wl.Delete(0, 1, 20), wl.Add(0, 1, 20, matrix=wm[0], batch=0), wl.Add(0, 1, 20, matrix=wm[1], batch=1)]
    assert rel(lens.run(x, edits=readd).logits, native) < TOL
    w = out.cache.write(0, 1)
    for row in range(2):
        same = wl.Replace(0, 1, 20, key=w.key[row, 20], value=w.value[row, 20], batch=row)
        assert rel(lens.run(x, edits=[same]).logits[row], native[row]) < TOL
    assert rel(lens.run(x, edits=[wl.RandomAtom(0, 1, 20, scale=0.0)]).logits,
               lens.run(x, edits=[wl.Delete(0, 1, 20)]).logits) < 1e-6
    late = lens.run(x, edits=[wl.Delete(0, 1, 20, timing="after_read")]).logits
    assert torch.equal(late[:, :20], native[:, :20])
    assert rel(late[:, 20], native[:, 20]) < TOL and rel(late[:, 21:], native[:, 21:]) > 1e-5
    assert torch.equal(lens.run(x).logits, native)


def test_padding_mask(lens):
    """HF zeroes x, B, C at padded positions (dt still decays the state there); edits propagate as the oracle."""
    x = ids(2, 30, seed=6)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[0, :4] = 0
    edits = [wl.Delete(1, 2, 10), wl.Add(1, 2, 5, matrix=torch.ones(*_dims(lens)), batch=0)]  # 5: row 0 is real there
    fast = lens.run(x, edits=edits, attention_mask=mask, use_cache=True)
    ref = lens.run(x, edits=edits, attention_mask=mask, oracle=True, use_cache=True)
    assert rel(fast.logits, ref.logits) < TOL
    assert rel(fast.past_key_values.layers[1].recurrent_states[0], ref.past_key_values.layers[1].recurrent_states[0]) < TOL


def test_generation_with_edits_matches_oracle(lens):
    x = ids(2, 20, seed=8)
    u, w = _factors(lens, 9)
    edits = [wl.Add(0, 0, 10, key=3 * u, value=3 * w), wl.Install(2, 1, (22, 23), value=w, magnitude=30.0),
             wl.Delete(1, 4, 25, batch=1)]
    fast = lens.generate(x, edits=edits, max_new_tokens=8)
    ref = lens.generate(x, edits=edits, max_new_tokens=8, oracle=True)
    assert torch.equal(fast.new_tokens, ref.new_tokens)
    assert rel(fast.logits, ref.logits) < TOL
    for layer in lens.recurrent_layers:
        assert rel(fast.past_key_values.layers[layer].recurrent_states[0],
                   ref.past_key_values.layers[layer].recurrent_states[0]) < TOL
    native = lens.generate(x, max_new_tokens=8)
    assert not torch.allclose(native.logits, fast.logits)
    with torch.no_grad():
        hf = lens.model.generate(x, max_new_tokens=8, do_sample=False)
    assert torch.equal(hf[:, 20:], native.new_tokens)


def test_prompt_edit_persists_through_cache(lens):
    x = ids(1, 30, seed=10)
    gen = lens.generate(x, edits=[wl.Delete(0, 0, 5)], max_new_tokens=5)
    full = lens.run(gen.sequences[:, :-1], edits=[wl.Delete(0, 0, 5)]).logits[:, 29:]
    assert rel(gen.logits, full) < TOL


def test_cache_branching(lens):
    x = ids(1, 24, seed=11)
    prefix = lens.run(x[:, :16], use_cache=True).past_key_values
    assert lens.adapter.cache_length(prefix) == 16
    before = [t.clone() for L in lens.recurrent_layers
              for t in (prefix.layers[L].recurrent_states[0], prefix.layers[L].conv_states[0])]
    a = lens.generate(x[:, 16:], past_key_values=prefix, max_new_tokens=4)
    b = lens.generate(x[:, 16:], past_key_values=prefix, max_new_tokens=4, edits=[wl.Delete(0, 0, 20)])
    full_a = lens.generate(x, max_new_tokens=4)
    full_b = lens.generate(x, max_new_tokens=4, edits=[wl.Delete(0, 0, 20)])
    assert rel(a.logits, full_a.logits) < TOL and rel(b.logits, full_b.logits) < TOL
    after = [t for L in lens.recurrent_layers
             for t in (prefix.layers[L].recurrent_states[0], prefix.layers[L].conv_states[0])]
    assert all(torch.equal(p, q) for p, q in zip(before, after, strict=True))  # the user's cache is untouched
    assert lens.adapter.cache_length(prefix) == 16
    clone = lens.clone_cache(prefix)
    clone.layers[0].recurrent_states[0].add_(1.0)
    assert torch.equal(prefix.layers[0].recurrent_states[0], before[0])


def test_prefix_reuse_equals_full_forward_and_oracle(lens):
    """Each call is one group of rows continued from its first edit (conv history and exact states at s0 − 1,
    lower layers short-circuited); an edit at the last position continues with one decode step, one at position 0
    re-runs the rows."""
    x = ids(3, 90, seed=12).repeat_interleave(2, 0)  # duplicate rows are run natively once
    u, w = _factors(lens, 13)
    cases = {
        "low_layer_0": [wl.Replace(0, 1, 70, key=u, value=w, scale=0.7, batch=4), wl.Delete(2, 1, 33, batch=4),
                        wl.Delete(2, 0, 31, batch=0)],
        "low_layer_2": [wl.Delete(2, 0, pos=30 + r, batch=r) for r in range(3)],
        "last_position": [wl.Delete(1, 3, 89, batch=3), wl.Add(2, 0, 89, key=u, value=w)],
        "position_0": [wl.Install(0, 1, (0, 1, 2), value=w, batch=5)],
    }
    for name, edits in cases.items():
        fast = lens.run(x, edits=edits).logits
        full = lens.run(x, edits=edits, _fast=False).logits
        ref = lens.run(x, edits=edits, oracle=True).logits
        assert rel(fast, full) < TOL and rel(fast, ref) < TOL, name
    short = ids(2, 3, seed=14)  # shorter than the conv kernel: the captured conv stream is left-padded by HF
    e = [wl.Delete(1, 0, 2), wl.Delete(0, 3, 1, batch=1)]
    assert rel(lens.run(short, edits=e).logits, lens.run(short, edits=e, oracle=True).logits) < TOL


def test_errors(lens):
    dk, dv = _dims(lens)
    if dk != dv:
        with pytest.raises(errors.EditShapeError, match=r"\(d_k, d_v\)"):
            lens.run(ids(1, 8), edits=[wl.Add(0, 0, 3, matrix=torch.ones(dv, dk))])  # HF orientation
        with pytest.raises(errors.EditShapeError, match="d_k"):
            lens.run(ids(1, 8), edits=[wl.Replace(0, 0, 3, key=torch.ones(dv), value=torch.ones(dv))])
    with pytest.raises(errors.SiteOutOfRangeError, match="value heads"):
        lens.run(ids(1, 8), edits=[wl.Delete(0, 8, 2)])
    with pytest.raises(errors.PositionOutOfRangeError, match="valid: 0..7"):
        lens.run(ids(1, 8), edits=[wl.Delete(0, 0, 8)])
    with pytest.raises(errors.EditConflictError, match="next"):
        lens.run(ids(1, 8), edits=[wl.Install(0, 0, (7,), value=torch.ones(dv), key_side="next_query")])
    with torch.no_grad():  # HF's own forward (after wrapping) is counted too: Mamba-2 caches hold no length
        assert lens.adapter.cache_length(lens.model(ids(1, 5), use_cache=True).cache_params) == 5
    foreign = lens.run(ids(1, 4), use_cache=True).past_key_values
    del foreign._writelens_length  # as if filled before WriteLens wrapped the model
    with pytest.raises(errors.PositionOutOfRangeError, match="count"):
        lens.generate(ids(1, 4), past_key_values=foreign, max_new_tokens=1)


def test_self_check_detects_a_changed_kernel(monkeypatch):
    import sys

    model = mamba2(2, 16, seed=3)
    lens = wl.WriteLens(model)
    modeling = sys.modules[type(model.backbone.layers[0].mixer).__module__]
    dispatch = modeling.mamba2_chunk_scan.dispatch
    real = dispatch.torch_impl

    def changed_kernel(*args, **kwargs):
        out = real(*args, **kwargs)
        return (out[0] * 1.5, out[1]) if isinstance(out, tuple) else out * 1.5

    monkeypatch.setattr(dispatch, "torch_impl", changed_kernel)
    with pytest.raises(errors.SelfCheckError, match="transformers"):
        lens.self_check()
