"""writelens' GDN oracle against fla (flash-linear-attention), on hosts that can run fla.

fla's GatedDeltaNet / DeltaNet kernels are triton-only and need a CUDA GPU, and ``fla.ops`` does not even import
without triton; this module skips cleanly when either is missing (it does on the project's CPU CI, so nothing
here has been run there). Where available it checks that the float64 oracle every writelens GDN test trusts
(``writelens.sites.gdn_oracle``) computes the same recurrence as fla's own reference,
``naive_recurrent_gated_delta_rule``, and agrees with fla's chunk kernel (the one transformers picks on GPU).
fla's RWKV-7 is refused with a clear error (see ``tests/test_rwkv7_sites.py``), not tested here.
"""

from __future__ import annotations

import pytest
import torch

from writelens.sites.gdn_oracle import l2norm, naive_gated_delta_rule

if not torch.cuda.is_available():
    pytest.skip("fla's kernels need a CUDA GPU (triton); CPU hosts use the transformers torch kernels",
                allow_module_level=True)
pytest.importorskip("fla")
fla_naive = pytest.importorskip("fla.ops.gated_delta_rule.naive")

DEVICE = "cuda"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def _inputs(hk: int, hv: int, seed: int, B: int = 2, T: int = 150, d_k: int = 32, d_v: int = 64):
    """Raw (un-normalised) q, k [B,T,Hk,d_k]; v [B,T,Hv,d_v]; g ≤ 0 and β in (0,1) [B,T,Hv]; h0 [B,Hv,d_k,d_v]."""
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, hk, d_k, generator=g), torch.randn(B, T, hk, d_k, generator=g)
    v = torch.randn(B, T, hv, d_v, generator=g)
    gate = -torch.rand(B, T, hv, generator=g) * 0.3
    beta = torch.rand(B, T, hv, generator=g)
    h0 = 0.1 * torch.randn(B, hv, d_k, d_v, generator=g)
    return [x.to(DEVICE) for x in (q, k, v, gate, beta, h0)]


@pytest.mark.parametrize("hk,hv", [(2, 2), (1, 2)])
def test_oracle_matches_fla_naive_recurrence(hk, hv):
    """fla's naive reference takes unit q, k with as many heads as v and applies the d_k^-1/2 scale itself."""
    q, k, v, gate, beta, h0 = _inputs(hk, hv, seed=hk)
    ours, S = naive_gated_delta_rule(q, k, v, gate, beta, initial_state=h0, output_final_state=True,
                                     use_qk_l2norm_in_kernel=True)
    rep = hv // hk
    qn, kn = (l2norm(x.float()).repeat_interleave(rep, 2) for x in (q, k))
    ref, S_ref = fla_naive.naive_recurrent_gated_delta_rule(qn, kn, v, beta, gate, initial_state=h0,
                                                            output_final_state=True)
    assert rel(ours, ref) < 1e-5 and rel(S, S_ref) < 1e-5


def test_fla_chunk_kernel_matches_oracle():
    """fla's chunk kernel (fp32 in, TF32 dots on recent GPUs) against the float64 oracle: a loose bound."""
    chunk = pytest.importorskip("fla.ops.gated_delta_rule").chunk_gated_delta_rule
    q, k, v, gate, beta, h0 = _inputs(2, 2, seed=7)
    ours, S = naive_gated_delta_rule(q, k, v, gate, beta, initial_state=h0, output_final_state=True,
                                     use_qk_l2norm_in_kernel=True)
    out, S_fla = chunk(q, k, v, gate, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert rel(out, ours) < 2e-2 and rel(S_fla, S) < 2e-2
