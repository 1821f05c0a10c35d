"""FlatSAE: the vector SAE on vec(S), kept as the baseline.

    a = TopK( enc . vec(S - M) + b_enc ),   enc (F, d_k, d_v)
    S_hat = sum_i a_i dec[i] + b_dec (+ M),  dec (F, d_k, d_v), each atom of unit Frobenius norm

Atoms are stored as (d_k, d_v) matrices (the reference's ``decoder.weight`` is their transposed flattening,
``(d_k*d_v, F)``). Decoding gathers only the active atoms (``embedding_bag``). The decoder bias starts at 0
(the reference's ``nn.Linear`` default did not) and the encoder starts as a copy of the decoder.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from writelens.sae.base import SAE
from writelens.sae.init import unit_matrices, unit_randn
from writelens.sae.matrix import DenseEncoderMixin
from writelens.sae.sparse import flat_decode


class FlatSAE(DenseEncoderMixin, SAE):
    """Dense encoder and dense (unstructured) atoms on vec(S). See module doc."""

    architecture: ClassVar[str] = "flat"

    def _init_parameters(self, generator: torch.Generator | None) -> None:
        c = self.cfg
        self.dec = nn.Parameter(unit_randn((*self.head_shape, c.n_features, c.d_k, c.d_v), generator, n_dims=2))
        self.enc = nn.Parameter(self.dec.detach().clone())

    def _decode(self, values: Float[Tensor, "H B m"], indices: Int[Tensor, "H B m"]) -> Tensor:
        dec = self.heads_first(self.dec)
        n_heads, n_features = dec.shape[:2]
        flat = flat_decode(values, indices, dec.reshape(n_heads, n_features, -1))
        return flat.reshape(n_heads, values.shape[1], self.cfg.d_k, self.cfg.d_v)

    def decoder_factors(self) -> list[tuple[nn.Parameter, int]]:
        return [(self.dec, 2)]

    def feature_parameters(self) -> list[nn.Parameter]:
        params = [self.enc, self.b_enc, self.dec]
        if self.cfg.activation == "jumprelu":
            params.append(self.activation.log_threshold)
        return params

    def _atom_factors(self, head: int, indices: Int[Tensor, " n"]) -> tuple[Tensor, Tensor]:
        """FlatSAE atoms as their SVD: key = left singular vectors * singular values, value = right ones."""
        atoms = self.heads_first(self.dec)[head, indices]
        left, singular, right_t = torch.linalg.svd(atoms, full_matrices=False)
        return (left * singular[:, None, :]).transpose(1, 2), right_t

    def _reinit_features(self, head: int, features: Tensor, targets: Float[Tensor, "n dk dv"], scale: Tensor):
        directions = unit_matrices(targets)
        self.heads_first(self.dec)[head, features] = directions
        self.heads_first(self.enc)[head, features] = directions * scale
