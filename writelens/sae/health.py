"""Feature health: dense features, bias-dominated (constant) features, and the data-driven bias init that keeps
the trainer from growing them.

A TopK SAE trained on states with a large shared mean can grow a *constant feature*: its encoder bias alone puts
it in the top k of almost every state, and its atom then acts as a second decoder bias (on gdn-tiny L4H1 the
main job's old recipe grew one firing on 99.4 % of positions). Measured per feature over a set of states:

- ``fire_rate``: share of states on which the feature is active; **dense** when above ``dense_threshold`` (0.5);
- ``bias_share``: the feature's *effective bias* over its mean pre-activation on the states where it fires. The
  pre-activation is linear in S, ``b_i + f_i(S) = [b_i + f_i(mean)] + f_i(S - mean)``: the effective bias is the
  bracket (the encoder bias plus the form at the mean state, i.e. the mean pre-activation over all states; for a
  ``center=True`` SAE on centred data, the encoder bias itself). A share near 1 means the feature is as active on
  the states where it fires as on an average state: its activation is its bias. **Bias-dominated** when it fires
  and either ``bias_share >= 0.9`` or its pre-activation is nearly constant over all states (``std < 0.1 * mean``
  with a positive mean: the form adds no information).

:func:`init_biases_from_data` is the trainer's default init (``TrainConfig.init_from_data``): the decoder bias
starts at the data mean (a ``center=True`` SAE keeps its stored mean instead) and every encoder bias at the value
that makes the feature's pre-activation at that mean equal ``encoder_bias`` (0), so no feature starts ahead of the
others on every state. Resampling re-centres the biases of the features it re-points the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from writelens.sae.base import SAE

DENSE_THRESHOLD = 0.5
BIAS_SHARE_THRESHOLD = 0.9
CONSTANT_CV_THRESHOLD = 0.1


@dataclass
class FeatureHealth:
    """Per-feature firing statistics over ``n_states`` states; every tensor is ``[H, F]`` (H = 1 unstacked)."""

    fire_rate: Float[Tensor, "H F"]
    bias_share: Float[Tensor, "H F"]
    preact_mean: Float[Tensor, "H F"]
    preact_std: Float[Tensor, "H F"]
    dense: Tensor
    bias_dominated: Tensor
    n_states: int
    dense_threshold: float = DENSE_THRESHOLD

    @property
    def n_dense(self) -> int:
        return int(self.dense.sum())

    @property
    def n_bias_dominated(self) -> int:
        return int(self.bias_dominated.sum())

    @property
    def n_dead(self) -> int:
        return int((self.fire_rate == 0).sum())

    def features(self, mask: Tensor) -> list[tuple[int, int]]:
        """``(head, feature)`` pairs where ``mask [H, F]`` is set."""
        return [tuple(pair) for pair in mask.nonzero().tolist()]

    def warning(self) -> str | None:
        """One line naming the dense and bias-dominated features (None when there are none)."""
        if not self.n_dense and not self.n_bias_dominated:
            return None
        parts = []
        for name, mask in (("dense", self.dense), ("bias-dominated", self.bias_dominated)):
            pairs = self.features(mask)
            if pairs:
                shown = ", ".join(
                    f"{f} (fires {self.fire_rate[h, f]:.1%}, bias share {self.bias_share[h, f]:.2f})"
                    if self.fire_rate.shape[0] == 1 else
                    f"head {h} feature {f} (fires {self.fire_rate[h, f]:.1%}, bias share {self.bias_share[h, f]:.2f})"
                    for h, f in pairs[:5]
                )
                parts.append(f"{len(pairs)} {name} feature(s): {shown}{' ...' if len(pairs) > 5 else ''}")
        return (
            f"SAE feature health over {self.n_states} states: " + "; ".join(parts) + f". Dense: fire rate > "
            f"{self.dense_threshold}; bias-dominated: effective bias (the pre-activation at the mean state) >= "
            f"{BIAS_SHARE_THRESHOLD} of the pre-activation where it fires, or a pre-activation constant to {CONSTANT_CV_THRESHOLD:.0%}. Such a feature acts as a second "
            "decoder bias and takes the firings of per-firing tests; train with TrainConfig(init_from_data=True, "
            "dense_threshold=0.5, resample_every=...) (the defaults) or a center=True SAE."
        )

    def to_dict(self, prefix: str = "") -> dict[str, int]:
        return {f"{prefix}n_dense": self.n_dense, f"{prefix}n_bias_dominated": self.n_bias_dominated}


class HealthAccumulator:
    """Sums, over batches of one SAE's forward outputs, what :class:`FeatureHealth` needs (float64)."""

    def __init__(self, sae: SAE, dense_threshold: float = DENSE_THRESHOLD) -> None:
        self.sae, self.dense_threshold = sae, dense_threshold
        shape = (sae.cfg.heads, sae.cfg.n_features)
        device = sae.b_enc.device
        self.fired = torch.zeros(shape, dtype=torch.float64, device=device)
        self.pre_fired = torch.zeros_like(self.fired)
        self.pre_sum = torch.zeros_like(self.fired)
        self.pre_sq = torch.zeros_like(self.fired)
        self.count = 0

    @torch.no_grad()
    def add(self, codes: Float[Tensor, "B *H F"], pre_acts: Float[Tensor, "B *H F"]) -> None:
        """One batch: dense codes and pre-activations as ``SAE.forward`` returns them (``[B, (H), F]``)."""
        n_heads, n_features = self.fired.shape
        on = (codes.reshape(-1, n_heads, n_features) > 0).double()
        pre = pre_acts.reshape(-1, n_heads, n_features).double()
        self.fired += on.sum(0)
        self.pre_fired += (pre * on).sum(0)
        self.pre_sum += pre.sum(0)
        self.pre_sq += pre.pow(2).sum(0)
        self.count += on.shape[0]

    def result(self) -> FeatureHealth:
        count = max(self.count, 1)
        fire_rate = self.fired / count
        mean_fired = self.pre_fired / self.fired.clamp_min(1)
        mean = self.pre_sum / count  # the effective bias: bias + form at the mean state
        bias_share = torch.where(self.fired > 0, mean / mean_fired.where(mean_fired.abs() > 0, torch.inf), 0.0)
        std = (self.pre_sq / count - mean.pow(2)).clamp_min(0).sqrt()
        fires = self.fired > 0
        constant = (mean > 0) & (std < CONSTANT_CV_THRESHOLD * mean)
        bias_dominated = fires & (((bias_share >= BIAS_SHARE_THRESHOLD) & (mean_fired > 0)) | constant)
        return FeatureHealth(fire_rate.float(), bias_share.float(), mean.float(), std.float(),
                             fire_rate > self.dense_threshold, bias_dominated, self.count, self.dense_threshold)


@torch.no_grad()
def feature_health(sae: SAE, states: Float[Tensor, "N *H dk dv"], batch_size: int = 1024,
                   dense_threshold: float = DENSE_THRESHOLD) -> FeatureHealth:
    """:class:`FeatureHealth` of ``sae`` over ``states`` (evaluated in eval mode; the mode is restored)."""
    was_training = sae.training
    sae.eval()
    acc = HealthAccumulator(sae, dense_threshold)
    try:
        for start in range(0, states.shape[0], batch_size):
            out = sae(states[start : start + batch_size].to(sae.b_enc.device))
            acc.add(out.codes, out.pre_acts)
    finally:
        sae.train(was_training)
    return acc.result()


@torch.no_grad()
def centre_encoder_biases(sae: SAE, centre: Float[Tensor, "H dk dv"], features: Tensor | None = None,
                          value: float = 0.0) -> None:
    """Set the encoder biases of ``features`` (a ``[H, F]`` mask; all when None) so that each one's
    pre-activation at the state ``centre`` (public layout without the batch dim, heads first) equals ``value``."""
    b_enc = sae.heads_first(sae.b_enc)
    offset = sae._input_offset()
    centred = centre - offset if offset is not None else centre
    pre = sae._preacts(centred[:, None].to(b_enc))[:, 0]  # [H, F], bias included
    target = b_enc - pre + value
    b_enc.copy_(target if features is None else torch.where(features, target, b_enc))


@torch.no_grad()
def init_biases_from_data(sae: SAE, mean: Float[Tensor, "*H dk dv"], encoder_bias: float = 0.0) -> None:
    """Decoder bias := ``mean`` (unless the SAE centres with a stored mean: then that mean is set and the decoder
    bias stays 0), and every encoder bias := the value putting its pre-activation at ``mean`` at ``encoder_bias``."""
    mean = mean.to(sae.b_dec)
    if sae.cfg.center:
        sae.set_mean(mean)
    else:
        sae.b_dec.copy_(mean)
    centre = sae.heads_first(mean)
    centre_encoder_biases(sae, centre, value=encoder_bias)
