"""nnsight tracing: write sites are ordinary modules, readable and assignable, in run and in generate."""

from __future__ import annotations

import pytest
import torch
from models import ids, qwen35, word_tokenizer

import writelens as wl
from writelens import errors
from writelens.sites.gdn_oracle import naive_gated_delta_rule


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.fixture(scope="module")
def lens():
    return wl.WriteLens(qwen35(layers=4, hk=1, hv=2), tokenizer=word_tokenizer())


def test_read_points_match_the_cache(lens):
    x = ids(2, 20)
    native = lens.run(x, cache=True, use_cache=True)
    with lens.trace(x):
        p = lens.points(1)
        q = p.query.output.save()
        k = p.key.output.save()
        v = p.value.output.save()
        beta = p.beta.output.save()
        gate = p.gate.output.save()
        write = p.write.output.save()
        o = p.read.output.save()
        state = p.state.output.save()
        logits = lens.nnsight.output.logits.save()
    w = native.cache.write(1, 1)
    assert torch.equal(logits, native.logits)
    assert q.shape == (2, 20, 2, 16) and rel(q[:, :, 1], w.query) < 1e-6 and rel(k[:, :, 1], w.key) < 1e-6
    assert rel(v[:, :, 1], w.value) < 1e-6 and rel(beta[:, :, 1], w.beta) < 1e-6 and rel(gate[:, :, 1], w.g) < 1e-6
    assert rel(write[0][:, :, 1], w.key) < 1e-6
    assert rel(o[:, :, 1], w.output) < 1e-6
    assert rel(state, native.past_key_values.layers[1].recurrent_states[0]) < 1e-6


def test_assigning_value_is_an_exact_edit(lens):
    """Zeroing v_t inside the step is exactly Delete (decay and erase stay)."""
    x = ids(1, 20, seed=1)
    with lens.trace(x):
        lens.points(1).value.output[:, 5, 0] = 0
        logits = lens.nnsight.output.logits.save()
    ref = lens.run(x, edits=[wl.Delete(1, 0, 5)], oracle=True).logits
    assert rel(logits, ref) < 1e-5


def test_assigning_key_reruns_the_kernel_exactly(lens):
    x = ids(1, 20, seed=2)
    u = torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator().manual_seed(0)), dim=0)
    with lens.trace(x):
        p = lens.points(0)
        q = p.query.output.save()
        k = p.key.output
        k[:, 7, 1] = u
        k = k.save()
        v = p.value.output.save()
        beta = p.beta.output.save()
        gate = p.gate.output.save()
        o = p.read.output.save()
    assert torch.allclose(k[0, 7, 1], u)
    ref, _ = naive_gated_delta_rule(q, k, v, gate, beta, use_qk_l2norm_in_kernel=False)
    assert rel(o, ref) < 1e-5


def test_assigning_the_read_changes_later_positions_only(lens):
    x = ids(1, 16, seed=3)
    native = lens.run(x).logits
    with lens.trace(x):
        lens.points(2).read.output[:, 9:, 0] = 0
        logits = lens.nnsight.output.logits.save()
    assert torch.equal(logits[:, :9], native[:, :9])
    assert rel(logits[:, 9:], native[:, 9:]) > 1e-4


def test_generation_with_per_step_iteration(lens):
    """The prefill edit persists through the decode steps: per-step logits equal an edited oracle run over the
    generated sequence (a single Delete rarely flips a greedy token, so logits are compared, not only tokens)."""
    x = ids(1, 12, seed=4)
    ref = lens.generate(x, max_new_tokens=3, edits=[wl.Delete(1, 0, 5)])
    with lens.nnsight.generate(x, max_new_tokens=3, do_sample=False) as tracer:
        shapes, logits = list().save(), list().save()
        p = lens.points(1)
        for step in tracer.iter[:3]:
            if step == 0:
                p.value.output[:, 5, 0] = 0
            shapes.append(p.value.output.shape)
            logits.append(lens.nnsight.lm_head.output[0, -1])
        out = tracer.result.save()
    assert [tuple(s) for s in shapes] == [(1, 12, 2, 16), (1, 1, 2, 16), (1, 1, 2, 16)]
    assert torch.equal(out[:, 12:], ref.new_tokens)
    expected = lens.run(out, edits=[wl.Delete(1, 0, 5)], oracle=True).logits[0, 11:14]
    assert rel(torch.stack(logits), expected) < 1e-5
    assert rel(torch.stack(logits), lens.run(out).logits[0, 11:14]) > 1e-4


def test_plain_nnsight_language_model_sees_the_sites(lens):
    from nnsight import LanguageModel

    lm = LanguageModel(lens.model, tokenizer=lens.tokenizer)
    lens.arm_trace_points(True)
    x = ids(1, 10, seed=5)
    with lm.trace(x):
        v = lm.model.layers[0].linear_attn.write_sites.value.output.save()
    assert v.shape == (1, 10, 2, 16)


def test_arming_and_missing_tokenizer():
    plain = wl.WriteLens(qwen35(layers=4, hk=1, hv=2, seed=1))
    plain.arm_trace_points(False)
    assert all(not m.write_sites.armed for m in plain.adapter.layer_modules.values())
    with pytest.raises(errors.MissingTokenizerError, match="tokenizer"):
        plain.require_tokenizer("traced generation")
    _ = plain.nnsight  # accessing the nnsight wrapper arms the points
    assert all(m.write_sites.armed for m in plain.adapter.layer_modules.values())
