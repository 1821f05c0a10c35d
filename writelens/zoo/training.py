"""What both zoo trainers share (:mod:`writelens.zoo.train` for the KJV models, :mod:`writelens.zoo.train_mqar` for the
associative-recall organisms): model construction, AdamW groups, the learning-rate schedule, plain saved folders."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .registry import ZooEntry


def lr_at(step: int, steps: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps to ``peak``, then cosine decay to ``min_ratio × peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def build_model(entry: ZooEntry, vocab_size: int, seed: int) -> torch.nn.Module:
    """A freshly initialised model of ``entry`` (the real HF class, float32, with ``entry.init`` applied), seeded."""
    torch.manual_seed(seed)
    model = entry.model_cls()(entry.build_config(vocab_size)).float()
    if entry.init is not None:
        entry.init(model)
    return model


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on parameters with ≥ 2 dims (matrices, conv kernels, embeddings), none on the rest
    (norm weights, biases, ``A_log``, ``dt_bias``, ``D``)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def strip_remote_code(folder: Path) -> None:
    """Keep a non-``transformers`` model's folder plain: ``rwkv7_hf`` registers its classes for the Auto classes'
    *remote code*, so ``save_pretrained`` copies its ``*.py`` files and writes an ``auto_map`` (which makes every
    ``AutoTokenizer``/``AutoConfig`` load ask for ``trust_remote_code``). The zoo loads such a folder with the
    installed package's class instead, so drop both."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for name in {v.split(".")[0] for v in cfg.pop("auto_map", {}).values()}:
        (folder / f"{name}.py").unlink(missing_ok=True)
    for extra in ("cache_rwkv7.py", "ops_rwkv7.py"):  # relative imports copied along with the modeling file
        (folder / extra).unlink(missing_ok=True)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
