"""nnsight tracing on Mamba-2 and RWKV-7: the write_sites points read what the cache records, and assigning them is
exact (compared with the float64 oracle running the equivalent writelens edits), in run and in generation."""

from __future__ import annotations

import pytest
import torch
from models import ids, mamba2, rwkv7, word_tokenizer

import writelens as wl

L, H = 1, 3
SHAPES = {"mamba2": (8, 16, 16), "rwkv7": (4, 16, 16)}  # heads, d_k, d_v


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.fixture(scope="module", params=["mamba2", "rwkv7"])
def lens(request):
    if request.param == "rwkv7":
        pytest.importorskip("rwkv7_hf")
        return wl.WriteLens(rwkv7(), tokenizer=word_tokenizer())  # 4 heads × 16
    return wl.WriteLens(mamba2(2, 16), tokenizer=word_tokenizer())  # 8 heads in 2 groups, d_state 16, headdim 16


def _decay(out, layer, head):
    """The transition's diagonal [B, T, d_k]: Mamba-2's α on every channel, RWKV-7's per-channel w."""
    call = out.cache.recurrent_call(layer)
    if hasattr(call, "transition"):
        return call.transition(head)[0]
    alpha = out.cache.write(layer, head).alpha
    return alpha[..., None].expand(*alpha.shape, call.d_k)


def test_read_points_match_the_cache(lens):
    x = ids(2, 20)
    native = lens.run(x, cache=True, use_cache=True)
    with lens.trace(x):
        p = lens.points(L)
        q = p.query.output.save()
        k = p.key.output.save()
        v = p.value.output.save()
        beta = p.beta.output.save()
        gate = p.gate.output.save()
        o = p.read.output.save()
        state = p.state.output.save()
        logits = lens.nnsight.output.logits.save()
    w = native.cache.write(L, H)
    heads, dk, dv = SHAPES[lens.adapter.family]
    assert torch.equal(logits, native.logits)
    assert q.shape == (2, 20, heads, dk) and v.shape == (2, 20, heads, dv) and state.shape == (2, heads, dk, dv)
    for got, want in ((q, w.query), (k, w.key), (v, w.value), (beta, w.beta), (o, w.output)):
        assert rel(got[:, :, H], want) < 1e-6
    decay = _decay(native, L, H) if lens.adapter.family == "rwkv7" else w.alpha
    assert rel(gate[:, :, H].exp(), decay) < 1e-6
    assert rel(state[:, H], native.cache.final_state(L, H)) < 1e-5


def test_assigning_value_is_an_exact_delete(lens):
    x = ids(1, 20, seed=1)
    with lens.trace(x):
        lens.points(L).value.output[:, 5, H] = 0
        logits = lens.nnsight.output.logits.save()
    ref = lens.run(x, edits=[wl.Delete(L, H, 5)], oracle=True).logits
    assert rel(logits, ref) < 1e-5


def test_assigning_key_replaces_the_write(lens):
    x = ids(1, 20, seed=2)
    u = torch.randn(lens.adapter.d_k, generator=torch.Generator().manual_seed(0))
    w = lens.run(x, cache=True, sites=[(L, H)]).cache.write(L, H)
    with lens.trace(x):
        lens.points(L).key.output[:, 7, H] = u
        logits = lens.nnsight.output.logits.save()
    edits = [wl.Delete(L, H, 7), wl.Add(L, H, 7, key=u, value=w.value[0, 7], scale=float(w.beta[0, 7]))]
    assert rel(logits, lens.run(x, edits=edits, oracle=True).logits) < 1e-5


def test_assigning_gate_changes_the_decay_only(lens):
    """g_t = 0 (no decay at t): S_t gains (1 − α_t) ⊙ S_{t−1} (row-wise), an Add of that matrix at t."""
    x = ids(1, 20, seed=3)
    out = lens.run(x, cache=True, sites=[(L, H)])
    alpha = _decay(out, L, H)[0, 9][:, None]
    prev = out.cache.state(L, H, 8)[0]
    with lens.trace(x):
        lens.points(L).gate.output[:, 9, H] = 0
        logits = lens.nnsight.output.logits.save()
    ref = lens.run(x, edits=[wl.Add(L, H, 9, matrix=(1 - alpha) * prev)], oracle=True).logits
    assert rel(logits, ref) < 1e-5


def test_assigning_the_read_changes_later_positions_only(lens):
    x = ids(1, 16, seed=4)
    native = lens.run(x).logits
    with lens.trace(x):
        lens.points(2).read.output[:, 9:, 0] = 0
        logits = lens.nnsight.output.logits.save()
    assert torch.equal(logits[:, :9], native[:, :9])
    assert rel(logits[:, 9:], native[:, 9:]) > 1e-4


def _full_rerun(lens) -> bool:
    """rwkv7-hf under transformers 5: HF ``generate`` cannot hand the model its RWKV7Cache (the kwarg was renamed
    ``cache``), so every step re-runs the whole sequence: the points show all positions at every step."""
    return lens.adapter.family == "rwkv7"


def test_generation_with_per_step_iteration(lens):
    """Edits made in the traced prefill persist through the decode steps: the per-step logits equal an edited
    run over the generated sequence (a single Delete rarely flips a greedy token, so logits are compared)."""
    x = ids(1, 12, seed=5)
    full = _full_rerun(lens)
    with lens.nnsight.generate(x, max_new_tokens=3, do_sample=False) as tracer:
        shapes, logits = list().save(), list().save()
        p = lens.points(L)
        for step in tracer.iter[:3]:
            if step == 0 or full:
                p.value.output[:, 5, H] = 0
            shapes.append(p.value.output.shape)
            logits.append(lens.nnsight.lm_head.output[0, -1])
        out = tracer.result.save()
    heads, _, dv = SHAPES[lens.adapter.family]
    lengths = (12, 13, 14) if full else (12, 1, 1)
    assert [tuple(s) for s in shapes] == [(1, n, heads, dv) for n in lengths]
    ref = lens.run(out, edits=[wl.Delete(L, H, 5)], oracle=True).logits[0, 11:14]
    assert rel(torch.stack(logits), ref) < 1e-5
    assert rel(torch.stack(logits), lens.run(out).logits[0, 11:14]) > 1e-4


def test_assigning_value_during_a_decode_step(lens):
    """Zeroing the value of the first generated token (position 12) equals Delete at that position."""
    x = ids(1, 12, seed=6)
    full = _full_rerun(lens)
    with lens.nnsight.generate(x, max_new_tokens=3, do_sample=False) as tracer:
        logits = list().save()
        p = lens.points(L)
        for step in tracer.iter[:3]:
            if step == 1 and not full:
                p.value.output[:, 0, H] = 0
            if step >= 1 and full:
                p.value.output[:, 12, H] = 0
            logits.append(lens.nnsight.lm_head.output[0, -1])
        out = tracer.result.save()
    ref = lens.run(out, edits=[wl.Delete(L, H, 12)], oracle=True).logits[0, 11:14]
    assert rel(torch.stack(logits), ref) < 1e-5
    assert rel(torch.stack(logits), lens.run(out).logits[0, 11:14]) > 1e-4
