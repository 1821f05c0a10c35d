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


class PlantedPairs(NamedTuple):
    """Writes of planted (key, value) pairs: ``states [N, d, d]``, which pair each holds (``key_ids``,
    ``value_ids`` ``[N]``), and the pair atoms ``atoms [n_keys, n_values, d, d]`` (unit rank-1 matrices)."""

    states: Float[Tensor, "N dk dv"]
    key_ids: Int[Tensor, " N"]
    value_ids: Int[Tensor, " N"]
    atoms: Float[Tensor, "K V dk dv"]

    @property
    def pair_ids(self) -> Int[Tensor, " N"]:
        return self.key_ids * self.atoms.shape[1] + self.value_ids


def planted_pairs(n_states: int, n_keys: int = 16, n_values: int = 16, dim: int = 32, value_share: float = 0.8,
                  key_noise: float = 0.02, seed: int = 0) -> PlantedPairs:
    """The write structure of the recall organisms, planted: the write of pair (K, V) is ``k̂_KV ⊗ v_V`` with
    ``k̂_KV = norm(a_K + value_share · b_V)`` (the short convolution mixes the value token into the key) plus
    ``key_noise`` Gaussian noise in the key. Every pair is one fixed rank-1 matrix, so a dictionary of one atom
    per pair reconstructs the writes almost exactly; one atom per value token explains only part of each (the
    keys of one value share ``b_V``), which is the local optimum a TopK trainer can settle in."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n_keys, dim, generator=g)
    b = torch.randn(n_values, dim, generator=g) * value_share
    v = F.normalize(torch.randn(n_values, dim, generator=g), dim=-1)
    key_ids = torch.randint(n_keys, (n_states,), generator=g)
    value_ids = torch.randint(n_values, (n_states,), generator=g)
    pair_keys = F.normalize(a[:, None, :] + b[None, :, :], dim=-1)  # [K, V, d]
    k = F.normalize(pair_keys[key_ids, value_ids] + key_noise * torch.randn(n_states, dim, generator=g), dim=-1)
    states = k[:, :, None] * v[value_ids][:, None, :]
    atoms = pair_keys[:, :, :, None] * v[None, :, None, :]
    return PlantedPairs(states, key_ids, value_ids, atoms)


class PairFit(NamedTuple):
    """How a k = 1 reading of an SAE fits planted pairs: ``distinct`` top features used, ``purity`` (the share of
    states whose top feature's commonest pair is theirs), ``fve`` of the full reconstruction, and the ``recovery``
    of the pair atoms (:func:`atom_recovery`)."""

    distinct: int
    n_pairs: int
    purity: float
    fve: float
    recovery: Recovery


@torch.no_grad()
def pair_fit(sae: SAE, pairs: PlantedPairs, n: int = 4000, threshold: float = 0.9) -> PairFit:
    """Score ``sae`` on the first ``n`` states of ``pairs`` (see :class:`PairFit`)."""
    states, ids = pairs.states[:n], pairs.pair_ids[:n]
    top = sae.encode_sparse(states).indices[:, 0]
    recon = sae(states).recon
    purity = sum(int(torch.bincount(ids[top == f]).max()) for f in top.unique()) / len(states)
    fve = 1 - float(((recon - states) ** 2).sum() / ((states - states.mean(0)) ** 2).sum())
    recovery = atom_recovery(sae, pairs.atoms.flatten(0, 1), threshold)
    return PairFit(int(top.unique().numel()), int(ids.unique().numel()), purity, fve, recovery)
