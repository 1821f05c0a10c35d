"""Sparse activations: TopK, BatchTopK (with an EMA inference threshold) and JumpReLU.

Every activation works in two steps so the encoder never differentiates through all F pre-activations:

1. ``select(pre)`` looks at the detached pre-activations ``pre [H, B, F]`` and returns the candidate
   features per state as a :class:`Selection` (``indices [H, B, m]``, ``valid [H, B, m]``; padded slots
   have ``valid=False``).
2. ``activate(pre_selected, selection)`` maps the pre-activations *at those features*, recomputed with
   gradients by the encoder, to coefficients ``values [H, B, m]`` (zero where not valid).

The leading ``H`` is the head (stacked dictionaries; 1 for a single SAE). The dense, plain twins of all
three activations are in :mod:`writelens.sae.naive`; ``tests/sae`` checks the two agree, gradients included.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn


class Selection(NamedTuple):
    """Candidate features per state. ``indices [H, B, m]`` (long), ``valid [H, B, m]`` (bool)."""

    indices: Int[Tensor, "H B m"]
    valid: Bool[Tensor, "H B m"]


def _pad_to_rows(mask: Bool[Tensor, "H B F"], scores: Float[Tensor, "H B F"]) -> Selection:
    """Turn a ragged mask of chosen features into a padded per-state selection (one host sync for m)."""
    width = max(int(mask.sum(-1).max().item()) if mask.numel() else 0, 1)
    masked = scores.masked_fill(~mask, float("-inf"))
    _, indices = torch.topk(masked, width, dim=-1)
    return Selection(indices, mask.gather(-1, indices))


class TopK(nn.Module):
    """Per state, keep the k largest pre-activations, then ReLU them (so L0 <= k), as the reference code."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def select(self, pre: Float[Tensor, "H B F"]) -> Selection:
        indices = torch.topk(pre, self.k, dim=-1).indices
        return Selection(indices, torch.ones_like(indices, dtype=torch.bool))

    def activate(self, pre_selected: Float[Tensor, "H B m"], selection: Selection) -> Float[Tensor, "H B m"]:
        return torch.relu(pre_selected) * selection.valid

    def sparsity_penalty(self, pre_selected: Tensor, selection: Selection) -> Tensor | None:
        return None

    def update_statistics(self, values: Tensor, selection: Selection, sync: bool) -> None:
        return None


class BatchTopK(nn.Module):
    """Training: ReLU, then keep the k*B largest entries of the whole batch (per head), so busy states get
    more features and quiet ones fewer, k on average.

    Inference threshold (eval mode): each training step records the smallest kept value of the batch, the
    (k*B)-th largest ReLU pre-activation; ``threshold`` is a bias-corrected exponential moving average of
    it (decay ``batchtopk_threshold_decay``). In eval mode a feature fires when its pre-activation exceeds
    that threshold, so a single state is encoded with the statistics of training batches and L0 is about
    k on training-like data (the reference code had no threshold, so its inference was per-sample TopK).
    Before any training step the threshold is undefined and eval mode falls back to per-sample TopK.

    The number of features kept per state varies, so selection pads to the widest state of the batch: one
    host sync per call (TopK needs none). Under DDP the k*B budget is taken over each rank's share of the
    batch; the threshold statistics are averaged over ranks.
    """

    def __init__(self, k: int, head_shape: tuple[int, ...], decay: float) -> None:
        super().__init__()
        self.k = k
        self.decay = decay
        self.register_buffer("threshold_ema", torch.zeros(head_shape))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    @property
    def threshold(self) -> Float[Tensor, " H"]:
        """The inference threshold per head (bias-corrected EMA)."""
        correction = 1.0 - self.decay ** self.threshold_updates.to(self.threshold_ema.dtype)
        return self.threshold_ema.reshape(-1) / correction.clamp_min(1e-12)

    def select(self, pre: Float[Tensor, "H B F"]) -> Selection:
        n_heads, batch, n_features = pre.shape
        if self.training:
            relu = torch.relu(pre)
            flat_indices = torch.topk(relu.reshape(n_heads, -1), min(self.k * batch, batch * n_features)).indices
            mask = torch.zeros(n_heads, batch * n_features, dtype=torch.bool, device=pre.device)
            mask.scatter_(1, flat_indices, True)
            return _pad_to_rows(mask.view_as(pre) & (pre > 0), pre)
        if int(self.threshold_updates.item()) == 0:
            indices = torch.topk(pre, self.k, dim=-1).indices
            return Selection(indices, pre.gather(-1, indices) > 0)
        return _pad_to_rows(pre > self.threshold.to(pre.dtype)[:, None, None], pre)

    def activate(self, pre_selected: Float[Tensor, "H B m"], selection: Selection) -> Float[Tensor, "H B m"]:
        return torch.relu(pre_selected) * selection.valid

    def sparsity_penalty(self, pre_selected: Tensor, selection: Selection) -> Tensor | None:
        return None

    @torch.no_grad()
    def update_statistics(self, values: Float[Tensor, "H B m"], selection: Selection, sync: bool) -> None:
        """Fold this batch's threshold (smallest kept value per head) into the EMA; all-reduce if ``sync``."""
        kept = values.detach().masked_fill(~selection.valid, float("inf"))
        batch_threshold = kept.reshape(kept.shape[0], -1).min(dim=1).values
        batch_threshold = torch.where(torch.isfinite(batch_threshold), batch_threshold, 0.0)
        batch_threshold = batch_threshold.to(self.threshold_ema.dtype)
        if sync:
            dist.all_reduce(batch_threshold, op=dist.ReduceOp.SUM)
            batch_threshold /= dist.get_world_size()
        self.threshold_ema.view(-1).mul_(self.decay).add_((1.0 - self.decay) * batch_threshold)
        self.threshold_updates.add_(1)


def _rectangle(z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    return ((z - theta).abs() <= 0.5 * bandwidth).to(z.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """``a = z * 1[z > theta]`` with ``theta = exp(log_theta)``; straight-through gradients (Rajamanoharan et
    al. 2024): da/dz = 1[z > theta], da/dtheta = -(theta/h) rect((z - theta)/h), times theta for the log
    parameterisation."""

    @staticmethod
    def forward(ctx, z: Tensor, log_theta: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        theta = log_theta.exp()
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        z, theta = ctx.saved_tensors
        grad_z = grad_output * (z > theta).to(z.dtype)
        grad_theta = -(theta / ctx.bandwidth) * _rectangle(z, theta, ctx.bandwidth) * grad_output
        return grad_z, grad_theta * theta, None


class HeavisideL0Function(torch.autograd.Function):
    """``1[z > theta]`` for the L0 penalty; gradient only to theta: -(1/h) rect((z - theta)/h), times theta."""

    @staticmethod
    def forward(ctx, z: Tensor, log_theta: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        theta = log_theta.exp()
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        z, theta = ctx.saved_tensors
        grad_theta = -(1.0 / ctx.bandwidth) * _rectangle(z, theta, ctx.bandwidth) * grad_output
        return None, grad_theta * theta, None


class JumpReLU(nn.Module):
    """``a_i = z_i 1[z_i > theta_i]`` with a learned per-feature threshold ``theta = exp(log_threshold)``.

    Training selects every feature with ``z >= theta - h/2`` (h = bandwidth): those are the only ones whose
    coefficient or straight-through threshold gradient is nonzero, so the sparse path gives the same
    gradients as the dense one. The L0 penalty (mean over states of the number of active features) is
    returned by :meth:`sparsity_penalty`; its gradient reaches only the thresholds.
    """

    def __init__(self, n_features: int, head_shape: tuple[int, ...], bandwidth: float, init_threshold: float):
        super().__init__()
        self.bandwidth = bandwidth
        start = torch.full((*head_shape, n_features), float(torch.tensor(init_threshold).log()))
        self.log_threshold = nn.Parameter(start)

    def _log_threshold(self, n_heads: int) -> Float[Tensor, "H F"]:
        return self.log_threshold.reshape(n_heads, -1)

    def select(self, pre: Float[Tensor, "H B F"]) -> Selection:
        theta = self._log_threshold(pre.shape[0]).detach().exp().to(pre.dtype)[:, None, :]
        lower = theta - 0.5 * self.bandwidth if self.training else theta
        mask = pre >= lower if self.training else pre > lower
        return _pad_to_rows(mask, pre)

    def _selected_log_threshold(self, selection: Selection) -> Tensor:
        n_heads = selection.indices.shape[0]
        log_theta = self._log_threshold(n_heads)
        flat = selection.indices.reshape(n_heads, -1)
        return log_theta.gather(1, flat).reshape(selection.indices.shape)

    def activate(self, pre_selected: Float[Tensor, "H B m"], selection: Selection) -> Float[Tensor, "H B m"]:
        log_theta = self._selected_log_threshold(selection).to(pre_selected.dtype)
        return JumpReLUFunction.apply(pre_selected, log_theta, self.bandwidth) * selection.valid

    def sparsity_penalty(self, pre_selected: Float[Tensor, "H B m"], selection: Selection) -> Float[Tensor, " H"]:
        """Mean over states of the straight-through L0 count, per head."""
        log_theta = self._selected_log_threshold(selection).to(pre_selected.dtype)
        active = HeavisideL0Function.apply(pre_selected.detach(), log_theta, self.bandwidth) * selection.valid
        return active.sum(-1).mean(-1)

    def update_statistics(self, values: Tensor, selection: Selection, sync: bool) -> None:
        return None


def build_activation(cfg) -> nn.Module:
    """The activation module named by ``cfg.activation`` (``cfg`` an :class:`SAEConfig`)."""
    head_shape = () if cfg.n_heads is None else (cfg.n_heads,)
    if cfg.activation == "topk":
        return TopK(cfg.k)
    if cfg.activation == "batchtopk":
        return BatchTopK(cfg.k, head_shape, cfg.batchtopk_threshold_decay)
    return JumpReLU(cfg.n_features, head_shape, cfg.jumprelu_bandwidth, cfg.jumprelu_init_threshold)
