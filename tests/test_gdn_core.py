"""The GDN write-site core against the float64 per-token oracle, on tiny random-init Qwen3.5 / Qwen3-Next."""

from __future__ import annotations

import pytest
import torch
from models import ids, qwen3_next, qwen35

import writelens as wl
from writelens.sites.gdn_oracle import naive_gated_delta_rule

TOL = 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


@pytest.fixture(scope="module", params=["qwen3_5", "qwen3_5_shared_keys", "qwen3_5_all_linear", "qwen3_next"])
def lens(request):
    if request.param == "qwen3_5":
        model = qwen35(layers=8, hk=2, hv=2)  # two [lin, lin, lin, full] blocks
    elif request.param == "qwen3_5_shared_keys":
        model = qwen35(layers=4, hk=1, hv=2)  # num_v_heads = 2 × num_k_heads, as Qwen3.5-4B
    elif request.param == "qwen3_5_all_linear":
        model = qwen35(layers=3, all_linear=True)  # no attention layer: transformers' cache cannot count tokens
    else:
        model = qwen3_next()
    return wl.WriteLens(model)


def _factors(d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g), torch.randn(d, generator=g)


def test_sites_follow_layer_types(lens):
    types = lens.model.config.get_text_config(decoder=True).layer_types
    assert lens.recurrent_layers == [i for i, t in enumerate(types) if t == "linear_attention"]
    n_heads = lens.adapter.num_heads
    assert len(lens.sites) == len(lens.recurrent_layers) * n_heads
    s = lens.site(lens.recurrent_layers[-1], n_heads - 1)
    assert (s.d_k, s.d_v, s.family) == (16, 16, "gdn")


def test_capture_leaves_logits_unchanged_and_states_match_oracle(lens):
    x = ids(2, 150)
    out = lens.run(x, cache=True, use_cache=True)
    with torch.no_grad():
        ref = lens.model(x, use_cache=False).logits  # an all-linear Qwen3.5 fails in HF with a cache
    assert torch.equal(out.logits, ref)
    layer = lens.recurrent_layers[1]
    call = out.cache._calls[layer]
    for head in range(lens.adapter.num_heads):
        for pos in (0, 17, 63, 64, 127, 149):
            _, S = naive_gated_delta_rule(call.query[:, : pos + 1], call.key[:, : pos + 1], call.value[:, : pos + 1],
                                          call.g[:, : pos + 1], call.beta[:, : pos + 1], output_final_state=True)
            assert rel(out.cache.state(layer, head, pos), S[:, head]) < TOL
        hf_final = out.past_key_values.layers[layer].recurrent_states[0][:, head]
        assert rel(out.cache.final_state(layer, head), hf_final) < TOL
    w = out.cache.write(layer, 0)
    assert w.key.shape == (2, 150, 16) and w.beta.shape == (2, 150) and w.output.shape == (2, 150, 16)
    assert (w.key.norm(dim=-1) <= 1 + 1e-6).all() and (w.key.norm(dim=-1) > 0.9).all()  # l2norm with eps 1e-6
    # the read reproduces the output: o_t = scale · S_tᵀ q̂_t
    S = out.cache.state(layer, 0, 40)
    o = w.scale * torch.einsum("bkv,bk->bv", S, w.query[:, 40])
    assert rel(o, w.output[:, 40]) < TOL
    # per-row positions and several positions at once
    per_row = out.cache.state(layer, 1, torch.tensor([3, 99]))
    assert rel(per_row[1], out.cache.state(layer, 1, 99)[1]) < 1e-6
    many = out.cache.states(layer, 1, [5, 70, 6])
    assert rel(many[:, 2], out.cache.state(layer, 1, 6)) < 1e-6


def _edit_cases(lens):
    L0, L1 = lens.recurrent_layers[0], lens.recurrent_layers[-1]
    u, w = _factors(16, 1)
    return {
        "delete": [wl.Delete(L0, 0, pos=30)],
        "delete_after_read": [wl.Delete(L0, 1, pos=30, timing="after_read")],
        "replace": [wl.Replace(L0, 1, 70, key=u, value=w, scale=0.7, batch=1)],
        "replace_matched_norm": [wl.Replace(L1, 0, 12, key=u, value=w)],
        "add_matrix": [wl.Add(L0, 1, 5, matrix=0.3 * torch.outer(u, w), batch=[0, 2])],
        "add_factors": [wl.Add(L1, 1, 88, key=u, value=w, scale=2.0)],
        "random_atom": [wl.RandomAtom(L1, 0, 89, seed=3)],
        "install": [wl.Install(L0, 1, (40, 41, 42), value=w, magnitude=3.0)],
        "install_key": [wl.Install(L0, 0, (40, 60), value=w, key=u, magnitude=1.5, timing="after_read")],
        "install_next_query": [wl.Install(L1, 1, (20, 21), value=w, key_side="next_query")],
        "several_in_one_layer": [wl.Delete(L0, 0, 30), wl.Add(L0, 0, 30, key=u, value=w), wl.Delete(L0, 1, 60, batch=2)],
        "two_layers": [wl.Delete(L0, 0, 10), wl.Replace(L1, 1, 50, key=u, value=w)],
    }


def test_every_edit_matches_oracle(lens):
    x = ids(3, 90, seed=2)
    native = lens.run(x).logits
    for name, edits in _edit_cases(lens).items():
        fast = lens.run(x, edits=edits, cache=True, use_cache=True)
        ref = lens.run(x, edits=edits, oracle=True, use_cache=True)
        assert rel(fast.logits, ref.logits) < TOL, name
        assert rel(fast.logits, native) > 1e-4, f"{name} had no effect"
        for layer in lens.recurrent_layers:
            a = fast.past_key_values.layers[layer].recurrent_states[0]
            b = ref.past_key_values.layers[layer].recurrent_states[0]
            assert rel(a, b) < TOL, (name, layer)
        # the captured state includes the edit: compare with the oracle recurrence on the captured inputs
        e = edits[0]
        call = fast.cache._calls[e.layer]
        pos = 89
        injections = [inj for inj in call.injections]
        _, S = naive_gated_delta_rule(call.query, call.key, call.value, call.g, call.beta, output_final_state=True,
                                      injections=injections)
        assert rel(fast.cache.state(e.layer, e.head, pos), S[:, e.head]) < TOL, name


def test_edit_effects_add_exactly(lens):
    """Linearity: two edits in one layer perturb the layer's output by the sum of their perturbations."""
    x = ids(2, 80, seed=4)
    L = lens.recurrent_layers[0]
    u, w = _factors(16, 5)
    e1, e2 = wl.Delete(L, 0, 20), wl.Add(L, 0, 50, key=u, value=w)
    base = lens.run(x, cache=True).cache.output(L, 0)
    d1 = lens.run(x, cache=True, edits=[e1]).cache.output(L, 0) - base
    d2 = lens.run(x, cache=True, edits=[e2]).cache.output(L, 0) - base
    d12 = lens.run(x, cache=True, edits=[e1, e2]).cache.output(L, 0) - base
    assert rel(d12, d1 + d2) < 1e-4


def test_per_row_edits_equal_separate_runs(lens):
    x = ids(1, 60, seed=6).repeat(3, 1)
    L = lens.recurrent_layers[0]
    edits = [wl.Delete(L, 0, 10, batch=0), wl.Delete(L, 1, 30, batch=1)]
    batched = lens.run(x, edits=edits).logits
    for row, e in enumerate(edits):
        single = lens.run(x[:1], edits=[wl.Delete(e.layer, e.head, e.pos)]).logits
        assert rel(batched[row], single[0]) < TOL
    assert rel(batched[2], lens.run(x[:1]).logits[0]) < 1e-6


def test_invariants(lens):
    x = ids(2, 50, seed=7)
    L = lens.recurrent_layers[0]
    out = lens.run(x, cache=True)
    native = out.logits
    w = out.cache.write(L, 1)
    # deleting then re-adding the exact native write is the native run
    readd = [wl.Delete(L, 1, 20), wl.Add(L, 1, 20, matrix=out.cache.write_matrix(L, 1, 20)[0], batch=0),
             wl.Add(L, 1, 20, matrix=out.cache.write_matrix(L, 1, 20)[1], batch=1)]
    assert rel(lens.run(x, edits=readd).logits, native) < TOL
    # replacing the write by itself (matched norm) is the native run
    for row in range(2):
        same = wl.Replace(L, 1, 20, key=w.key[row, 20], value=w.value[row, 20], batch=row)
        assert rel(lens.run(x, edits=[same]).logits[row], native[row]) < TOL
    # a random atom of scale 0 equals delete
    assert rel(lens.run(x, edits=[wl.RandomAtom(L, 1, 20, scale=0.0)]).logits,
               lens.run(x, edits=[wl.Delete(L, 1, 20)]).logits) < 1e-6
    # after_read leaves the edited position's logits untouched
    late = lens.run(x, edits=[wl.Delete(L, 1, 20, timing="after_read")]).logits
    assert torch.equal(late[:, :20], native[:, :20])  # before the edit: the native prefix itself
    assert rel(late[:, 20], native[:, 20]) < TOL  # at it: recomputed from the cache, unchanged up to rounding
    assert rel(late[:, 21:], native[:, 21:]) > 1e-5
    # the model and a user's cache are unchanged
    again = lens.run(x).logits
    assert torch.equal(again, native)


def test_generation_with_edits_matches_oracle(lens):
    x = ids(2, 20, seed=8)
    L0, L1 = lens.recurrent_layers[0], lens.recurrent_layers[-1]
    u, w = _factors(16, 9)
    edits = [wl.Add(L0, 0, 10, key=3 * u, value=3 * w), wl.Install(L1, 1, (22, 23), value=w, magnitude=30.0)]
    fast = lens.generate(x, edits=edits, max_new_tokens=8)
    ref = lens.generate(x, edits=edits, max_new_tokens=8, oracle=True)
    assert torch.equal(fast.new_tokens, ref.new_tokens)
    assert rel(fast.logits, ref.logits) < TOL
    native = lens.generate(x, max_new_tokens=8)
    assert not torch.allclose(native.logits, fast.logits)
    with torch.no_grad():
        # an all-linear Qwen3.5 fails in HF's own cached generate (its cache cannot count tokens): compare uncached
        all_linear = "full_attention" not in lens.model.config.layer_types
        hf = lens.model.generate(x, max_new_tokens=8, do_sample=False, use_cache=not all_linear)
    assert torch.equal(hf[:, 20:], native.new_tokens)


def test_prompt_edit_persists_through_cache(lens):
    """An edit in the prompt changes every later step exactly as a full re-run with the edit does."""
    x = ids(1, 30, seed=10)
    L = lens.recurrent_layers[0]
    gen = lens.generate(x, edits=[wl.Delete(L, 0, 5)], max_new_tokens=5)
    full = lens.run(gen.sequences[:, :-1], edits=[wl.Delete(L, 0, 5)]).logits[:, 29:]
    assert rel(gen.logits, full) < TOL


def test_cache_branching(lens):
    x = ids(1, 24, seed=11)
    prefix = lens.run(x[:, :16], use_cache=True).past_key_values
    before = [t.clone() for t in (prefix.layers[lens.recurrent_layers[0]].recurrent_states[0],)]
    a = lens.generate(x[:, 16:], past_key_values=prefix, max_new_tokens=4)
    L = lens.recurrent_layers[0]
    b = lens.generate(x[:, 16:], past_key_values=prefix, max_new_tokens=4, edits=[wl.Delete(L, 0, 20)])
    full_a = lens.generate(x, max_new_tokens=4)
    full_b = lens.generate(x, max_new_tokens=4, edits=[wl.Delete(L, 0, 20)])
    assert rel(a.logits, full_a.logits) < TOL and rel(b.logits, full_b.logits) < TOL
    assert torch.equal(prefix.layers[L].recurrent_states[0], before[0])  # the user's cache is untouched
    with pytest.raises(wl.errors.PositionOutOfRangeError, match="prefix"):
        lens.generate(x[:, 16:], past_key_values=prefix, max_new_tokens=2, edits=[wl.Delete(L, 0, 3)])
    clone = lens.clone_cache(prefix)
    clone.layers[L].recurrent_states[0].add_(1.0)
    assert torch.equal(prefix.layers[L].recurrent_states[0], before[0])


def test_prefix_reuse_equals_full_forward_and_oracle(lens):
    """The fast path (native prefix reused, only the edited suffix recomputed) is exact."""
    x = ids(3, 90, seed=12).repeat_interleave(2, 0)  # duplicate rows are run natively once
    L0, L1 = lens.recurrent_layers[0], lens.recurrent_layers[-1]
    u, w = _factors(16, 13)
    edits = [wl.Delete(L1, 0, pos=30 + r, batch=r) for r in range(4)]
    edits += [wl.Replace(L0, 1, 70, key=u, value=w, scale=0.7, batch=4), wl.Delete(L1, 1, 3, batch=4),
              wl.Install(L0, 1, (0, 1, 2), value=w, batch=5)]  # a group starting at 0: fresh cache
    fast = lens.run(x, edits=edits).logits
    full = lens.run(x, edits=edits, _fast=False).logits
    ref = lens.run(x, edits=edits, oracle=True).logits
    assert rel(fast, full) < TOL and rel(fast, ref) < TOL
    # one group per call, so every row really continues from a cache built at its own first edit
    for row in range(6):
        mine = [e for e in edits if e.batch == row]
        assert rel(lens.run(x, edits=mine).logits, lens.run(x, edits=mine, oracle=True).logits) < TOL
    import writelens.sites.prefix as prefix

    calls = []
    real = prefix.prefix_cache
    prefix.prefix_cache = lambda *a: calls.append(a[3]) or real(*a)
    try:
        lens.run(x, edits=edits[:1])
    finally:
        prefix.prefix_cache = real
    assert calls == [30]  # the continuation path ran, from position 30
