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

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from writelens.errors import CheckpointError
from writelens.sae.base import SAE
from writelens.sae.config import SAEConfig
from writelens.sae.registry import build_sae

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


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` to a temp file, then rename onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_sae(sae: SAE, directory: str | os.PathLike) -> Path:
    """Write ``sae_weights.safetensors`` (parameters and buffers) and ``cfg.json`` into ``directory``."""
    directory = Path(directory)
    atomic_save_safetensors(sae.state_dict(), directory / WEIGHTS_FILE, {"format": "writelens-sae"})
    atomic_write_bytes(directory / CONFIG_FILE, sae.cfg.to_json().encode())
    return directory


def _read_config(directory: Path) -> SAEConfig:
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
    """Load a safetensors file, turning every failure into a :class:`CheckpointError`."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the folder was not fully written. Re-save or re-download it.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} could not be read as safetensors ({exc}); it is truncated or not a weights file. "
            "Re-download or re-save it."
        ) from exc


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
    module.load_state_dict({k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()})


def load_sae(directory: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> SAE:
    """Rebuild the SAE saved in ``directory`` (``cfg.json`` + ``sae_weights.safetensors``), in eval mode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a folder. Pass the folder sae.save() wrote.")
    cfg = _read_config(directory)
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
        root = local
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
        from writelens.sae.reference import load_reference_sae

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
