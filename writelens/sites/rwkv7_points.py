"""RWKV-7 trace points: the ``write_sites`` modules of an ``RWKV7TimeMix`` (see :mod:`writelens.sites.points`).

==========  ===============================  ==========================================================
point       value (heads on axis 2)          assigning it
==========  ===============================  ==========================================================
``query``   r [B, T, H, K] (receptance)      the read uses the new r
``key``     k [B, T, H, K]                   the write uses the new k (the erase term keeps κ̂)
``value``   v [B, T, H, V]                   the write uses the new v
``beta``    [B, T, H] write coefficient      scales the write ``β k ⊗ v`` (1 where the position is
            (1; 0 at masked positions)       processed; the model has no such input)
``gate``    log w [B, T, H, K] (≤ 0)         the per-channel decay ``w = exp(gate)``
``write``   (key, value, beta)               same as assigning the three
``read``    o [B, T, H, V]                   replaces the head outputs before the group norm
``state``   S_T [B, H, K, V]                 replaces the final state stored in the cache
==========  ===============================  ==========================================================

The rank-1 erase term ``b_t a_tᵀ`` of the transition is not a point (edit the state instead). Assigned input points
make the layer run the float64 per-token recurrence (:func:`~writelens.sites.rwkv7_oracle.naive_rwkv7`) on the
assigned inputs, edits included: exact, not linearised. An assigned ``beta`` is folded into the value the kernel
and ``cache.write`` see.
"""

from __future__ import annotations

import torch
from torch import Tensor

from writelens.sites.points import WriteSites, call_input_points

__all__ = ["input_points", "output_points"]


def input_points(sites: WriteSites, r: Tensor, w: Tensor, k: Tensor, v: Tensor, mask: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Call the input points on r, w, k [B,T,H,K], v [B,T,H,V] (mask bool [B,T] or None); returns the assigned
    (r, w, k, β·v) or None when nothing was assigned."""
    B, T, H, _ = k.shape
    beta = torch.ones(B, T, H, device=k.device) if mask is None else mask.float()[:, :, None].expand(B, T, H).clone()
    given = {"query": r.float().clone(), "key": k.float().clone(), "value": v.float().clone(), "beta": beta,
             "gate": w.double().log().float()}
    new, flags = call_input_points(sites, given)
    any_changed = any(flags.values())
    if not any_changed:
        return None
    decay = new["gate"].double().exp().to(w.dtype)
    value = (new["beta"][..., None] * new["value"]).to(v.dtype)
    return new["query"].to(r.dtype), decay, new["key"].to(k.dtype), value


def output_points(sites: WriteSites, out: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Call ``read`` on o [B, T, H, V] and ``state`` on the final state [B, H, K, V]."""
    out = sites.read(out)
    if state is not None:
        state = sites.state(state)
    return out, state
