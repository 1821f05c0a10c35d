"""writelens' copy of transformers' torch chunk kernel: outputs bitwise equal to transformers' own, boundary states
equal to the float64 oracle; captured calls then find exact states without re-running the recurrence."""

from __future__ import annotations

import pytest
import torch
from models import ids, qwen35
from transformers.models.qwen3_5 import modeling_qwen3_5 as hf

import writelens as wl
from writelens.sites.gdn_chunk import chunk_rule_with_boundaries
from writelens.sites.gdn_oracle import l2norm, naive_gated_delta_rule
from writelens.sites.kernels import DeviceDispatch


def _inputs(B, T, hk, hv, d, seed, initial):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, hk, d, generator=gen), torch.randn(B, T, hk, d, generator=gen)
    v = torch.randn(B, T, hv, d, generator=gen)
    g = -torch.rand(B, T, hv, generator=gen) * 0.3
    beta = torch.rand(B, T, hv, generator=gen)
    s0 = torch.randn(B, hv, d, d, generator=gen) * 0.1 if initial else None
    return q, k, v, g, beta, s0


@pytest.mark.parametrize("T, hk, hv, initial", [(64, 2, 2, False), (200, 1, 2, True), (40, 2, 4, True),
                                                (128, 2, 2, True)])
def test_outputs_bitwise_equal_transformers_kernel_and_boundaries_equal_the_oracle(T, hk, hv, initial):
    q, k, v, g, beta, s0 = _inputs(2, T, hk, hv, 8, seed=T + hv, initial=initial)
    reference = DeviceDispatch(hf.torch_chunk_gated_delta_rule).torch_impl
    want_o, want_s = reference(q, k, v, g=g, beta=beta, initial_state=s0, output_final_state=True,
                               use_qk_l2norm_in_kernel=True)
    got_o, got_s, bounds, _ = chunk_rule_with_boundaries(q, k, v, g, beta, initial_state=s0, output_final_state=True,
                                                      use_qk_l2norm_in_kernel=True)
    assert torch.equal(got_o, want_o) and torch.equal(got_s, want_s)  # bit for bit
    assert bounds.shape == (T // 64, 2, hv, 8, 8)
    for i in range(T // 64):  # the state after position 64 (i + 1) - 1, against the float64 oracle
        _, s = naive_gated_delta_rule(q[:, : 64 * (i + 1)].double(), k[:, : 64 * (i + 1)].double(),
                                      v[:, : 64 * (i + 1)].double(), g[:, : 64 * (i + 1)].double(),
                                      beta[:, : 64 * (i + 1)].double(),
                                      initial_state=None if s0 is None else s0.double(), output_final_state=True)
        assert torch.allclose(bounds[i].double(), s.double(), rtol=0, atol=1e-5 * float(s.abs().max()))


def test_captured_states_use_the_kernels_boundaries_and_stay_exact():
    lens = wl.WriteLens(qwen35(layers=4, hk=1, hv=2))
    x = ids(2, 150, seed=4)
    out = lens.run(x, cache=True)
    layer = lens.recurrent_layers[0]
    call = out.cache._call(layer, 0)
    assert call.native_boundaries is not None and call.native_boundaries.shape[0] == 2  # positions 63 and 127
    positions = [5, 63, 64, 100, 149]
    got = out.cache.layer_states(layer, positions)
    # the per-head path from the start of the call (no kernel boundaries) gives the same states
    call.native_boundaries = None
    call._boundary, call._last = {}, {}
    for h in range(call.num_heads):
        for i, p in enumerate(positions):
            want = out.cache.state(layer, h, p)
            assert torch.allclose(got[:, i, h], want, rtol=0, atol=2e-6 * want.abs().max())


def test_states_inside_chunks_from_the_kernels_interior_equal_a_float64_recurrence():
    """``interior_states`` (no kernel run) at every position of a captured call, for all rows and for a subset of
    rows, against the delta rule stepped token by token in float64 from the call's own kernel inputs."""
    lens = wl.WriteLens(qwen35(layers=4, hk=1, hv=2))
    x = ids(3, 150, seed=7)
    call = lens.run(x, cache=True).cache._call(lens.recurrent_layers[1], 0)
    assert call.native_interior is not None
    heads, rows = (0, 1), torch.tensor([2, 0])
    ts = list(range(150))
    got = call.interior_states(heads, ts)  # [B, P, h, d_k, d_v]
    got_rows = call.interior_states(heads, ts[::7], rows)
    key = l2norm(call.key.double()).repeat_interleave(call.rep, dim=2)  # as the kernel normalises (eps 1e-6)
    S = torch.zeros(3, 2, call.d_k, call.d_v, dtype=torch.float64)
    for t in ts:
        k, v = key[:, t], call.value[:, t].double()
        g, b = call.g[:, t].double().exp(), call.beta[:, t].double()
        S = g[..., None, None] * S
        S = S + b[..., None, None] * k[..., :, None] * (v - torch.einsum("bhkv,bhk->bhv", S, k))[..., None, :]
        scale = float(S.abs().max())
        assert (got[:, t].double() - S).abs().max() < 1e-5 * scale, t
        if t % 7 == 0:
            assert (got_rows[:, t // 7].double() - S[rows]).abs().max() < 1e-5 * scale, t
    assert torch.allclose(call.states_for_rows(heads, 100, rows), got[rows, 100], atol=1e-6)
    for t in (63, 127):  # at a chunk boundary: the kernel's own boundary state, bitwise, on every path
        kept = call.native_boundaries[(t + 1) // 64 - 1][:, list(heads)]
        assert torch.equal(got[:, t], kept) and torch.equal(call.states_for_rows(heads, t, rows), kept[rows])
        assert torch.equal(call.states_many(heads, [t, 5])[:, 0], kept)
