"""The float64 per-token reference of the gated delta rule, with edits applied directly to the state.

This is the oracle every fast path is tested against: no chunking, no linearisation, one token at a time::

    S ← exp(g_t) S;  S ← S − β_t k̂_t (k̂_tᵀ S) + β_t k̂_t v_tᵀ;  S ← S + ΔS_t (edits);  o_t = d_k^{-1/2} Sᵀ q̂_t

Same signature as the HF kernels (``query, key, value, g, beta, initial_state, output_final_state,
use_qk_l2norm_in_kernel``) plus ``injections`` (absolute positions) and ``offset`` (absolute position of t = 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def l2norm(x: Tensor, dim: int = -1, eps: float = 1e-6) -> Tensor:
    """``x / sqrt(Σx² + eps)`` exactly as the HF / fla kernels normalise q and k."""
    return x * torch.rsqrt((x * x).sum(dim=dim, keepdim=True) + eps)


def naive_gated_delta_rule(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = True,
    injections: Sequence = (),
    offset: int = 0,
    **_: object,
) -> tuple[Tensor, Tensor | None]:
    """Per-token float64 gated delta rule.

    Args:
        query, key: [B, T, Hk, d_k]; value: [B, T, Hv, d_v]; g, beta: [B, T, Hv];
        initial_state: [B, Hv, d_k, d_v] or None; injections: ``writelens.sites.base.Injection`` records.
    Returns:
        (o [B, T, Hv, d_v] in query's dtype, final state [B, Hv, d_k, d_v] float32 or None)
    """
    B, T, Hk, dk = key.shape
    Hv = value.shape[2]
    rep = Hv // Hk
    f64 = torch.float64
    q = query.to(f64).repeat_interleave(rep, dim=2)
    k = key.to(f64).repeat_interleave(rep, dim=2)
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    q = q * dk**-0.5
    v, g, beta = value.to(f64), g.to(f64), beta.to(f64)
    S = torch.zeros(B, Hv, dk, v.shape[-1], dtype=f64) if initial_state is None else initial_state.to(f64).clone()
    S = S.to(query.device)
    by_t: dict[int, list] = {}
    for inj in injections:
        by_t.setdefault(inj.pos - offset, []).append(inj)
    out = torch.zeros(B, T, Hv, v.shape[-1], dtype=f64, device=query.device)
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]
        kt = k[:, t]
        S = S - beta[:, t, :, None, None] * kt[..., :, None] * torch.einsum("bhk,bhkv->bhv", kt, S)[..., None, :]
        S = S + beta[:, t, :, None, None] * kt[..., :, None] * v[:, t, :, None, :]
        late = []
        for inj in by_t.get(t, ()):
            if inj.with_read:
                S[inj.rows, inj.head] += inj.delta.to(f64).to(S.device)
            else:
                late.append(inj)
        out[:, t] = torch.einsum("bhkv,bhk->bhv", S, q[:, t])
        for inj in late:
            S[inj.rows, inj.head] += inj.delta.to(f64).to(S.device)
    return out.to(query.dtype), (S.float() if output_final_state else None)
