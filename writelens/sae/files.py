"""The SAE folder format at the file level: ``sae_weights.safetensors`` + ``cfg.json``, written atomically.

This module sits below every SAE class (it knows modules only as ``nn.Module`` with a ``cfg``), so that
``base``, the architectures, ``checkpoint`` and ``shards`` can write files without importing ``io`` or the
registry; :mod:`writelens.sae.io` (which rebuilds classes by name) re-exports these names.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from writelens.errors import CheckpointError, ChecksumError
from writelens.sae.config import SAEConfig
from writelens.sae.finite import check_finite_tensors

#: safetensors metadata key holding :func:`tensors_sha256` of the file's tensors (written by every writelens save)
SHA256_KEY = "sha256"

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA256 over every tensor's name, dtype, shape and bytes, in name order (independent of the file layout)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` to a temp file, then rename onto ``path``; the metadata gains the tensors'
    SHA256 (``"sha256"``), which :func:`read_weights` and :func:`verify_safetensors` check."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(cpu, tmp, metadata={**metadata, SHA256_KEY: tensors_sha256(cpu)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_sae(sae: torch.nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``sae_weights.safetensors`` (parameters and buffers) and ``cfg.json`` of an SAE into ``directory``."""
    directory = Path(directory)
    atomic_save_safetensors(sae.state_dict(), directory / WEIGHTS_FILE, {"format": "writelens-sae"})
    atomic_write_bytes(directory / CONFIG_FILE, sae.cfg.to_json().encode())
    return directory


def read_config(directory: Path) -> SAEConfig:
    """The :class:`SAEConfig` in ``directory/cfg.json``; a missing or unreadable file raises :class:`CheckpointError`."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        hint = ""
        if any(directory.glob("*.pt")):
            hint = " It holds .pt files: the paper's release layout, read by writelens.sae.reference.load_reference_sae."
        raise CheckpointError(
            f"no {CONFIG_FILE} in {directory}. A writelens SAE folder holds {CONFIG_FILE} + {WEIGHTS_FILE}, "
            f"written by sae.save(dir).{hint}"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); it is truncated or not an SAE config. Re-save it.") from exc
    return SAEConfig.from_dict(data, source=str(path))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning every failure into a :class:`CheckpointError`; a file that records its
    SHA256 (every writelens save does) is checked against it (:class:`ChecksumError` when the bytes changed)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the folder was not fully written. Re-save or re-download it.")
    try:
        with safe_open(str(path), framework="pt") as handle:  # one open: the header's metadata and the tensors
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} could not be read as safetensors ({exc}); it is truncated or not a weights file. "
            "Re-download or re-save it."
        ) from exc
    expected = metadata.get(SHA256_KEY)
    if expected is not None and tensors_sha256(tensors) != expected:
        raise ChecksumError(
            f"{path}: the tensors' SHA256 does not match the one recorded when it was saved ({expected[:16]}…); the "
            "file was corrupted on disk or in transfer. Re-download or re-save it."
        )
    return tensors


def verify_safetensors(path: Path) -> str | None:
    """None when ``path`` reads and matches its recorded SHA256 (files without one only need to read), else the
    reason it is bad."""
    try:
        read_weights(path)
    except CheckpointError as exc:
        return str(exc)
    return None


def load_state_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` after checking names and shapes, with a message listing every mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{name}: file {tuple(state[name].shape)} vs config {tuple(t.shape)}"
        for name, t in expected.items()
        if name in state and tuple(state[name].shape) != tuple(t.shape)
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source} does not match its config: missing {missing}, unexpected {unexpected}, wrong shapes "
            f"{wrong}. The weights and cfg.json come from different SAEs; re-save both together."
        )
    check_finite_tensors(state, source, "the file was saved from a diverged run; load an earlier checkpoint")
    module.load_state_dict({k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()})
