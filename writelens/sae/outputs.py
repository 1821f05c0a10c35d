"""Typed values returned by SAEs. Shapes use B for the (flattened) batch of states, H for stacked heads
(absent for a single SAE), F for features, m for the selected features per state."""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor


class SparseCodes(NamedTuple):
    """The nonzero coefficients of each state as (value, feature) pairs, padded to a common width m.

    ``values [..., m]`` (zero in padded slots), ``indices [..., m]`` (long feature ids).
    """

    values: Float[Tensor, "... m"]
    indices: Int[Tensor, "... m"]

    def to_dense(self, n_features: int) -> Float[Tensor, "... F"]:
        """Dense codes ``[..., F]`` (differentiable in ``values``)."""
        dense = self.values.new_zeros(*self.values.shape[:-1], n_features)
        return dense.scatter_add(-1, self.indices, self.values)


class SAELosses(NamedTuple):
    """Loss terms of one forward pass. Per-head terms have shape ``[H]`` for a stacked SAE, ``[]`` otherwise.

    Attributes:
        total: the scalar to backpropagate: sum over heads of ``mse + lambda_aux * aux +
            lambda_sparsity * sparsity`` (summing keeps every head's gradient equal to training it alone).
        mse: mean squared reconstruction error over states and the d_k * d_v entries.
        aux: AuxK loss: MSE of the residual rebuilt by the top ``k_aux`` dead features (0 when none is dead
            or in eval mode).
        sparsity: JumpReLU's straight-through L0 penalty (mean active features per state); 0 otherwise.
    """

    total: Float[Tensor, ""]
    mse: Float[Tensor, "*H"]
    aux: Float[Tensor, "*H"]
    sparsity: Float[Tensor, "*H"]


class SAEOutput(NamedTuple):
    """Everything ``SAE.forward`` computes.

    Attributes:
        recon: reconstruction, same shape as the input states ``[..., (H), d_k, d_v]``.
        codes: dense coefficients ``[..., (H), F]`` (differentiable).
        sparse_codes: the same coefficients as :class:`SparseCodes` (``[..., (H), m]``).
        pre_acts: encoder pre-activations ``[..., (H), F]``, detached (gradients flow through ``codes``).
        losses: :class:`SAELosses`.
    """

    recon: Float[Tensor, "... dk dv"]
    codes: Float[Tensor, "... F"]
    sparse_codes: SparseCodes
    pre_acts: Float[Tensor, "... F"]
    losses: SAELosses


class Atoms(NamedTuple):
    """Atoms as unit-norm factors: atom ``n`` is ``sum_r scale[n, r] * key[n, r] value[n, r]^T``.

    ``key [n, r, d_k]`` and ``value [n, r, d_v]`` have unit L2 norm; ``scale [n, r]`` holds the product of
    the raw factor norms (1 after decoder renormalisation). FlatSAE atoms are dense matrices, given here as
    their SVD (r = min(d_k, d_v), scale = singular values of the unit-Frobenius atom).
    """

    key: Float[Tensor, "n r dk"]
    value: Float[Tensor, "n r dv"]
    scale: Float[Tensor, "n r"]

    def matrix(self) -> Float[Tensor, "n dk dv"]:
        """The atoms as dense ``[n, d_k, d_v]`` matrices."""
        return torch.einsum("nr,nrk,nrv->nkv", self.scale, self.key, self.value)
