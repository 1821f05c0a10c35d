"""Sparse autoencoders on matrix-valued recurrent states S (d_k x d_v). Knows nothing of models: it
trains on tensors and on extraction shards.

- Architectures (``cfg.architecture``): :class:`FlatSAE` (``"flat"``), :class:`MatrixSAE` (``"matrix"``),
  :class:`BilinearSAE` (``"bilinear"``, WriteSAE). Activations: TopK, BatchTopK, JumpReLU.
- :func:`load_sae` / ``SAE.from_pretrained`` (imported here, :mod:`writelens.sae.io` hands ``from_pretrained`` and
  ``push_to_hub`` down to the base class, which sits below io and the registry) / ``sae.save`` / ``sae.push_to_hub``.
- Data: :mod:`writelens.sae.shards` (the on-disk format), :mod:`writelens.sae.data` (datasets).
- Training: :mod:`writelens.sae.train` (:class:`TrainConfig`, :func:`train_sae`); its default recipe starts the
  biases from the data mean and resamples dense features, and :mod:`writelens.sae.health` reports dense and
  bias-dominated (constant) features (:func:`feature_health`).
- The paper's released checkpoints: :mod:`writelens.sae.reference`.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {  # every name is imported on first use, so that ``import writelens.sae.config`` needs no torch
    "SAE": ("writelens.sae.base", "SAE"),
    "BilinearSAE": ("writelens.sae.bilinear", "BilinearSAE"),
    "Objective": ("writelens.sae.config", "Objective"),
    "SAEConfig": ("writelens.sae.config", "SAEConfig"),
    "FlatSAE": ("writelens.sae.flat", "FlatSAE"),
    "from_pretrained": ("writelens.sae.io", "from_pretrained"),
    "load_sae": ("writelens.sae.io", "load_sae"),
    "push_to_hub": ("writelens.sae.io", "push_to_hub"),
    "MatrixSAE": ("writelens.sae.matrix", "MatrixSAE"),
    "Atoms": ("writelens.sae.outputs", "Atoms"),
    "SAELosses": ("writelens.sae.outputs", "SAELosses"),
    "SAEOutput": ("writelens.sae.outputs", "SAEOutput"),
    "SparseCodes": ("writelens.sae.outputs", "SparseCodes"),
    "ARCHITECTURES": ("writelens.sae.registry", "ARCHITECTURES"),
    "build_sae": ("writelens.sae.registry", "build_sae"),
    "register_architecture": ("writelens.sae.registry", "register_architecture"),
    "TrainConfig": ("writelens.sae.train_config", "TrainConfig"),
    "Trainer": ("writelens.sae.train", "Trainer"),
    "TrainResult": ("writelens.sae.train", "TrainResult"),
    "train_sae": ("writelens.sae.train", "train_sae"),
    "StateDataset": ("writelens.sae.data", "StateDataset"),
    "ShardWriter": ("writelens.sae.shards", "ShardWriter"),
    "ShardReader": ("writelens.sae.shards", "ShardReader"),
    "load_reference_sae": ("writelens.sae.reference", "load_reference_sae"),
    "evaluate_sae": ("writelens.sae.metrics", "evaluate_sae"),
    "feature_health": ("writelens.sae.health", "feature_health"),
    "FeatureHealth": ("writelens.sae.health", "FeatureHealth"),
    "ReadMetric": ("writelens.sae.objectives", "ReadMetric"),
    "read_fve": ("writelens.sae.objectives", "read_fve"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'writelens.sae' has no attribute {name!r}") from None
    if module_name != "writelens.sae.config":
        importlib.import_module("writelens.sae.io")  # hands from_pretrained / push_to_hub down to SAE
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
