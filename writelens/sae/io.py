"""Save, load and share SAEs: ``sae_weights.safetensors`` + ``cfg.json`` per folder. Never pickle.

- :func:`save_sae` / ``sae.save(dir)``: write both files (each atomically: temp file + rename).
- :func:`load_sae` / ``wl.load_sae(dir)``: rebuild the class named in ``cfg.json`` and load the weights;
  anything missing, truncated, foreign or mismatched raises :class:`~writelens.errors.CheckpointError`
  saying what was wrong and what to do.
- :func:`from_pretrained`: a local folder, or a Hugging Face Hub repo (``snapshot_download`` of the
  ``subfolder``); a folder in the paper's release layout (``best.pt``) is read by
  :mod:`writelens.sae.reference`.
- :func:`push_to_hub`: ``HfApi.upload_folder`` of a saved folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from writelens.errors import CheckpointError, SAEConfigError
from writelens.sae.base import PERSISTENCE, SAE
from writelens.sae.files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    atomic_save_safetensors,
    atomic_write_bytes,
    load_state_checked,
    read_config,
    read_weights,
    save_sae,
)
from writelens.sae.reference import load_reference_sae
from writelens.sae.registry import build_sae
from writelens.validate import check_device, check_float_dtype

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "from_pretrained",
    "load_sae",
    "load_state_checked",
    "push_to_hub",
    "read_config",
    "read_weights",
    "save_sae",
]


def load_sae(directory: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> SAE:
    """Rebuild the SAE saved in ``directory`` (``cfg.json`` + ``sae_weights.safetensors``), in eval mode."""
    check_device(device if isinstance(device, str) else str(device), "load_sae device")
    dtype = check_float_dtype(dtype, "load_sae dtype", SAEConfigError, allow_none=True)
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a folder. Pass the folder sae.save() wrote.")
    cfg = read_config(directory)
    sae = build_sae(cfg, seed=0)  # (seeded: loading never touches the global RNG)
    state = read_weights(directory / WEIGHTS_FILE)
    load_state_checked(sae, state, str(directory / WEIGHTS_FILE))
    sae = sae.to(device).eval()
    return sae.to(dtype) if dtype is not None else sae


def from_pretrained(
    repo_id_or_path: str | os.PathLike,
    subfolder: str | None = None,
    *,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | None = None,
    token: str | None = None,
    **reference_kwargs: Any,
) -> SAE:
    """Load an SAE from a local folder or from ``subfolder`` of a Hugging Face Hub repo.

    A folder with ``cfg.json`` is a writelens SAE; a folder with ``.pt`` files is read as the paper's release
    (:func:`writelens.sae.reference.load_reference_sae`, extra keyword arguments go there)."""
    local = Path(repo_id_or_path)
    if local.exists():
        folder = local / subfolder if subfolder else local
        root = local if subfolder else None  # a cell folder alone: the release manifest is looked for above it
    else:
        from huggingface_hub import snapshot_download

        patterns = [f"{subfolder}/*", "manifest.json"] if subfolder else None
        root = Path(
            snapshot_download(
                str(repo_id_or_path), revision=revision, allow_patterns=patterns, cache_dir=cache_dir, token=token
            )
        )
        folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        raise CheckpointError(f"{folder} does not exist; check the subfolder name (e.g. 'writesae_L9_H4').")
    if (folder / CONFIG_FILE).is_file():
        return load_sae(folder, device=device, dtype=dtype)
    if any(folder.glob("*.pt")):
        sae = load_reference_sae(folder, root=root, **reference_kwargs).to(device).eval()
        return sae.to(dtype) if dtype is not None else sae
    return load_sae(folder, device=device, dtype=dtype)  # raises the explanatory CheckpointError


def push_to_hub(
    sae: SAE,
    repo_id: str,
    *,
    subfolder: str | None = None,
    commit_message: str = "Upload writelens SAE",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
) -> Any:
    """Save ``sae`` to a temp folder and upload it (to ``subfolder`` of) ``repo_id`` with ``HfApi.upload_folder``.

    Creates the repo if needed. Returns the ``CommitInfo`` of the upload."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_sae(sae, tmp)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            path_in_repo=subfolder or "",
            commit_message=commit_message,
            revision=revision,
        )


# SAE.from_pretrained / sae.push_to_hub call these; base sits below io, so io hands them down (imports run one way)
PERSISTENCE.update(from_pretrained=from_pretrained, push_to_hub=push_to_hub)
