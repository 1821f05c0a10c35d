"""The float64 per-token reference of the Mamba-2 SSD recurrence, with edits applied directly to the state.

This is the oracle the Mamba-2 fast paths are tested against: no chunking, no closed forms, one token at a time.
In writelens' role order (state ``S`` is ``[d_k = d_state, d_v = headdim]``, the transpose of HF's
``[headdim, d_state]``), per head h with group g = h // (H / G)::

    S ← exp(dt_t A_h) S;  S ← S + dt_t B_t x_tᵀ;  S ← S + ΔS_t (edits);  y_t = Sᵀ C_t + D_h x_t

``naive_chunk_scan`` and ``naive_state_update`` are drop-ins for the two HF kernels (``mamba2_chunk_scan``,
``mamba2_selective_state_update``, same arguments) that also take ``injections`` (absolute positions) and ``offset``
(absolute position of t = 0); both are built on :func:`naive_ssd`, which takes the effective step size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def effective_dt(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool,
                 dt_limit: tuple[float, float] | None) -> Tensor:
    """The step size exactly as the HF kernels derive it: ``clamp(softplus(dt + dt_bias), *dt_limit)`` (the decode
    kernel does not clamp: pass ``dt_limit=None``). Same shape and dtype as ``dt``."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit is not None:
        dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1])
    return dt


def naive_ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    injections: Sequence = (),
    offset: int = 0,
    log_decay: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token float64 SSD recurrence.

    Args:
        x: [B, T, H, P]; dt: [B, T, H] effective step sizes (after bias, softplus, clamp); A: [H] (negative);
        B, C: [B, T, G, N]; D: [H] or None; initial_state: [B, H, P, N] (HF layout) or None;
        injections: ``writelens.sites.base.Injection`` records, ``delta`` in role order [n, N, P];
        log_decay: [B, T, H] to decay by ``exp(log_decay)`` instead of ``exp(dt A)`` (assigned trace points).
    Returns:
        (y [B, T, H, P] float64, final state [B, H, P, N] float64 in HF layout)
    """
    Bsz, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    rep = H // G
    f64 = torch.float64
    xs, dts = x.to(f64), dt.to(f64)
    Bm = B.to(f64).repeat_interleave(rep, dim=2)
    Cm = C.to(f64).repeat_interleave(rep, dim=2)
    A = A.to(f64).to(x.device)
    decay = torch.exp(dts * A if log_decay is None else log_decay.to(f64))  # [B, T, H]
    if initial_state is None:
        S = torch.zeros(Bsz, H, N, P, dtype=f64, device=x.device)
    else:
        S = initial_state.to(f64).transpose(-1, -2).clone()  # role order [B, H, N, P]
    by_t: dict[int, list] = {}
    for inj in injections:
        by_t.setdefault(inj.pos - offset, []).append(inj)
    y = torch.zeros(Bsz, T, H, P, dtype=f64, device=x.device)
    for t in range(T):
        S = S * decay[:, t, :, None, None]
        S = S + dts[:, t, :, None, None] * Bm[:, t, :, :, None] * xs[:, t, :, None, :]
        late = []
        for inj in by_t.get(t, ()):
            if inj.with_read:
                S[inj.rows, inj.head] += inj.delta.to(f64).to(S.device)
            else:
                late.append(inj)
        y[:, t] = torch.einsum("bhnp,bhn->bhp", S, Cm[:, t])
        for inj in late:
            S[inj.rows, inj.head] += inj.delta.to(f64).to(S.device)
    if D is not None:
        y = y + D.to(f64).to(x.device)[:, None] * xs
    return y, S.transpose(-1, -2)


def naive_chunk_scan(
    hidden_states: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int | None = None,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    initial_states: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_states: bool = False,
    injections: Sequence = (),
    offset: int = 0,
    **_: object,
):
    """Drop-in for HF ``mamba2_chunk_scan`` (x [B,T,H,P], raw dt [B,T,H], A [H], B/C [B,T,G,N], D [H], dt_bias [H],
    initial_states [B,H,P,N]); returns y [B,T,H,P] float32 (and the final state [B,H,P,N] float32 if asked)."""
    dt_eff = effective_dt(dt.float(), dt_bias, dt_softplus, dt_limit)
    y, S = naive_ssd(hidden_states, dt_eff, A, B, C, D, initial_states, injections, offset)
    y = y.float()
    return (y, S.float()) if return_final_states else y


def naive_state_update(
    state: Tensor,
    hidden_states: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    injections: Sequence = (),
    offset: int = 0,
    **_: object,
) -> Tensor:
    """Drop-in for HF ``mamba2_selective_state_update`` (one token: state [B,H,P,N] updated **in place**,
    x [B,H,P], dt [B,H,P], A [H,P,N], B/C [B,G,N], D [H,P], dt_bias [H,P]); returns y [B,H,P] in x's dtype."""
    dt_eff = effective_dt(dt[..., 0].float(), None if dt_bias is None else dt_bias[..., 0], dt_softplus, None)
    y, S = naive_ssd(hidden_states[:, None], dt_eff[:, None], A[:, 0, 0], B[:, None], C[:, None],
                     None if D is None else D[:, 0], state, injections, offset)
    state.copy_(S.to(state.dtype))
    return y[:, 0].to(hidden_states.dtype)


class Mamba2Oracle(NamedTuple):
    """The two drop-ins, as ``session.kernel_override`` for the Mamba-2 interceptors."""

    chunk: object = naive_chunk_scan
    step: object = naive_state_update
