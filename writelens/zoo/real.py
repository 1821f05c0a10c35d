"""Published architectures at their real widths, shipped without weights.

:func:`random_init` builds a seeded random-init model of the real class from a config file in
``writelens/zoo/configs/`` (every value with its source in the file), optionally a slice of its first ``layers``
layers with the same layer-type pattern, so that every API can run at real size offline. :func:`real_configs` lists
them. (``wl.zoo.random_init`` / ``real_configs`` / ``real_config`` are these.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from writelens.errors import InputError, ZooModelNotFoundError
from writelens.zoo.registry import import_attr

__all__ = ["RealConfig", "real_configs", "real_config", "random_init"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class RealConfig:
    """A published model's architecture, shipped without weights (``writelens/zoo/configs/<name>.json``).

    ``config``: the config fields that differ from the config class's defaults; ``sources``: field → where its
    value comes from (``"*"``: every field not listed); ``full_attention_interval``: hybrids put full attention at
    every such layer (layer i is full attention when (i + 1) % interval == 0), None for pure recurrent models.
    """

    name: str
    description: str
    model_class: str
    config_class: str
    config: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    full_attention_interval: int | None = None

    def _resolve(self, path: str) -> Any:
        """The class at ``path`` (``module.Class``); an ``ImportError`` naming the extra when rwkv7-hf is missing."""
        module, _, attr = path.rpartition(".")
        extra = "rwkv" if module.startswith("rwkv7_hf") else None
        return import_attr(module, attr, needed_by=f"real config {self.name!r}", extra=extra)

    def build_config(self, layers: int | None = None, overrides: dict[str, Any] | None = None) -> Any:
        """The config object of the real class: the published values, the first ``layers`` layers (same layer-type
        pattern) when given, then ``overrides`` (e.g. ``{"vocab_size": 1024}`` to test at real widths cheaply)."""
        cls = self._resolve(self.config_class)
        values = dict(self.config)
        total = int(values.get("num_hidden_layers", cls().num_hidden_layers))
        if layers is not None:
            if not isinstance(layers, int) or isinstance(layers, bool) or not 1 <= layers <= total:
                raise InputError(f"layers={layers!r}: {self.name} has {total} layers; pass 1..{total} (or None for "
                                 "the full depth).")
            values["num_hidden_layers"] = layers
        n = int(values.get("num_hidden_layers", total))
        if self.full_attention_interval:
            k = self.full_attention_interval
            values["layer_types"] = ["full_attention" if (i + 1) % k == 0 else "linear_attention" for i in range(n)]
        if overrides is not None and not isinstance(overrides, dict):
            raise InputError(f"overrides must be a dict of config fields, got {type(overrides).__name__}.")
        unknown = sorted(k for k in (overrides or {}) if k not in values and not hasattr(cls(), k))
        if unknown:
            raise InputError(f"overrides {unknown} are not fields of {cls.__name__} (a typo would be ignored by the "
                             "config); pass fields the config has, e.g. {'vocab_size': 1024}.")
        values.update(overrides or {})
        return cls(**values)


def real_configs() -> dict[str, str]:
    """Names of the shipped real-architecture configs → one-line descriptions."""
    return {p.stem: json.loads(p.read_text())["description"] for p in sorted(CONFIG_DIR.glob("*.json"))}


def real_config(name: str) -> RealConfig:
    """The shipped config ``name`` (see :func:`real_configs`); :class:`ZooModelNotFoundError` if unknown."""
    if not isinstance(name, str) or "/" in name or not (CONFIG_DIR / f"{name}.json").is_file():
        raise ZooModelNotFoundError(f"{name!r} is not a shipped real config; valid names: "
                                    f"{', '.join(real_configs())} (writelens.zoo.real_configs()).")
    return RealConfig(**json.loads((CONFIG_DIR / f"{name}.json").read_text()))


def random_init(name: str, layers: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32,
                overrides: dict[str, Any] | None = None) -> nn.Module:
    """A seeded random-init model of the real class of ``name`` (see :func:`real_configs`) at its published widths,
    in eval mode: the full depth, or its first ``layers`` layers with the same layer-type pattern; ``overrides``
    replace config fields (a small ``vocab_size`` keeps a real-width test cheap). The HF initialisation is kept (no
    :func:`spread_gates`). Torch's global generator is left as it was.

    Memory: the parameters alone are ``4 × n_params`` bytes in float32 (``qwen3.5-0.8b`` full depth ≈ 3.0 GB;
    ``mamba2-default`` ≈ 11 GB, so slice it)."""
    from writelens.validate import check_float_dtype

    dtype = check_float_dtype(dtype, "random_init dtype", InputError)
    real = real_config(name)
    config = real.build_config(layers, overrides)
    cls = real._resolve(real.model_class)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = cls(config)
        finally:
            torch.set_default_dtype(previous)
    return model.eval()
