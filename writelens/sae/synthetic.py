"""Synthetic states with known structure, and how well an SAE recovers it (tests, examples, sanity checks).

:func:`planted_states` builds states as sparse nonnegative sums of planted rank-1 atoms ``u_j w_j^T`` plus
Gaussian noise; :func:`atom_recovery` scores a trained SAE by the cosine (Frobenius inner product of unit
matrices) between each planted atom and its closest learned atom.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from writelens.sae.base import SAE


class PlantedStates(NamedTuple):
    """``states [N, d_k, d_v]``; planted atoms ``key [A, d_k]``, ``value [A, d_v]`` (unit); which atoms
    each state holds ``atom_ids [N, s]`` and with which coefficients ``coefficients [N, s]``."""

    states: Float[Tensor, "N dk dv"]
    key: Float[Tensor, "A dk"]
    value: Float[Tensor, "A dv"]
    atom_ids: Int[Tensor, "N s"]
    coefficients: Float[Tensor, "N s"]

    @property
    def atoms(self) -> Float[Tensor, "A dk dv"]:
        return torch.einsum("ak,av->akv", self.key, self.value)


def planted_states(n_states: int, d_k: int, d_v: int, n_atoms: int, active: int = 3, noise: float = 0.01,
                   coefficient_range: tuple[float, float] = (0.5, 1.5), seed: int = 0) -> PlantedStates:
    """``S_n = sum_{j in J_n} c_nj u_j w_j^T + noise * G_n`` with ``|J_n| = active`` atoms drawn uniformly,
    ``c ~ U(coefficient_range)`` and ``G`` standard Gaussian."""
    g = torch.Generator().manual_seed(seed)
    key = F.normalize(torch.randn(n_atoms, d_k, generator=g), dim=-1)
    value = F.normalize(torch.randn(n_atoms, d_v, generator=g), dim=-1)
    atom_ids = torch.rand(n_states, n_atoms, generator=g).argsort(dim=1)[:, :active]
    low, high = coefficient_range
    coefficients = low + (high - low) * torch.rand(n_states, active, generator=g)
    states = torch.einsum("ns,nsk,nsv->nkv", coefficients, key[atom_ids], value[atom_ids])
    states = states + noise * torch.randn(n_states, d_k, d_v, generator=g)
    return PlantedStates(states, key, value, atom_ids, coefficients)


class Recovery(NamedTuple):
    """``fraction`` of planted atoms whose best cosine is >= ``threshold``; ``best_cosine [A]``, ``best_feature [A]``."""

    fraction: float
    threshold: float
    best_cosine: Float[Tensor, " A"]
    best_feature: Int[Tensor, " A"]


@torch.no_grad()
def atom_recovery(sae: SAE, planted_atoms: Float[Tensor, "A dk dv"], threshold: float = 0.9, head: int | None = None) -> Recovery:
    """Cosine between each planted atom and its closest learned atom (signed: coefficients are >= 0)."""
    learned = sae.atoms(torch.arange(sae.cfg.n_features), head=head).matrix().float()
    planted = F.normalize(planted_atoms.flatten(1).float(), dim=1)
    cosine = planted @ F.normalize(learned.flatten(1), dim=1).T
    best, feature = cosine.max(dim=1)
    return Recovery(float((best >= threshold).float().mean()), threshold, best, feature)
