"""The float64 per-token reference of the RWKV-7 generalised delta rule, with edits applied directly to the state.

The oracle the RWKV-7 fast path is tested against. State ``S`` is ``[d_k, d_v]`` (the ``rwkv7-hf`` kernel's own
canonical ``[K, V]`` layout, which is already writelens' role order). Per head, at each unmasked position t::

    S ← diag(w_t) S + b_t (a_tᵀ S) + k_t v_tᵀ;  S ← S + ΔS_t (edits);  o_t = Sᵀ r_t

(``a = −κ̂``, ``b = κ̂ · iclr`` as the model passes them). A masked position (``attention_mask`` False) leaves the
state unchanged and outputs zero, as the kernel does; edits there are still added. Same signature as
``rwkv7_hf.ops_rwkv7.rwkv7_recurrent`` plus ``injections`` (absolute positions) and ``offset``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def naive_rwkv7(
    receptance: Tensor,
    decay: Tensor,
    key: Tensor,
    value: Tensor,
    a: Tensor,
    b: Tensor,
    initial_state: Tensor | None = None,
    attention_mask: Tensor | None = None,
    injections: Sequence = (),
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Per-token float64 RWKV-7 recurrence.

    Args:
        receptance, decay, key, a, b: [B, T, H, K]; value: [B, T, H, V]; initial_state: [B, H, K, V] or None;
        attention_mask: bool [B, T] or None; injections: ``writelens.sites.base.Injection`` records.
    Returns:
        (o [B, T, H, V] in value's dtype, final state [B, H, K, V] float32)
    """
    Bsz, T, H, K = key.shape
    V = value.shape[-1]
    f64 = torch.float64
    r, w, k, v, a, b = (x.to(f64) for x in (receptance, decay, key, value, a, b))
    if initial_state is None:
        S = torch.zeros(Bsz, H, K, V, dtype=f64, device=key.device)
    else:
        S = initial_state.to(f64).clone()
    mask = None if attention_mask is None else attention_mask.to(torch.bool).to(key.device)
    by_t: dict[int, list] = {}
    for inj in injections:
        by_t.setdefault(inj.pos - offset, []).append(inj)
    out = torch.zeros(Bsz, T, H, V, dtype=f64, device=key.device)
    for t in range(T):
        new = (w[:, t, :, :, None] * S
               + b[:, t, :, :, None] * torch.einsum("bhk,bhkv->bhv", a[:, t], S)[:, :, None, :]
               + k[:, t, :, :, None] * v[:, t, :, None, :])
        S = new if mask is None else torch.where(mask[:, t, None, None, None], new, S)
        late = []
        for inj in by_t.get(t, ()):
            if inj.with_read:
                S[inj.rows, inj.head] += inj.delta.to(f64).to(S.device)
            else:
                late.append(inj)
        o = torch.einsum("bhkv,bhk->bhv", S, r[:, t])
        out[:, t] = o if mask is None else o * mask[:, t, None, None]
        for inj in late:
            S[inj.rows, inj.head] += inj.delta.to(f64).to(S.device)
    return out.to(value.dtype), S.float()
