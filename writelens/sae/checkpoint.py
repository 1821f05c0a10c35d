"""Training checkpoints: SAE + optimizer + trainer state + RNG, as safetensors and JSON (never pickle).

A checkpoint folder ``checkpoints/step_{step:08d}/`` holds:

- ``sae_weights.safetensors`` + ``cfg.json`` (a normal SAE folder, loadable with ``wl.load_sae``);
- ``optimizer.safetensors``: every tensor of the optimizer state, keyed ``{param name}::{field}``;
- ``trainer_state.json``: step, best validation MSE, the train config, the optimizer's param groups (by
  parameter name) and its non-tensor state;
- ``rng.safetensors``: the states of the trainer's generator and of torch's global CPU generator.

The folder is written under a temporary name and renamed into place, then ``checkpoints/latest.json`` is
replaced atomically, so a run killed at any moment resumes from the last complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from writelens.errors import CheckpointError
from writelens.sae.files import (
    WEIGHTS_FILE,
    atomic_save_safetensors,
    atomic_write_bytes,
    load_state_checked,
    read_config,
    read_weights,
    save_sae,
)

LATEST_FILE = "latest.json"


def optimizer_to_tensors(optimizer: torch.optim.Optimizer, module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state into named tensors and a JSON-able remainder."""
    names = {id(p): name for name, p in module.named_parameters()}
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param, state in optimizer.state.items():
        name = names[id(param)]
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{key}"] = value
            else:
                scalars.setdefault(name, {})[key] = value
    groups = []
    for group in optimizer.param_groups:
        entry = {k: v for k, v in group.items() if k != "params"}
        entry["params"] = [names[id(p)] for p in group["params"]]
        groups.append(entry)
    return tensors, {"param_groups": groups, "scalar_state": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, module: nn.Module, tensors: dict[str, torch.Tensor],
                           info: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_tensors` (the optimizer must hold the same named parameters)."""
    params = dict(module.named_parameters())
    order = [names for group in info["param_groups"] for names in group["params"]]
    current = [n for g in optimizer.param_groups for n in _names_of(g["params"], params)]
    if order != current:
        raise CheckpointError("the checkpoint's optimizer holds other parameters than this SAE; it is from another run.")
    index = {name: i for i, name in enumerate(order)}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, field = key.split("::", 1)
        state.setdefault(index[name], {})[field] = value.to(params[name].device)
    for name, values in info["scalar_state"].items():
        state.setdefault(index[name], {}).update(values)
    groups = []
    for group in info["param_groups"]:
        entry = dict(group)
        entry["params"] = [index[n] for n in group["params"]]
        if "betas" in entry:
            entry["betas"] = tuple(entry["betas"])
        groups.append(entry)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _names_of(group_params: list[torch.Tensor], params: dict[str, torch.Tensor]) -> list[str]:
    by_id = {id(p): n for n, p in params.items()}
    return [by_id.get(id(p), "?") for p in group_params]


def save_checkpoint(root: Path, step: int, sae: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], rng: dict[str, torch.Tensor], keep: int = 2) -> Path:
    """Write ``root/step_{step:08d}`` atomically, point ``root/latest.json`` at it, prune old ones."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_sae(sae, tmp)
    tensors, info = optimizer_to_tensors(optimizer, sae)
    atomic_save_safetensors(tensors, tmp / "optimizer.safetensors", {"format": "writelens-optimizer"})
    atomic_save_safetensors(rng, tmp / "rng.safetensors", {"format": "writelens-rng"})
    state = {**trainer_state, "optimizer": info, "step": step}
    atomic_write_bytes(tmp / "trainer_state.json", json.dumps(state, indent=2, default=_json_default).encode())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_bytes(root / LATEST_FILE, json.dumps({"step": step, "folder": final.name}).encode())
    for old in sorted(root.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in trainer_state.json")


def latest_checkpoint(root: Path) -> Path | None:
    """The folder ``root/latest.json`` points at, or None when there is no checkpoint yet."""
    pointer = root / LATEST_FILE
    if not pointer.is_file():
        return None
    try:
        folder = root / json.loads(pointer.read_text())["folder"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{pointer} is corrupt ({exc}); delete it to restart, or point it at a step_* folder.") from exc
    if not folder.is_dir():
        raise CheckpointError(f"{pointer} names {folder.name}, which is missing; delete {pointer} to restart.")
    return folder


def load_checkpoint(folder: Path, sae: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load SAE weights and optimizer state from ``folder``; returns (trainer_state, rng tensors)."""
    cfg = read_config(folder)
    if cfg != sae.cfg:
        raise CheckpointError(
            f"the checkpoint in {folder} is for another SAE config ({cfg}) than this run's ({sae.cfg}); use a "
            "fresh out_dir or pass resume=False."
        )
    load_state_checked(sae, read_weights(folder / WEIGHTS_FILE), str(folder / WEIGHTS_FILE))
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder}/trainer_state.json is missing or corrupt ({exc}).") from exc
    optimizer_from_tensors(optimizer, sae, read_weights(folder / "optimizer.safetensors"), state["optimizer"])
    return state, read_weights(folder / "rng.safetensors")
