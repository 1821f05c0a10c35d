"""Shared tiny fixtures: a random-init Qwen3.5 lens and a random BilinearSAE of its 16 x 16 states."""

from __future__ import annotations

import copy
import functools

import torch
from models import ids, qwen35

import writelens as wl
from writelens.sae import BilinearSAE, FlatSAE


@functools.cache
def lens() -> wl.WriteLens:
    return wl.WriteLens(qwen35())


@functools.cache
def inert_lens() -> wl.WriteLens:
    """Layers [lin, lin, lin, full] with layer 2's MLP and all of layer 3 writing zero into the residual: the only
    path from layer 2's head output to the logits is gated norm → out_proj → final norm → lm_head."""
    model = copy.deepcopy(qwen35())
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight.zero_()
        model.model.layers[3].mlp.down_proj.weight.zero_()
        model.model.layers[3].self_attn.o_proj.weight.zero_()
    return wl.WriteLens(model)


@functools.cache
def sae(n_features: int = 32, k: int = 4) -> BilinearSAE:
    return BilinearSAE(d_k=16, d_v=16, n_features=n_features, k=k, seed=0)


@functools.cache
def flat_sae() -> FlatSAE:
    return FlatSAE(d_k=16, d_v=16, n_features=32, k=4, seed=1)


def passages(n: int = 3, length: int = 24, seed: int = 0) -> torch.Tensor:
    return ids(n, length, seed=seed)
