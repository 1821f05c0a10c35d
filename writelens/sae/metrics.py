"""Validation metrics of an SAE on a :class:`~writelens.sae.data.StateDataset` (float64 accumulation).

- ``mse``: mean squared error per entry of S.
- ``nmse``: ``sum ||S - S_hat||^2 / sum ||S||^2``.
- ``fve`` (fraction of variance explained): ``1 - sum ||S - S_hat||^2 / sum_e sum_n (S_ne - mean_e)^2``
  with a separate mean for every entry e of S (per-element variance; the reference code divided by one
  scalar variance of all entries).
- ``l0``: mean number of nonzero coefficients per state.
- ``dead_fraction``: fraction of features that never fire on the whole set.
- ``n_dense`` / ``n_bias_dominated``: features firing on more than half the states, and features whose activation
  is mostly their encoder bias (see :mod:`writelens.sae.health`; summed over heads). ``health`` holds the
  per-feature :class:`~writelens.sae.health.FeatureHealth`.
For a stacked SAE each is the mean over heads; ``per_head`` holds the per-head values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from writelens.sae.base import SAE
from writelens.sae.data import StateDataset
from writelens.sae.health import DENSE_THRESHOLD, FeatureHealth, HealthAccumulator


@dataclass
class EvalMetrics:
    """Metrics of one evaluation (see module doc). ``per_head`` maps metric name to one value per head."""

    mse: float
    nmse: float
    fve: float
    l0: float
    dead_fraction: float
    n_states: int
    n_dense: int = 0
    n_bias_dominated: int = 0
    per_head: dict[str, list[float]] = field(default_factory=dict)
    health: FeatureHealth | None = field(default=None, repr=False, compare=False)

    def to_dict(self, prefix: str = "") -> dict[str, float]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("per_head", "health")}
        return {f"{prefix}{k}": v for k, v in data.items()}


@torch.no_grad()
def evaluate_sae(sae: SAE, data: StateDataset, batch_size: int = 1024, device: str | torch.device | None = None,
                 dense_threshold: float = DENSE_THRESHOLD) -> EvalMetrics:
    """Evaluate ``sae`` (in eval mode; its training mode is restored) on every state of ``data``."""
    device = device or sae.b_dec.device
    was_training = sae.training
    sae.eval()
    n_heads = sae.cfg.heads
    sum_sq_err = torch.zeros(n_heads, dtype=torch.float64, device=device)
    sum_sq = torch.zeros_like(sum_sq_err)
    sum_l0 = torch.zeros_like(sum_sq_err)
    sum_x = sum_xx = None
    fired = torch.zeros(n_heads, sae.cfg.n_features, dtype=torch.bool, device=device)
    health = HealthAccumulator(sae, dense_threshold)
    count = 0
    try:
        for batch in data.iter_batches(batch_size):
            batch = batch.to(device)
            out = sae(batch)
            x = batch.double().reshape(batch.shape[0], n_heads, -1)
            err = (out.recon.double().reshape_as(x) - x).pow(2).sum((0, 2))
            sum_sq_err += err
            sum_sq += x.pow(2).sum((0, 2))
            sum_x = x.sum(0) if sum_x is None else sum_x + x.sum(0)
            sum_xx = x.pow(2).sum(0) if sum_xx is None else sum_xx + x.pow(2).sum(0)
            codes = out.codes.reshape(batch.shape[0], n_heads, -1)
            sum_l0 += (codes > 0).sum((0, 2)).double()
            fired |= (codes > 0).any(0)
            health.add(out.codes, out.pre_acts)
            count += batch.shape[0]
    finally:
        sae.train(was_training)
    if count == 0:
        nan = float("nan")
        return EvalMetrics(nan, nan, nan, nan, nan, 0)
    d_in = sae.cfg.d_in
    variance = (sum_xx - sum_x.pow(2) / count).sum(1).clamp_min(1e-300)
    per_head = {
        "mse": (sum_sq_err / (count * d_in)).tolist(),
        "nmse": (sum_sq_err / sum_sq.clamp_min(1e-300)).tolist(),
        "fve": (1.0 - sum_sq_err / variance).tolist(),
        "l0": (sum_l0 / count).tolist(),
        "dead_fraction": (1.0 - fired.double().mean(1)).tolist(),
    }
    means = {name: sum(values) / n_heads for name, values in per_head.items()}
    result = health.result()
    per_head["n_dense"] = result.dense.sum(1).tolist()
    per_head["n_bias_dominated"] = result.bias_dominated.sum(1).tolist()
    return EvalMetrics(**means, n_states=count, n_dense=result.n_dense, n_bias_dominated=result.n_bias_dominated, per_head=per_head,
                       health=result)
