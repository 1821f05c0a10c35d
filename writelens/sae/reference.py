"""The paper's published checkpoints (hub repo ``JackYoung27/writesae-ckpts``) as writelens SAEs.

Release layout: one folder per cell (``writesae_L9_H4/``, ``flatsae_L1_H0/``, ...) holding ``best.pt`` (and
``final.pt``): a ``torch.save`` dict ``{model_state_dict, config, epoch, step, val_mse}``; ``manifest.json``
at the repo root maps tags to SHA256. Files are read with ``torch.load(weights_only=True)`` only (no code
runs), and checked against the manifest when one is present (a mismatch raises
:class:`~writelens.errors.ChecksumError`).

Parameter mapping (reference names -> writelens; V is the key side d_k, W the value side d_v, an atom is
``V_i W_i^T``; 2-D legacy factors ``(F, d)`` are read as rank 1):

======================  ==============================================================================
``sae_type``            mapping
======================  ==============================================================================
``bilinear``            ``V_enc, W_enc, b_enc, V_dec, W_dec, bias`` -> BilinearSAE ``enc_k, enc_v, b_enc,
                        dec_k, dec_v, b_dec``
``bilinear_tied``       ``V_dec, W_dec, b_enc, bias`` -> BilinearSAE(tied=True)
``bilinear_jumprelu``   as ``bilinear`` + ``log_threshold`` -> activation ``jumprelu``
``rank1`` (MatrixSAE)   ``encoder.weight (F, d_k*d_v), encoder.bias, V, W, bias`` -> MatrixSAE ``enc, b_enc,
                        dec_k, dec_v, b_dec``
``flat``                ``encoder.weight, encoder.bias, decoder.weight (d_k*d_v, F), decoder.bias`` ->
                        FlatSAE ``enc, b_enc, dec`` (= decoder.weight^T reshaped), ``b_dec``
======================  ==============================================================================

``use_batchtopk`` checkpoints become ``activation="batchtopk"`` with no recorded threshold, so their
inference is per-state TopK: what the reference computes for one state at a time (its batched inference
kept the top k*B entries of the whole batch, so a state's code depended on its batch-mates). ``bilinear_flat`` and ``bilinear_gated`` have no
writelens class and raise :class:`~writelens.errors.CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from writelens.errors import CheckpointError, ChecksumError
from writelens.sae.base import SAE
from writelens.sae.config import SAEConfig
from writelens.sae.files import load_state_checked
from writelens.sae.registry import build_sae

REFERENCE_REPO = "JackYoung27/writesae-ckpts"
SUPPORTED_TYPES = ("bilinear", "bilinear_tied", "bilinear_jumprelu", "rank1", "flat")
MANIFEST_LEVELS = 2  # a cell folder (or its .pt file) finds the release manifest this many folders up


def sha256_of(path: str | os.PathLike, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: str | os.PathLike) -> dict[str, str]:
    """``manifest.json`` as {tag: sha256}. Accepts ``{tag: sha}``, ``{tag: {"sha256": ...}}`` and lists of
    ``{"tag"|"path"|"name": ..., "sha256": ...}``, at top level or under ``files``/``checkpoints``/``entries``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc}); re-download the manifest.") from exc
    for key in ("files", "checkpoints", "entries", "tags"):
        if isinstance(data, dict) and isinstance(data.get(key), (dict, list)):
            data = data[key]
            break
    items = data.items() if isinstance(data, dict) else [(None, entry) for entry in data]
    table: dict[str, str] = {}
    for tag, entry in items:
        if isinstance(entry, str):
            sha = entry
        elif isinstance(entry, dict):
            sha = entry.get("sha256") or entry.get("sha")
            tag = tag if tag is not None else entry.get("tag") or entry.get("path") or entry.get("name")
            for alias in ("path", "file"):
                if isinstance(entry.get(alias), str) and isinstance(sha, str):
                    table[entry[alias].strip("/")] = sha.lower()
        else:
            continue
        if isinstance(tag, str) and isinstance(sha, str):
            table[tag.strip("/")] = sha.lower()
    return table


def _manifest_tags(file: Path, root: Path) -> list[str]:
    try:
        relative = file.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        relative = f"{file.parent.name}/{file.name}"
    folder = file.parent.name
    return [relative, f"{folder}/{file.stem}", f"{folder}:{file.stem}", folder, file.name]


def verify_against_manifest(file: Path, manifest: Path, root: Path) -> str | None:
    """Check ``file``'s SHA256 against ``manifest``; returns the digest (None when the manifest omits it)."""
    table = read_manifest(manifest)
    tag = next((t for t in _manifest_tags(file, root) if t in table), None)
    if tag is None:
        warnings.warn(f"{manifest} has no entry for {file}; its SHA256 was not verified.", stacklevel=3)
        return None
    actual = sha256_of(file)
    if actual != table[tag]:
        raise ChecksumError(
            f"{file} has SHA256 {actual} but {manifest.name} lists {table[tag]} for {tag!r}: the file was altered "
            "or truncated. Delete it and download it again (huggingface_hub: force_download=True)."
        )
    return actual


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, and writelens only loads .pt files "
            f"with torch.load(weights_only=True), which refused it ({str(exc).splitlines()[0]}). Convert it to "
            "safetensors in a trusted environment."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read by torch.load ({exc}); it is truncated or not a checkpoint.") from exc


def _infer_type(config: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    sae_type = config.get("sae_type")
    if isinstance(sae_type, str):
        return sae_type
    if "V_enc" in state and "decoder.weight" in state:
        return "bilinear_flat"
    if "b_gate" in state:
        return "bilinear_gated"
    if "log_threshold" in state and "V_dec" in state:
        return "bilinear_jumprelu"
    if "V_dec" in state:
        return "bilinear" if "V_enc" in state else "bilinear_tied"
    if "V" in state:
        return "rank1"
    if "encoder.weight" in state and "decoder.weight" in state:
        return "flat"
    raise CheckpointError(f"cannot tell the SAE type of a checkpoint with keys {sorted(state)[:12]}; it is not a WriteSAE release file.")


def _rank3(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.unsqueeze(1) if tensor.dim() == 2 else tensor


def _dims(config: dict[str, Any], state: dict[str, torch.Tensor], d_k: int | None, d_v: int | None) -> tuple[int, int]:
    d_k = d_k or config.get("d_k") or next((int(state[k].shape[-1]) for k in ("V_dec", "V", "V_enc") if k in state), None)
    d_v = d_v or config.get("d_v") or next((int(state[k].shape[-1]) for k in ("W_dec", "W", "W_enc") if k in state), None)
    if d_k is None or d_v is None:
        d_in = int(state["encoder.weight"].shape[1])
        side = math.isqrt(d_in)
        if side * side != d_in:
            raise CheckpointError(f"a flat checkpoint with d_in={d_in} and no d_k/d_v in its config: pass d_k= and d_v=.")
        d_k, d_v = d_k or side, d_v or side
    return int(d_k), int(d_v)


def convert_reference_state(payload: Any, *, d_k: int | None = None, d_v: int | None = None,
                            source: str = "checkpoint") -> SAE:
    """Build the writelens SAE equal to a reference payload ``{model_state_dict, config, ...}`` (or a bare state dict)."""
    if isinstance(payload, dict) and "model_state_dict" in payload:
        state, config = payload["model_state_dict"], dict(payload.get("config") or {})
        extras = {k: payload[k] for k in ("epoch", "step", "val_mse") if isinstance(payload.get(k), (int, float))}
    elif isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state, config, extras = payload, {}, {}
    else:
        raise CheckpointError(f"{source} is not a WriteSAE checkpoint (expected a dict with 'model_state_dict').")
    sae_type = _infer_type(config, state)
    if sae_type not in SUPPORTED_TYPES:
        raise CheckpointError(
            f"{source} is a reference {sae_type!r} SAE, which has no writelens class (supported: {SUPPORTED_TYPES})."
        )
    d_k, d_v = _dims(config, state, d_k, d_v)
    first_factor = next((state[k] for k in ("V_dec", "V") if k in state), None)
    rank = int(_rank3(first_factor).shape[1]) if first_factor is not None else 1
    n_features = int(state["b_enc"].shape[0] if "b_enc" in state else state["encoder.weight"].shape[0])
    architecture = {"rank1": "matrix", "flat": "flat"}.get(sae_type, "bilinear")
    activation = "jumprelu" if sae_type == "bilinear_jumprelu" else ("batchtopk" if config.get("use_batchtopk") else "topk")
    metadata = {"source": "writesae-reference", "sae_type": sae_type, **extras,
                **{k: config[k] for k in ("layer", "head", "seed") if k in config}}
    cfg = SAEConfig(
        architecture, d_k, d_v, n_features, rank=rank, activation=activation, k=min(int(config.get("k", 32)), n_features),
        tied=sae_type == "bilinear_tied", metadata=metadata,
        jumprelu_bandwidth=float(config.get("bandwidth", 1e-3)),
        jumprelu_init_threshold=float(config.get("init_threshold", 1e-3)),
    )
    sae = build_sae(cfg, seed=0)
    mapped = _map_parameters(sae_type, state, d_k, d_v)
    mapped.setdefault("steps_since_active", state.get("steps_since_active", torch.zeros(n_features, dtype=torch.long)))
    for name, value in sae.state_dict().items():  # buffers the reference never had (thresholds) keep their init
        mapped.setdefault(name, value)
    load_state_checked(sae, mapped, source)
    return sae.eval()


def _map_parameters(sae_type: str, state: dict[str, torch.Tensor], d_k: int, d_v: int) -> dict[str, torch.Tensor]:
    try:
        if sae_type == "flat":
            n_features = state["encoder.weight"].shape[0]
            return {
                "enc": state["encoder.weight"].reshape(n_features, d_k, d_v),
                "b_enc": state["encoder.bias"],
                "dec": state["decoder.weight"].T.reshape(n_features, d_k, d_v),
                "b_dec": state["decoder.bias"].reshape(d_k, d_v),
            }
        if sae_type == "rank1":
            n_features = state["encoder.weight"].shape[0]
            return {
                "enc": state["encoder.weight"].reshape(n_features, d_k, d_v),
                "b_enc": state["encoder.bias"],
                "dec_k": _rank3(state["V"]),
                "dec_v": _rank3(state["W"]),
                "b_dec": state["bias"],
            }
        mapped = {"dec_k": _rank3(state["V_dec"]), "dec_v": _rank3(state["W_dec"]), "b_enc": state["b_enc"],
                  "b_dec": state["bias"]}
        if sae_type != "bilinear_tied":
            mapped.update(enc_k=_rank3(state["V_enc"]), enc_v=_rank3(state["W_enc"]))
        if sae_type == "bilinear_jumprelu":
            mapped["activation.log_threshold"] = state["log_threshold"]
        return mapped
    except KeyError as exc:
        raise CheckpointError(f"a reference {sae_type!r} checkpoint lacks the parameter {exc}; the file is incomplete.") from exc


def load_reference_sae(path_or_repo: str | os.PathLike = REFERENCE_REPO, *, subfolder: str | None = None,
                       file: str = "best.pt", root: str | os.PathLike | None = None,
                       manifest: str | os.PathLike | None = None, verify: bool = True,
                       d_k: int | None = None, d_v: int | None = None, revision: str | None = None,
                       cache_dir: str | None = None, token: str | None = None) -> SAE:
    """Load one released WriteSAE checkpoint as a writelens SAE (eval mode).

    ``path_or_repo`` is a ``.pt`` file, a cell folder (``.../writesae_L9_H4``; ``file`` picks best/final),
    a local copy of the release (with ``subfolder``), or a hub repo id (default the paper's) with
    ``subfolder``. ``manifest.json`` is looked up in the file's folder and upwards: up to ``root`` when given, else
    up to :data:`MANIFEST_LEVELS` folders above the cell (so a cell folder or a ``.pt`` file inside a release is checked
    against the release's manifest); when found the file's SHA256 must match (``verify=False`` skips the check)."""
    local = Path(path_or_repo)
    if local.exists():
        target = local if local.is_file() else (local / subfolder if subfolder else local) / file
        root_path = Path(root) if root is not None else None
    else:
        if not subfolder:
            raise CheckpointError(f"{path_or_repo} is not a local path; for a hub repo pass subfolder= (e.g. 'writesae_L9_H4').")
        from huggingface_hub import hf_hub_download

        kwargs = dict(revision=revision, cache_dir=cache_dir, token=token)
        target = Path(hf_hub_download(str(path_or_repo), f"{subfolder}/{file}", **kwargs))
        root_path = target.parent.parent
        if manifest is None and verify:
            try:
                manifest = hf_hub_download(str(path_or_repo), "manifest.json", **kwargs)
            except Exception:  # noqa: BLE001  (a repo without a manifest is allowed; nothing to verify)
                manifest = None
    if not target.is_file():
        raise CheckpointError(f"{target} does not exist; a release cell folder holds best.pt / final.pt.")
    sha = None
    if verify:
        manifest_path = Path(manifest) if manifest is not None else _find_manifest(target, root_path)
        if manifest_path is not None:
            sha = verify_against_manifest(target, manifest_path, root_path or manifest_path.parent)
    sae = convert_reference_state(_torch_load(target), d_k=d_k, d_v=d_v, source=str(target))
    sae.cfg.metadata.update({"file": f"{target.parent.name}/{target.name}", **({"sha256": sha} if sha else {})})
    return sae


def _find_manifest(target: Path, root: Path | None) -> Path | None:
    """The nearest ``manifest.json`` from ``target``'s folder upwards: up to ``root`` when given, else the folder and
    :data:`MANIFEST_LEVELS` folders above it (a release's manifest sits beside its cell folders)."""
    folder = target.resolve().parent
    candidates = [folder, *folder.parents]
    if root is None:
        candidates = candidates[: MANIFEST_LEVELS + 1]
    for candidate in candidates:
        if (candidate / "manifest.json").is_file():
            return candidate / "manifest.json"
        if root is not None and candidate == root.resolve():
            break
    return None
