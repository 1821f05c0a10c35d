"""Dense, plain twins of the fast SAE paths (float64-capable). Used by tests and the benchmark only.

Everything here materialises what the fast paths avoid: all F pre-activations with gradients, dense codes
``[H, B, F]`` and the dense decode ``einsum("hbf,hfrk,hfrv->hbkv")`` (as the reference code's
``einsum("bi,irk,irv->bkv")``). Tensors carry the leading head dim H like :mod:`writelens.sae.sparse`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from writelens.sae.activations import HeavisideL0Function, JumpReLUFunction
from writelens.sae.config import Objective


def naive_bilinear_preacts(states: Tensor, enc_k: Tensor, enc_v: Tensor, b_enc: Tensor) -> Tensor:
    """``pre[h,b,i] = sum_r enc_k[h,i,r]^T S[h,b] enc_v[h,i,r] + b_enc[h,i]`` by one plain einsum."""
    return torch.einsum("hfrk,hbkv,hfrv->hbf", enc_k, states, enc_v) + b_enc[:, None, :]


def naive_flat_preacts(states: Tensor, enc: Tensor, b_enc: Tensor) -> Tensor:
    """``pre[h,b,i] = <enc[h,i], S[h,b]>_F + b_enc[h,i]``."""
    return torch.einsum("hfkv,hbkv->hbf", enc, states) + b_enc[:, None, :]


def naive_rank_decode(codes: Tensor, dec_k: Tensor, dec_v: Tensor) -> Tensor:
    """Dense decode of all atoms: ``sum_i codes_i sum_r dec_k[i,r] dec_v[i,r]^T``."""
    return torch.einsum("hbf,hfrk,hfrv->hbkv", codes, dec_k, dec_v)


def naive_flat_decode(codes: Tensor, dec: Tensor) -> Tensor:
    """Dense decode ``sum_i codes_i dec[i]``."""
    return torch.einsum("hbf,hfkv->hbkv", codes, dec)


def naive_topk(pre: Float[Tensor, "H B F"], k: int) -> Float[Tensor, "H B F"]:
    """Top-k per state, then ReLU, scattered into dense codes."""
    values, indices = torch.topk(pre, k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


def naive_batchtopk(pre: Float[Tensor, "H B F"], k: int) -> Float[Tensor, "H B F"]:
    """ReLU, then the top k*B entries of each head's whole batch."""
    n_heads, batch, _ = pre.shape
    flat = torch.relu(pre).reshape(n_heads, -1)
    values, indices = torch.topk(flat, k * batch, dim=-1)
    return torch.zeros_like(flat).scatter(-1, indices, values).reshape_as(pre)


def naive_threshold(pre: Float[Tensor, "H B F"], threshold: Float[Tensor, " H"]) -> Float[Tensor, "H B F"]:
    """BatchTopK inference: keep pre-activations above the per-head threshold."""
    return pre * (pre > threshold[:, None, None]).to(pre.dtype)


def naive_jumprelu(pre: Tensor, log_threshold: Float[Tensor, "H F"], bandwidth: float) -> Tensor:
    """JumpReLU on every feature (straight-through gradients to the thresholds)."""
    return JumpReLUFunction.apply(pre, log_threshold[:, None, :].expand_as(pre), bandwidth)


def naive_l0(pre: Tensor, log_threshold: Float[Tensor, "H F"], bandwidth: float) -> Float[Tensor, " H"]:
    """Mean over states of the straight-through count of active features."""
    active = HeavisideL0Function.apply(pre.detach(), log_threshold[:, None, :].expand_as(pre), bandwidth)
    return active.sum(-1).mean(-1)


class NaiveOutput(NamedTuple):
    recon: Tensor  # [H, B, dk, dv]
    codes: Tensor  # [H, B, F]
    mse: Tensor  # [H]
    aux: Tensor  # [H]
    sparsity: Tensor  # [H]
    total: Tensor  # []


def _params(sae) -> dict[str, Tensor]:
    names = ["b_enc", "b_dec"] + {
        "bilinear": ["enc_k", "enc_v", "dec_k", "dec_v"],
        "matrix": ["enc", "dec_k", "dec_v"],
        "flat": ["enc", "dec"],
    }[sae.cfg.architecture]
    return {name: sae.heads_first(getattr(sae, name)) for name in names}


def naive_preacts(sae, states: Tensor) -> Tensor:
    p = _params(sae)
    if sae.cfg.architecture == "bilinear":
        return naive_bilinear_preacts(states, p["enc_k"], p["enc_v"], p["b_enc"])
    return naive_flat_preacts(states, p["enc"], p["b_enc"])


def naive_decode(sae, codes: Tensor) -> Tensor:
    p = _params(sae)
    if sae.cfg.architecture == "flat":
        return naive_flat_decode(codes, p["dec"])
    return naive_rank_decode(codes, p["dec_k"], p["dec_v"])


def naive_activation(sae, pre: Tensor, training: bool) -> Tensor:
    c = sae.cfg
    if c.activation == "topk":
        return naive_topk(pre, c.k)
    if c.activation == "batchtopk":
        if training:
            return naive_batchtopk(pre, c.k)
        if int(sae.activation.threshold_updates) == 0:
            return naive_topk(pre, c.k)
        return naive_threshold(pre, sae.activation.threshold.to(pre.dtype))
    log_threshold = sae.heads_first(sae.activation.log_threshold)
    codes = naive_jumprelu(pre, log_threshold, c.jumprelu_bandwidth)
    return codes if training else pre * (pre > log_threshold.exp()[:, None, :]).to(pre.dtype)


def naive_aux(sae, pre: Tensor, residual: Tensor, dead: Bool[Tensor, "H F"], k_aux: int) -> Tensor:
    """AuxK with dense codes: top ``k_aux`` dead features, ReLU, dense decode, MSE to the residual."""
    masked = pre.detach().masked_fill(~dead[:, None, :], float("-inf"))
    indices = torch.topk(masked, min(k_aux, pre.shape[-1]), dim=-1).indices
    valid = dead[:, None, :].expand_as(pre).gather(-1, indices).to(pre.dtype)
    codes = torch.zeros_like(pre).scatter(-1, indices, torch.relu(pre.gather(-1, indices)) * valid)
    recon = naive_decode(sae, codes)
    return (recon - residual).pow(2).mean(dim=(1, 2, 3)) * dead.any(-1).to(pre.dtype)


def naive_weighted_error(error: Float[Tensor, "H B dk dv"], weighting: Float[Tensor, "H dk dk"]) -> Float[Tensor, " H"]:
    """``mean_b tr(E_bᵀ G E_b) / (d_k d_v)`` by a plain loop over heads and states."""
    n_heads, batch, d_k, d_v = error.shape
    out = []
    for h in range(n_heads):
        g = weighting[h].to(error.dtype)
        out.append(sum(torch.trace(error[h, b].T @ g @ error[h, b]) for b in range(batch)) / (batch * d_k * d_v))
    return torch.stack(out)


def naive_read_loss(error: Float[Tensor, "H B dk dv"], queries: Float[Tensor, "H N dk"], weight: float) -> Tensor:
    """The read-aligned loss from its definition, with no moment matrix: per head
    ``mean_b [(1 − w) ‖E_b‖² + w · d_k · mean_n ‖E_bᵀ q_n‖² / mean_n ‖q_n‖²] / (d_k d_v)``."""
    n_heads, batch, d_k, d_v = error.shape
    out = []
    for h in range(n_heads):
        q = queries[h].to(error.dtype)
        q_power = (q * q).sum(-1).mean()
        total = error.new_zeros(())
        for b in range(batch):
            e = error[h, b]
            reads = torch.stack([(e.T @ q[n]).pow(2).sum() for n in range(q.shape[0])]).mean()
            total = total + (1 - weight) * e.pow(2).sum() + weight * d_k * reads / q_power
        out.append(total / (batch * d_k * d_v))
    return torch.stack(out)


def naive_forward(sae, states: Tensor, objective: Objective | None = None, training: bool | None = None) -> NaiveOutput:
    """The SAE's forward with dense codes and dense decode, reading (never updating) its buffers.

    ``states`` in the SAE's public layout. In training mode the dead mask is what the fast forward computes
    after counting this batch; AuxK and the JumpReLU L0 penalty are included as in ``SAE.forward``."""
    objective = objective or Objective()
    training = sae.training if training is None else training
    _, heads = sae._to_heads(states)
    offset = sae.heads_first(sae.mean) if sae.cfg.center else None
    centred = heads - offset[:, None] if offset is not None else heads
    pre = naive_preacts(sae, centred)
    codes = naive_activation(sae, pre, training)
    output_offset = sae.heads_first(sae.b_dec) + (offset if offset is not None else 0)
    recon = naive_decode(sae, codes) + output_offset[:, None]
    if objective.read_weighting is None:
        mse = (recon - heads).pow(2).mean(dim=(1, 2, 3))
    else:
        mse = naive_weighted_error(recon - heads, objective.read_weighting)
    aux = torch.zeros_like(mse)
    sparsity = torch.zeros_like(mse)
    if training:
        fired = (codes > 0).any(dim=1)
        counters = sae.heads_first(sae.steps_since_active)
        dead = torch.where(fired, torch.zeros_like(counters), counters + 1) >= objective.dead_window
        if objective.lambda_aux > 0 and objective.k_aux > 0:
            aux = naive_aux(sae, pre, (heads - recon).detach(), dead, objective.k_aux)
        if sae.cfg.activation == "jumprelu":
            log_threshold = sae.heads_first(sae.activation.log_threshold)
            sparsity = naive_l0(pre, log_threshold, sae.cfg.jumprelu_bandwidth)
    total = (mse + objective.lambda_aux * aux + objective.lambda_sparsity * sparsity).sum()
    return NaiveOutput(recon, codes, mse, aux, sparsity, total)
