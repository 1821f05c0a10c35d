"""RWKV-7 write sites (``rwkv7-hf``) against the float64 per-token oracle, on a tiny random-init model."""

from __future__ import annotations

import pytest
import torch
from models import ids, rwkv7

import writelens as wl
from writelens import errors
from writelens.edits import edit_positions
from writelens.sites.rwkv7_oracle import naive_rwkv7

pytest.importorskip("rwkv7_hf")

TOL = 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def lens():
    return wl.WriteLens(rwkv7())


def _factors(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, generator=g), torch.randn(16, generator=g)


def _states(cache):
    return cache.recurrent_state


def test_sites(lens):
    assert lens.recurrent_layers == [0, 1, 2] and len(lens.sites) == 12
    s = lens.site(2, 3)
    assert (s.d_k, s.d_v, s.family) == (16, 16, "rwkv7")
    assert lens.adapter.supports_prefix_reuse
    assert lens.adapter.out_proj_slice(1, 3).shape == (64, 16)


def test_capture_leaves_logits_unchanged_and_states_match_oracle(lens):
    x = ids(2, 130)
    out = lens.run(x, cache=True, use_cache=True)
    with torch.no_grad():
        assert torch.equal(out.logits, lens.model(x).logits)
    call = out.cache._calls[1]
    for head in (0, 3):
        for pos in (0, 17, 63, 64, 129):
            p = pos + 1
            _, S = naive_rwkv7(call.r[:, :p], call.w[:, :p], call.k[:, :p], call.v[:, :p], call.a[:, :p],
                               call.b[:, :p], call.initial_state)
            assert rel(out.cache.state(1, head, pos), S[:, head]) < TOL
    hf = _states(out.past_key_values)[1]  # [B, H, K, V]: already role order
    assert rel(out.cache.final_state(1, 2), hf[:, 2]) < TOL
    assert rel(lens.adapter.hf_state(call, 129), hf) < TOL
    w = out.cache.write(1, 2)
    assert w.key.shape == (2, 130, 16) and torch.equal(w.beta, torch.ones(2, 130)) and w.alpha.isnan().all()
    S = out.cache.state(1, 2, 40)
    assert rel(torch.einsum("bkv,bk->bv", S, w.query[:, 40]), w.output[:, 40]) < TOL  # o_t = S_tᵀ r_t
    # the transition: S_t = diag(w_t) S_{t−1} + b_t (a_tᵀ S_{t−1}) + k_t v_tᵀ
    dec, a, b = call.transition(2)
    prev = out.cache.state(1, 2, 39)
    step = dec[:, 40, :, None] * prev + b[:, 40, :, None] * torch.einsum("bk,bkv->bv", a[:, 40], prev)[:, None]
    step = step + out.cache.write_matrix(1, 2, 40)
    assert rel(step, S) < TOL


def _edit_cases():
    u, w = _factors(1)
    return {
        "delete": [wl.Delete(0, 0, pos=30)],
        "delete_after_read": [wl.Delete(0, 1, pos=30, timing="after_read")],
        "replace": [wl.Replace(0, 1, 50, key=u, value=w, scale=0.7, batch=1)],
        "replace_matched_norm": [wl.Replace(2, 0, 12, key=u, value=w)],
        "add_matrix": [wl.Add(1, 1, 5, matrix=0.3 * torch.outer(u, w), batch=[0, 2])],
        "add_factors": [wl.Add(2, 3, 58, key=u, value=w, scale=2.0)],
        "random_atom": [wl.RandomAtom(2, 0, 59, seed=3)],
        "install": [wl.Install(0, 1, (40, 41, 42), value=w, magnitude=3.0)],
        "install_key_after_read": [wl.Install(0, 2, (40, 50), value=w, key=u, magnitude=1.5, timing="after_read")],
        "install_next_query": [wl.Install(2, 1, (20, 21), value=w, key_side="next_query")],
        "several_in_one_layer": [wl.Delete(0, 0, 30), wl.Add(0, 0, 30, key=u, value=w), wl.Delete(0, 3, 45, batch=2)],
        "two_layers": [wl.Delete(0, 0, 10), wl.Replace(2, 1, 50, key=u, value=w)],
    }


def test_every_edit_matches_oracle(lens):
    x = ids(3, 60, seed=2)
    native = lens.run(x).logits
    for name, edits in _edit_cases().items():
        fast = lens.run(x, edits=edits, cache=True, use_cache=True)
        ref = lens.run(x, edits=edits, oracle=True, use_cache=True)
        reuse = lens.run(x, edits=edits).logits  # native prefix reused (an RWKV7Cache built at the first edit)
        assert rel(fast.logits, ref.logits) < TOL, name
        assert rel(reuse, ref.logits) < TOL, name
        assert rel(fast.logits, native) > 1e-4, f"{name} had no effect"
        for layer in lens.recurrent_layers:
            assert rel(_states(fast.past_key_values)[layer], _states(ref.past_key_values)[layer]) < TOL, (name, layer)
        e = edits[0]
        call = fast.cache._calls[e.layer]
        _, S = naive_rwkv7(call.r, call.w, call.k, call.v, call.a, call.b, call.initial_state,
                           injections=call.injections)
        assert rel(fast.cache.state(e.layer, e.head, 59), S[:, e.head]) < TOL, name


def test_edit_effects_add_exactly_and_invariants(lens):
    x = ids(2, 50, seed=4)
    u, w = _factors(5)
    e1, e2 = wl.Delete(0, 0, 20), wl.Add(0, 0, 35, key=u, value=w)
    out = lens.run(x, cache=True)
    base, native = out.cache.output(0, 0), out.logits
    d1 = lens.run(x, cache=True, edits=[e1]).cache.output(0, 0) - base
    d2 = lens.run(x, cache=True, edits=[e2]).cache.output(0, 0) - base
    d12 = lens.run(x, cache=True, edits=[e1, e2]).cache.output(0, 0) - base
    assert rel(d12, d1 + d2) < 1e-4
    wm = out.cache.write_matrix(0, 1, 20)
    readd = [wl.Delete(0, 1, 20), wl.Add(0, 1, 20, matrix=wm[0], batch=0), wl.Add(0, 1, 20, matrix=wm[1], batch=1)]
    assert rel(lens.run(x, edits=readd).logits, native) < TOL
    f = out.cache.write(0, 1)
    same = wl.Replace(0, 1, 20, key=f.key[1, 20], value=f.value[1, 20], batch=1)
    assert rel(lens.run(x, edits=[same]).logits[1], native[1]) < TOL
    late = lens.run(x, edits=[wl.Delete(0, 1, 20, timing="after_read")]).logits
    assert rel(late[:, :21], native[:, :21]) < TOL and rel(late[:, 21:], native[:, 21:]) > 1e-5
    assert torch.equal(lens.run(x).logits, native)


def test_padding_mask(lens):
    """Masked positions leave the state unchanged and read nothing; propagated edits follow the kernel there."""
    x = ids(2, 30, seed=6)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[0, :4] = 0
    mask[1, 12:15] = 0  # a hole after the edit: the perturbation must pass through unchanged
    edits = [wl.Delete(1, 2, 10), wl.Add(1, 2, 5, matrix=torch.ones(16, 16), batch=0)]  # 5: row 0 is real there
    fast = lens.run(x, edits=edits, attention_mask=mask, use_cache=True)
    ref = lens.run(x, edits=edits, attention_mask=mask, oracle=True, use_cache=True)
    assert rel(fast.logits, ref.logits) < TOL
    assert rel(_states(fast.past_key_values)[1], _states(ref.past_key_values)[1]) < TOL


def test_generation_with_edits_matches_oracle(lens):
    x = ids(2, 20, seed=8)
    u, w = _factors(9)
    edits = [wl.Add(0, 0, 10, key=3 * u, value=3 * w), wl.Install(2, 1, (22, 23), value=w, magnitude=30.0),
             wl.Delete(1, 3, 25, batch=1)]
    fast = lens.generate(x, edits=edits, max_new_tokens=8)
    ref = lens.generate(x, edits=edits, max_new_tokens=8, oracle=True)
    assert torch.equal(fast.new_tokens, ref.new_tokens)
    assert rel(fast.logits, ref.logits) < TOL
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
    before = [t.clone() for part in (prefix.recurrent_state, prefix.attention_shift, prefix.ffn_shift) for t in part]
    a = lens.generate(x[:, 16:], past_key_values=prefix, max_new_tokens=4)
    b = lens.generate(x[:, 16:], past_key_values=prefix, max_new_tokens=4, edits=[wl.Delete(0, 0, 20)])
    full_a = lens.generate(x, max_new_tokens=4)
    full_b = lens.generate(x, max_new_tokens=4, edits=[wl.Delete(0, 0, 20)])
    assert rel(a.logits, full_a.logits) < TOL and rel(b.logits, full_b.logits) < TOL
    after = [t for part in (prefix.recurrent_state, prefix.attention_shift, prefix.ffn_shift) for t in part]
    assert all(torch.equal(p, q) for p, q in zip(before, after, strict=True))
    assert prefix.get_seq_length() == 16
    clone = lens.clone_cache(prefix)
    clone.recurrent_state[0].add_(1.0)
    assert torch.equal(prefix.recurrent_state[0], before[0])


def test_prefix_reuse_equals_full_forward_and_oracle(lens):
    """Each call is one group of rows continued from its first edit: lowest edited layer 0 (layer 0 recomputes
    v_first), lowest edited layer 1 (layer 0 short-circuited, v_first recorded), an edit at the last position (a
    one-token continuation) and one at position 0 (a full re-run)."""
    x = ids(3, 40, seed=12).repeat_interleave(2, 0)  # duplicate rows are run natively once
    u, w = _factors(13)
    native = lens.run(x).logits
    cases = {
        "low_layer_0": [wl.Replace(0, 1, 30, key=u, value=w, scale=0.7, batch=4), wl.Delete(2, 1, 12, batch=4),
                        wl.Delete(2, 0, 9, batch=0)],
        "low_layer_1": [wl.Delete(2, 0, pos=10 + r, batch=r) for r in range(3)] + [wl.Delete(1, 2, 20, batch=5)],
        "last_position": [wl.Delete(1, 3, 39, batch=3), wl.Add(2, 0, 39, key=u, value=w)],
        "position_0": [wl.Install(0, 1, (0, 1, 2), value=w, batch=5)],
    }
    for name, edits in cases.items():
        fast = lens.run(x, edits=edits).logits
        ref = lens.run(x, edits=edits, oracle=True).logits
        assert rel(fast, lens.run(x, edits=edits, _fast=False).logits) < TOL and rel(fast, ref) < TOL, name
        s0 = min(p for e in edits for p in edit_positions(e))
        assert s0 == 0 or rel(fast[:, :s0], native[:, :s0]) < 1e-6, name  # the native prefix


def test_errors(lens):
    with pytest.raises(errors.EditShapeError, match=r"\(d_k, d_v\)"):
        lens.run(ids(1, 8), edits=[wl.Add(0, 0, 3, matrix=torch.ones(16, 8))])
    with pytest.raises(errors.EditShapeError, match="d_v"):
        lens.run(ids(1, 8), edits=[wl.Replace(0, 0, 3, key=torch.ones(16), value=torch.ones(5))])
    with pytest.raises(errors.SiteOutOfRangeError, match="value heads"):
        lens.run(ids(1, 8), edits=[wl.Delete(0, 4, 2)])
    with pytest.raises(errors.PositionOutOfRangeError, match="valid: 0..7"):
        lens.run(ids(1, 8), edits=[wl.Delete(0, 0, 8)])
    with pytest.raises(errors.BatchRowOutOfRangeError):
        lens.run(ids(2, 8), edits=[wl.Delete(0, 0, 3, batch=2)])


def test_self_check_detects_a_changed_kernel(monkeypatch):
    import sys

    model = rwkv7(seed=3)
    lens = wl.WriteLens(model)
    modeling = sys.modules[type(model.model.layers[0].attn).__module__]
    real = modeling.rwkv7_recurrent.original

    def changed_kernel(*args, **kwargs):
        out, state = real(*args, **kwargs)
        return out * 1.5, state

    monkeypatch.setattr(modeling.rwkv7_recurrent, "original", changed_kernel)
    with pytest.raises(errors.SelfCheckError, match="transformers"):
        lens.self_check()


def test_fla_rwkv7_is_refused_with_a_pointer_to_rwkv7_hf():
    """fla's RWKV-7 (GPU-only kernels) is recognised and refused clearly (fla cannot be imported on CPU, so a
    stand-in with fla's class and module names is used)."""
    fla_attention = type("RWKV7Attention", (torch.nn.Module,), {"__module__": "fla.layers.rwkv7"})
    block = torch.nn.Module()
    block.attn = fla_attention()
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList([block])
    with pytest.raises(errors.UnsupportedModelError, match="rwkv7-hf"):
        wl.WriteLens(model)
