"""MatrixSAE: dense linear encoder on vec(S), rank-r decoder atoms (the paper's "rank1"/MatrixSAE).

    a = TopK( enc . vec(S - M) + b_enc ),   enc (F, d_k, d_v)
    S_hat = sum_i a_i sum_r dec_k[i,r] dec_v[i,r]^T + b_dec (+ M)

Reference names: ``encoder.weight (F, d_k*d_v), encoder.bias, V, W, bias`` = ``enc, b_enc, dec_k, dec_v,
b_dec``. The encoder is initialised to the decoder atoms (Gao et al. 2024).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from writelens.sae.base import SAE
from writelens.sae.init import top_singular_factors, unit_matrices, unit_randn
from writelens.sae.sparse import flat_preacts, rank_decode


class DenseEncoderMixin:
    """Shared encoder of FlatSAE and MatrixSAE: ``enc (F, d_k, d_v)``, ``b_enc (F)``.

    The full pre-activations are computed once with gradients and the selected ones gathered from them
    (recomputing selected rows would hold B*m*d_k*d_v numbers); the encoder gradient is one dense matmul."""

    recompute_selected = False

    def _preacts(self, states: Float[Tensor, "H B dk dv"]) -> Float[Tensor, "H B F"]:
        enc = self.heads_first(self.enc)
        n_heads, batch = states.shape[:2]
        return flat_preacts(
            states.reshape(n_heads, batch, -1), enc.reshape(n_heads, enc.shape[1], -1), self.heads_first(self.b_enc)
        )

    def _preacts_at(self, states: Float[Tensor, "H B dk dv"], indices: Int[Tensor, "H B m"]) -> Tensor:
        return self._preacts(states).gather(-1, indices)

    def _encoder_scale(self, head: int, live: Bool[Tensor, " F"]) -> Tensor:
        norms = self.heads_first(self.enc)[head].flatten(1).norm(dim=1)
        return norms[live].mean() if bool(live.any()) else norms.new_tensor(1.0)


class MatrixSAE(DenseEncoderMixin, SAE):
    """Dense encoder on vec(S), rank-r decoder. See module doc."""

    architecture: ClassVar[str] = "matrix"

    def _init_parameters(self, generator: torch.Generator | None) -> None:
        c = self.cfg
        self.dec_k = nn.Parameter(unit_randn((*self.head_shape, c.n_features, c.rank, c.d_k), generator))
        self.dec_v = nn.Parameter(unit_randn((*self.head_shape, c.n_features, c.rank, c.d_v), generator))
        atoms = torch.einsum("...rk,...rv->...kv", self.dec_k, self.dec_v)
        self.enc = nn.Parameter(atoms / atoms.flatten(-2).norm(dim=-1)[..., None, None])

    def _decode(self, values: Float[Tensor, "H B m"], indices: Int[Tensor, "H B m"]) -> Tensor:
        return rank_decode(values, indices, self.heads_first(self.dec_k), self.heads_first(self.dec_v))

    def decoder_factors(self) -> list[tuple[nn.Parameter, int]]:
        return [(self.dec_k, 1), (self.dec_v, 1)]

    def feature_parameters(self) -> list[nn.Parameter]:
        params = [self.enc, self.b_enc, self.dec_k, self.dec_v]
        if self.cfg.activation == "jumprelu":
            params.append(self.activation.log_threshold)
        return params

    def _atom_factors(self, head: int, indices: Int[Tensor, " n"]) -> tuple[Tensor, Tensor]:
        return self.heads_first(self.dec_k)[head, indices], self.heads_first(self.dec_v)[head, indices]

    def _reinit_features(self, head: int, features: Tensor, targets: Float[Tensor, "n dk dv"], scale: Tensor):
        keys, values = top_singular_factors(targets, self.cfg.rank)
        self.heads_first(self.dec_k)[head, features] = keys
        self.heads_first(self.dec_v)[head, features] = values
        self.heads_first(self.enc)[head, features] = unit_matrices(targets) * scale
