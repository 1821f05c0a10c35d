"""Pointing features at data: dead-feature resampling and the data init of atoms (method.md section 2, with
the reference's quirks fixed and a TopK-aware default).

Resampling: for every head, up to ``batch`` dead features (chosen at random, seeded) are pointed at states the SAE
reconstructs worst: states are drawn with probability proportional to their squared error, and

- the decoder atom becomes the top-r SVD of the *target*: with ``target="input"`` (the default) the state itself,
  as the atoms see it (minus the decoder bias and stored mean); with ``target="residual"`` (the reference) its
  residual ``S - S_hat``; unit factors (FlatSAE: the unit-Frobenius matrix);
- the encoder becomes the same direction with unit norm (``encoder_share=None``, the default: its pre-activation
  at a state is then the least-squares coefficient of its atom there, as for a fresh atom) or with
  ``encoder_share`` x the mean encoder norm of the live features (the reference: 0.2); for the bilinear encoder
  the *form* ``enc_k enc_v^T`` gets that norm, split evenly over its two factors;
- the encoder bias (and a JumpReLU log-threshold: to the live mean) is reset, the dead counter zeroed, and
  Adam's moments of those feature rows cleared.

Why the default differs from the reference (0.2 x the live norm, along the residual): under TopK a feature
fires only when its pre-activation is among the k largest. A resampled feature at a fifth of the live norm, or
one pointed at a residual that is nearly orthogonal to the state, never gets there, so it dies again and the
SAE keeps its first coarse atoms (one per value token instead of one per pair on the model organisms;
``examples/planted_pairs_sae.py``, 512 features, k = 1, 800 steps: 91 features for 256 planted pairs at purity
0.41 with the reference recipe, 257 at purity 1.00 with this one and :func:`init_atoms_from_data`). Pointed at the state with a unit
encoder, the new feature's pre-activation there is the whole state's projection, more than any live feature that
fits it badly: it wins that state and its neighbours at once and takes over the cluster the SAE fits worst (the
splitting step of k-means), with coefficients that reconstruct it. (A share of the live norm instead scales its
coefficients by that norm; a Mamba-2 organism run with 1.0 x, which also resampled at its last step, ended at a
final FVE below 0.)

With ``dense_threshold`` set, features active on more than that share of the batch (dense: a constant feature
acting as a second decoder bias, see :mod:`writelens.sae.health`) are resampled the same way, and with
``centre_biases`` the encoder bias of every re-pointed feature is set so that its pre-activation at the batch
mean is 0 (instead of the bias being 0: on uncentred states the form alone is then far from 0 at the mean).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from writelens.errors import SAEConfigError
from writelens.sae.base import SAE
from writelens.sae.health import centre_encoder_biases
from writelens.sae.train_config import RESAMPLE_TARGETS
from writelens.validate import check_choice


@torch.no_grad()
def resample_dead_features(
    sae: SAE, states: Tensor, optimizer: torch.optim.Optimizer | None, generator: torch.Generator, dead_window: int,
    dense_threshold: float | None = None, centre_biases: bool = False, target: str = "input",
    encoder_share: float | None = None,
) -> int:
    """Resample dead (and, with ``dense_threshold``, dense) features of ``sae`` from a batch of ``states`` (its
    public layout ``[B, (H), d_k, d_v]``) along ``target`` ("input" or "residual") with a unit encoder
    (``encoder_share=None``) or ``encoder_share`` x the live mean norm; returns how many."""
    check_choice(target, "resample target", RESAMPLE_TARGETS, SAEConfigError)
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
    targets = residual if target == "residual" else (heads - sae._output_offset()[:, None]).float()
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
        scale = torch.tensor(1.0) if encoder_share is None else encoder_share * sae._encoder_scale(head, live)
        sae._reinit_features(head, chosen, targets[head, rows].to(sae.b_dec.dtype), scale)
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


@torch.no_grad()
def init_atoms_from_data(sae: SAE, fetch, n_rows: int, centre: Float[Tensor, "*H dk dv"], generator: torch.Generator,
                         chunk: int = 1024) -> int:
    """Point the features of a fresh SAE at distinct training states (a seeded draw without replacement): each
    atom becomes the top-r factors of ``S - centre`` and its encoder the same direction with unit norm, so that its
    pre-activation is the atom's least-squares coefficient (Gao et al.'s encoder = decoder init, with data
    directions instead of random ones: the seeding step of k-means). ``fetch(rows)`` returns the states
    ``[n, (H), d_k, d_v]`` of those dataset rows (:meth:`StateDataset.fetch`); every head gets the same rows.
    With fewer rows than features, the rest keep their random init. Returns how many features were pointed, per head."""
    n = min(int(n_rows), sae.cfg.n_features)
    rows = torch.randperm(int(n_rows), generator=generator)[:n]
    features = torch.randperm(sae.cfg.n_features, generator=generator)[:n]
    centre_heads = sae.heads_first(centre.to(sae.b_dec))
    n_heads = centre_heads.shape[0]
    unit = torch.tensor(1.0)
    for start in range(0, n, chunk):
        _, heads = sae._to_heads(fetch(rows[start:start + chunk]).to(sae.b_dec))
        ids = features[start:start + chunk].to(heads.device)
        for h in range(n_heads):
            sae._reinit_features(h, ids, heads[h] - centre_heads[h], unit)
    return n


def _clear_optimizer_rows(sae: SAE, optimizer: torch.optim.Optimizer, head: int, features: Tensor) -> None:
    for param in sae.feature_parameters():
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            buffer = state.get(key)
            if isinstance(buffer, Tensor) and buffer.shape == param.shape:
                sae.heads_first(buffer)[head, features] = 0.0
