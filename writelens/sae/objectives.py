"""The read-aligned reconstruction objective: weigh a state's reconstruction error by what the reads see.

A state ``S`` (d_k × d_v) is only ever seen through reads ``o = scale · Sᵀ q``. The error ``E = Ŝ − S`` of a
reconstruction therefore matters through ``Eᵀ q`` for the queries q that read it. Averaged over the head's query
distribution,

    E_q ‖Eᵀ q‖² = tr(Eᵀ Σ_q E),     Σ_q = E[q qᵀ]   (d_k × d_k, the query second moment),

so the read-aligned loss is a Mahalanobis-type Frobenius norm. :class:`ReadMetric` holds ``M = d_k Σ_q / tr Σ_q``
(trace d_k: isotropic queries give ``M = I`` and the plain MSE), and with weight ``w`` the training loss of a
state is

    ((1 − w) ‖E‖²_F + w tr(Eᵀ M E)) / (d_k d_v)  =  tr(Eᵀ G E) / (d_k d_v),     G = (1 − w) I + w M.

``w = 0`` is the plain MSE; ``w = 1`` weighs only what the reads see (directions no query reaches are free).
This is the first-order form: it uses the read at the token the state is read first (the state after token t is
read by q_t, then by later queries through the transitions); the transitions' own anisotropy (GDN's erase along
k, RWKV-7's rank-1 term) is not included. The SAE code knows nothing of models: the queries come from
:func:`writelens.extraction.query_metric` or any other source.

Shapes carry the SAE's head dim H first (1 for a single SAE), like :mod:`writelens.sae.sparse`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from writelens.errors import CheckpointError, SAEConfigError, SAEInputError

READ_METRIC_FILE = "read_metric.safetensors"


@dataclass
class ReadMetric:
    """The query second moment of each head, normalised to trace d_k.

    Attributes:
        moment: ``[H, d_k, d_k]`` symmetric PSD, trace d_k per head (H = 1 for a single-site SAE).
        n_queries: how many queries it was estimated from (per head).
        source: free-form provenance (model, layer, heads, passages), saved with it.
    """

    moment: Float[Tensor, "H dk dk"]
    n_queries: int
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = self.moment
        if m.dim() == 2:
            self.moment = m = m.unsqueeze(0)
        if m.dim() != 3 or m.shape[-1] != m.shape[-2]:
            raise SAEInputError(f"a read metric is [H, d_k, d_k] (or [d_k, d_k]); got shape {tuple(m.shape)}.")
        if not bool(torch.isfinite(m).all()):
            raise SAEInputError("the read metric has NaN or inf entries; recompute it from finite queries.")

    @classmethod
    def from_queries(cls, queries: Float[Tensor, "H N dk"] | Float[Tensor, "N dk"],
                     source: dict[str, Any] | None = None) -> ReadMetric:
        """``M = d_k · Σ / tr Σ`` with ``Σ = mean_n q_n q_nᵀ`` per head (computed in float64)."""
        q = queries.unsqueeze(0) if queries.dim() == 2 else queries
        if q.dim() != 3 or q.shape[1] == 0:
            raise SAEInputError(f"queries are [H, N, d_k] (or [N, d_k]) with N >= 1; got shape {tuple(queries.shape)}.")
        if not bool(torch.isfinite(q).all()):
            raise SAEInputError("the queries contain NaN or inf; the read metric needs finite queries.")
        q = q.double()
        moment = torch.einsum("hni,hnj->hij", q, q) / q.shape[1]
        return cls.from_moment(moment, q.shape[1], source)

    @classmethod
    def from_moment(cls, moment: Float[Tensor, "H dk dk"], n_queries: int,
                    source: dict[str, Any] | None = None) -> ReadMetric:
        """Normalise an (unnormalised) second moment ``Σ`` to trace d_k per head."""
        m = moment.unsqueeze(0) if moment.dim() == 2 else moment
        m = 0.5 * (m + m.transpose(-1, -2)).double()
        trace = torch.diagonal(m, dim1=-2, dim2=-1).sum(-1)
        if bool((trace <= 0).any()):
            raise SAEInputError("the query second moment has zero trace (all queries zero); a read metric needs "
                                "queries that read something.")
        return cls((m * (m.shape[-1] / trace)[:, None, None]).float(), int(n_queries), dict(source or {}))

    @property
    def n_heads(self) -> int:
        return self.moment.shape[0]

    @property
    def d_k(self) -> int:
        return self.moment.shape[-1]

    def weighting(self, weight: float) -> Float[Tensor, "H dk dk"]:
        """``G = (1 − w) I + w M`` (the matrix of the loss ``tr(Eᵀ G E)``)."""
        if not 0.0 <= weight <= 1.0:
            raise SAEConfigError(f"read_weight must be in [0, 1], got {weight}.")
        eye = torch.eye(self.d_k, dtype=self.moment.dtype, device=self.moment.device)
        return (1.0 - weight) * eye + weight * self.moment

    def fingerprint(self) -> str:
        """SHA256 (first 16 hex digits) of the moment's bytes: a resumed run must use the same metric."""
        return hashlib.sha256(self.moment.detach().cpu().contiguous().float().numpy().tobytes()).hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        save_file({"moment": self.moment.detach().cpu().contiguous()}, str(path),
                  metadata={"n_queries": str(self.n_queries), "source": json.dumps(self.source)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReadMetric:
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            return cls(tensors["moment"], int(meta.get("n_queries", 0)), json.loads(meta.get("source", "{}")))
        except (OSError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable read metric ({exc}); recompute it with "
                                  "writelens.extraction.query_metric.") from exc


def weighted_squared_error(error: Float[Tensor, "H B dk dv"], weighting: Float[Tensor, "H dk dk"]) -> Float[Tensor, " H"]:
    """``mean_b tr(E_bᵀ G E_b) / (d_k d_v)`` per head: with ``G = I`` exactly ``error.pow(2).mean((1, 2, 3))``."""
    _, batch, d_k, d_v = error.shape
    g = weighting.to(error.dtype)
    return torch.einsum("hij,hbjv,hbiv->h", g, error, error) / (batch * d_k * d_v)


def read_fve(states: Float[Tensor, "N dk dv"], recon: Float[Tensor, "N dk dv"], metric: ReadMetric,
             head: int = 0) -> float:
    """Fraction of the *read* variance explained: ``1 − Σ tr(Eᵀ M E) / Σ tr((S − S̄)ᵀ M (S − S̄))`` (float64)."""
    m = metric.moment[head].double()
    s, r = states.double(), recon.double()
    err = r - s
    centred = s - s.mean(0)
    num = torch.einsum("ij,njv,niv->", m, err, err)
    den = torch.einsum("ij,njv,niv->", m, centred, centred).clamp_min(1e-300)
    return float(1 - num / den)


def training_weighting(metric: ReadMetric | None, weight: float, head_shape: tuple[int, ...], d_k: int,
                       out_dir: Path | None, resumed: bool) -> Tensor | None:
    """The ``G`` a trainer passes to the SAE (None when ``weight`` is 0), checked against the SAE's heads and
    ``d_k``; saved in ``out_dir`` so that a resumed run finds it, and (``resumed``) refused when it differs from
    the saved one."""
    saved = out_dir / READ_METRIC_FILE if out_dir is not None else None
    if weight == 0:
        if metric is not None:
            raise SAEConfigError("a read_metric was passed but TrainConfig.read_weight is 0; set read_weight (e.g. 1.0) "
                                 "to use it, or drop the metric.")
        return None
    if metric is None and resumed and saved is not None and saved.is_file():
        metric = ReadMetric.load(saved)
    if metric is None:
        raise SAEConfigError(f"TrainConfig.read_weight={weight} needs read_metric= (the heads' query second moment: "
                             "writelens.extraction.query_metric(lens, ids, site)).")
    n_heads = head_shape[0] if head_shape else 1
    if metric.moment.shape != (n_heads, d_k, d_k):
        raise SAEConfigError(f"the read metric is {tuple(metric.moment.shape)} but the SAE needs [{n_heads}, {d_k}, "
                             f"{d_k}]; compute it for the SAE's site(s).")
    if saved is not None:
        if resumed and saved.is_file():
            if ReadMetric.load(saved).fingerprint() != metric.fingerprint():
                raise CheckpointError(f"{saved} holds another read metric than the one passed; resume with the same "
                                      "metric, or use a fresh out_dir.")
        else:
            saved.parent.mkdir(parents=True, exist_ok=True)
            metric.save(saved)
    return metric.weighting(weight)
