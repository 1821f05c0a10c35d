"""A chunked, batched form of the RWKV-7 recurrence, for training the zoo's RWKV-7 model on CPU.

``rwkv7_hf``'s reference kernel (``rwkv7_hf.ops_rwkv7.rwkv7_recurrent``) steps one sample and one token at a
time, which makes a training step of 8 × 256 tokens take about a minute on two cores. This computes the same
equation, ``S_t = S_{t-1} (diag(w_t) + a_t b_tᵀ) + v_t k_tᵀ`` (``[V, K]`` view), ``o_t = S_t r_t``, chunk by
chunk: inside a chunk the erase term ``z_t = S_{t-1} a_t`` is solved for with one unit-triangular solve, so a
chunk costs a few small matmuls. Agreement with the reference is float32 rounding (checked by the tests).

Use it only through :func:`chunked_recurrence` (a context manager that swaps the kernel of
``rwkv7_hf.modeling_rwkv7`` and restores it); the shipped checkpoint is a plain ``RWKV7ForCausalLM`` that runs
on the reference kernel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

CHUNK = 16  # decay ≥ exp(-exp(-1/2)) ≈ 0.545 per step, so 1/Γ within a chunk stays below ~2e4 in float32


def rwkv7_chunked(
    receptance: torch.Tensor,
    decay: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for ``rwkv7_recurrent`` (same arguments, ``[B, T, H, D]`` inputs, ``[B, H, K, V]`` state);
    falls back to the reference kernel when ``attention_mask`` masks any position."""
    if attention_mask is not None and not bool(attention_mask.all()):
        from rwkv7_hf.ops_rwkv7 import rwkv7_recurrent

        return rwkv7_recurrent(receptance, decay, key, value, a, b, initial_state, attention_mask)
    B, T, H, K = receptance.shape
    V = value.shape[-1]
    dt = initial_state.dtype
    L = chunk
    N = -(-T // L)
    pad = N * L - T

    def prep(x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:  # [B,T,H,D] → [B,H,N,L,D]
        x = x.to(dt)
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad), value=fill)
        return x.view(B, N, L, H, -1).permute(0, 3, 1, 2, 4)

    r, k, v, aa, bb = (prep(x) for x in (receptance, key, value, a, b))
    lw = prep(decay, 1.0).log()
    cum = lw.cumsum(-2)  # log Γ_t (inclusive)
    g_t = cum.exp()
    g_prev = (cum - lw).exp()
    g_inv = (-cum).exp()
    g_end = (cum[..., -1:, :] - cum).exp()  # Γ_L / Γ_s
    a_t = aa * g_prev
    b_h, k_h = bb * g_inv, k * g_inv
    r_t = r * g_t
    strict = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)
    incl = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(0)
    m_ab = (a_t @ b_h.transpose(-1, -2)).masked_fill(~strict, 0.0)
    m_ak = (a_t @ k_h.transpose(-1, -2)).masked_fill(~strict, 0.0)
    m_rb = (r_t @ b_h.transpose(-1, -2)).masked_fill(~incl, 0.0)
    m_rk = (r_t @ k_h.transpose(-1, -2)).masked_fill(~incl, 0.0)
    eye = torch.eye(L, dtype=dt, device=r.device)
    # z = S_0-part + U with (I - M_ab) [A' | U] = [ã | M_ak v]
    sol = torch.linalg.solve_triangular(
        eye - m_ab, torch.cat([a_t, m_ak @ v], -1), upper=False, unitriangular=True
    )
    a_s, u = sol[..., :K], sol[..., K:]
    b_e, k_e = (bb * g_end).transpose(-1, -2), (k * g_end).transpose(-1, -2)  # [.., K, L]
    decay_end = cum[..., -1, :].exp()  # [B,H,N,K]
    state = initial_state  # [B,H,K,V]
    outs = []
    for n in range(N):
        z = a_s[:, :, n] @ state + u[:, :, n]  # [B,H,L,V]
        outs.append(r_t[:, :, n] @ state + m_rb[:, :, n] @ z + m_rk[:, :, n] @ v[:, :, n])
        state = decay_end[:, :, n].unsqueeze(-1) * state + b_e[:, :, n] @ z + k_e[:, :, n] @ v[:, :, n]
    out = torch.stack(outs, 2).permute(0, 2, 3, 1, 4).reshape(B, N * L, H, V)[:, :T]
    return out.to(value.dtype), state


@contextlib.contextmanager
def chunked_recurrence() -> Iterator[None]:
    """Run every ``RWKV7ForCausalLM`` forward inside the block on :func:`rwkv7_chunked`."""
    import rwkv7_hf.modeling_rwkv7 as modeling

    saved = modeling.rwkv7_recurrent
    modeling.rwkv7_recurrent = rwkv7_chunked
    try:
        yield
    finally:
        modeling.rwkv7_recurrent = saved


def init_rwkv7(model: torch.nn.Module) -> None:
    """RWKV-7's own initialisation (as in BlinkDL's RWKV-LM ``x070``) of the parameters that ``rwkv7_hf``
    leaves at zero: token-shift mixes, the decay bias ``w0``, ``k_k`` / ``k_a`` (at zero the erase key is
    ``normalize(0)``, whose gradient is ~1/eps and swamps gradient clipping), ``r_k``, the value-residual bias
    ``v0`` and the per-head output norm. Linear weights keep the HF ``normal(0, initializer_range)`` init."""
    layers = model.model.layers
    n = len(layers)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            attn = layer.attn
            c = attn.hidden_size
            r0 = i / max(1, n - 1)
            r1 = 1.0 - i / n
            ddd = torch.arange(c, dtype=torch.float32) / c
            for name, p in (
                ("x_r", 0.2),
                ("x_w", 0.9),
                ("x_k", 0.7),
                ("x_v", 0.7),
                ("x_a", 0.9),
                ("x_g", 0.2),
            ):
                getattr(attn, name).copy_((1.0 - ddd.pow(p * r1)).view(1, 1, c))
            d = attn.attention_hidden_size
            ramp = torch.arange(d, dtype=torch.float32) / max(1, d - 1)
            attn.w_lora.lora[2].bias.copy_(-7.0 + 5.0 * ramp.pow(0.85 + r0**0.5) + 0.5)
            attn.k_k.fill_(0.85)
            attn.k_a.fill_(1.0)
            attn.r_k.fill_(-0.04)
            if hasattr(attn, "v_lora"):
                attn.v_lora.lora[2].bias.fill_(1.0)
            attn.g_norm.weight.fill_(((1 + i) / n) ** 0.7)
            layer.ffn.x_k.copy_(1.0 - ddd.pow(r1**4))
