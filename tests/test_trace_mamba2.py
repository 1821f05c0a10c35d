"""nnsight tracing on Mamba-2: the write_sites points read what the cache records, and assigning them is exact
(compared with the float64 oracle running the equivalent writelens edits), in run and in generation."""

from __future__ import annotations

import pytest
import torch
from models import ids, mamba2, word_tokenizer

import writelens as wl

L, H = 1, 3


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.fixture(scope="module")
def lens():
    return wl.WriteLens(mamba2(2, 16), tokenizer=word_tokenizer())  # 8 heads in 2 groups, d_state 16, headdim 16


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
    assert torch.equal(logits, native.logits)
    assert q.shape == (2, 20, 8, 16) and state.shape == (2, 8, 16, 16)
    for got, want in ((q, w.query), (k, w.key), (v, w.value), (beta, w.beta), (gate, w.g), (o, w.output)):
        assert rel(got[:, :, H], want) < 1e-6
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
    u = torch.randn(16, generator=torch.Generator().manual_seed(0))
    w = lens.run(x, cache=True, sites=[(L, H)]).cache.write(L, H)
    with lens.trace(x):
        lens.points(L).key.output[:, 7, H] = u
        logits = lens.nnsight.output.logits.save()
    edits = [wl.Delete(L, H, 7), wl.Add(L, H, 7, key=u, value=w.value[0, 7], scale=float(w.beta[0, 7]))]
    assert rel(logits, lens.run(x, edits=edits, oracle=True).logits) < 1e-5


def test_assigning_gate_changes_the_decay_only(lens):
    """g_t = 0 (no decay at t): S_t gains (1 − α_t) S_{t−1}, an Add of that matrix at t."""
    x = ids(1, 20, seed=3)
    out = lens.run(x, cache=True, sites=[(L, H)])
    alpha = float(out.cache.write(L, H).alpha[0, 9])
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


def test_generation_with_per_step_iteration(lens):
    """Edits made in the traced prefill persist through the decode steps: the per-step logits equal an edited
    run over the generated sequence (a single Delete rarely flips a greedy token, so logits are compared)."""
    x = ids(1, 12, seed=5)
    with lens.nnsight.generate(x, max_new_tokens=3, do_sample=False) as tracer:
        shapes, logits = list().save(), list().save()
        p = lens.points(L)
        for step in tracer.iter[:3]:
            if step == 0:
                p.value.output[:, 5, H] = 0
            shapes.append(p.value.output.shape)
            logits.append(lens.nnsight.lm_head.output[0, -1])
        out = tracer.result.save()
    assert [tuple(s) for s in shapes] == [(1, 12, 8, 16), (1, 1, 8, 16), (1, 1, 8, 16)]
    ref = lens.run(out, edits=[wl.Delete(L, H, 5)], oracle=True).logits[0, 11:14]
    assert rel(torch.stack(logits), ref) < 1e-5
    assert rel(torch.stack(logits), lens.run(out).logits[0, 11:14]) > 1e-4


def test_assigning_value_during_a_decode_step(lens):
    """Zeroing x at the first generated token (a decode step) equals Delete at that position."""
    x = ids(1, 12, seed=6)
    with lens.nnsight.generate(x, max_new_tokens=3, do_sample=False) as tracer:
        logits = list().save()
        p = lens.points(L)
        for step in tracer.iter[:3]:
            if step == 1:
                p.value.output[:, 0, H] = 0
            logits.append(lens.nnsight.lm_head.output[0, -1])
        out = tracer.result.save()
    ref = lens.run(out, edits=[wl.Delete(L, H, 12)], oracle=True).logits[0, 11:14]
    assert rel(torch.stack(logits), ref) < 1e-5
    assert rel(torch.stack(logits), lens.run(out).logits[0, 11:14]) > 1e-4
