"""Dead-feature resampling, cleanly (method.md section 2, with the reference's quirks fixed).

For every head, up to ``batch`` dead features (chosen at random, seeded) are pointed at residuals the SAE
reconstructs worst: states are drawn with probability proportional to their squared error, and

- the decoder atom becomes the top-r SVD of that state's residual ``S - S_hat`` (unit factors; FlatSAE:
  the unit-Frobenius residual);
- the encoder becomes the same direction with 0.2 x the mean encoder norm of the live features (for the
  bilinear encoder the *form* ``enc_k enc_v^T`` gets that norm, split evenly over its two factors: the
  reference scaled both factors by 0.2, i.e. the form by 0.04);
- the encoder bias (and a JumpReLU log-threshold: to the live mean) is reset, the dead counter zeroed, and
  Adam's moments of those feature rows cleared.

With ``dense_threshold`` set, features active on more than that share of the batch (dense: a constant feature
acting as a second decoder bias, see :mod:`writelens.sae.health`) are resampled the same way, and with
``centre_biases`` the encoder bias of every re-pointed feature is set so that its pre-activation at the batch
mean is 0 (instead of the bias being 0: on uncentred states the form alone is then far from 0 at the mean).
"""

from __future__ import annotations

import torch
from torch import Tensor

from writelens.sae.base import SAE
from writelens.sae.health import centre_encoder_biases


@torch.no_grad()
def resample_dead_features(
    sae: SAE, states: Tensor, optimizer: torch.optim.Optimizer | None, generator: torch.Generator, dead_window: int,
    dense_threshold: float | None = None, centre_biases: bool = False,
) -> int:
    """Resample dead (and, with ``dense_threshold``, dense) features of ``sae`` from a batch of ``states`` (its
    public layout ``[B, (H), d_k, d_v]``); returns how many."""
    dead = sae.heads_first(sae.dead_mask(dead_window))
    if dense_threshold is None and not bool(dead.any()):
        return 0
    was_training = sae.training
    sae.eval()
    out = sae(states)
    sae.train(was_training)
    if dense_threshold is not None:
        n_heads = dead.shape[0]
        codes = out.codes.reshape(-1, n_heads, sae.cfg.n_features)
        dead = dead | ((codes > 0).double().mean(0) > dense_threshold)
        if not bool(dead.any()):
            return 0
    _, heads = sae._to_heads(states)
    _, recon = sae._to_heads(out.recon)
    residual = (heads - recon).float()
    total = 0
    for head in range(dead.shape[0]):
        dead_ids = dead[head].nonzero().squeeze(1).cpu()
        if dead_ids.numel() == 0:
            continue
        n_new = min(dead_ids.numel(), heads.shape[1])
        chosen = dead_ids[torch.randperm(dead_ids.numel(), generator=generator)[:n_new]].to(heads.device)
        errors = residual[head].flatten(1).pow(2).sum(1).double().cpu()
        weights = errors if bool(torch.isfinite(errors).all()) and float(errors.sum()) > 0 else torch.ones_like(errors)
        rows = torch.multinomial(weights, n_new, replacement=True, generator=generator).to(heads.device)
        live = ~dead[head]
        scale = sae._encoder_scale(head, live)
        sae._reinit_features(head, chosen, residual[head, rows].to(sae.b_dec.dtype), scale)
        sae.heads_first(sae.b_enc)[head, chosen] = 0.0
        if sae.cfg.activation == "jumprelu":
            log_threshold = sae.heads_first(sae.activation.log_threshold)[head]
            log_threshold[chosen] = log_threshold[live].mean() if bool(live.any()) else log_threshold.mean()
        sae.heads_first(sae.steps_since_active)[head, chosen] = 0
        if optimizer is not None:
            _clear_optimizer_rows(sae, optimizer, head, chosen)
        total += n_new
        if centre_biases:
            mask = torch.zeros_like(dead)
            mask[head, chosen] = True
            centre_encoder_biases(sae, heads.mean(1), mask)
    return total


def _clear_optimizer_rows(sae: SAE, optimizer: torch.optim.Optimizer, head: int, features: Tensor) -> None:
    for param in sae.feature_parameters():
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            buffer = state.get(key)
            if isinstance(buffer, Tensor) and buffer.shape == param.shape:
                sae.heads_first(buffer)[head, features] = 0.0
