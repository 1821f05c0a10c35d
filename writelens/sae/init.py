"""Shared initialisation and resampling helpers for the SAE architectures."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def unit_randn(shape: tuple[int, ...], generator: torch.Generator | None, n_dims: int = 1) -> Tensor:
    """Gaussian tensor whose trailing ``n_dims`` dims are normalised to unit L2 norm."""
    tensor = torch.randn(shape, generator=generator)
    dims = tuple(range(-n_dims, 0))
    return tensor / tensor.norm(dim=dims, keepdim=True).clamp_min(1e-12)


def top_singular_factors(
    targets: Float[Tensor, "n dk dv"], rank: int
) -> tuple[Float[Tensor, "n r dk"], Float[Tensor, "n r dv"]]:
    """Unit key / value factors of the top ``rank`` singular pairs of each target matrix."""
    left, _, right_t = torch.linalg.svd(targets.double(), full_matrices=False)
    keys = left[:, :, :rank].transpose(1, 2).to(targets.dtype)
    values = right_t[:, :rank, :].to(targets.dtype)
    return keys, values


def unit_matrices(targets: Float[Tensor, "n dk dv"]) -> Float[Tensor, "n dk dv"]:
    """Each target scaled to unit Frobenius norm."""
    return targets / targets.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
