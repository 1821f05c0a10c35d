"""The on-disk format of extracted states, in one place (``wl.extract`` writes it, the SAE data reads it).

Layout::

    out_dir/metadata.json                         ShardMetadata (target, sites, dtype, provenance)
    out_dir/L{layer}_H{head}/shard_{i:05d}.safetensors

Shard ``i`` of every site holds the same rows (same ``seq_ids`` / ``positions``, same order). Fields:

- targets ``sampled_positions`` / ``final_state`` / ``all_positions``: ``states [N, d_k, d_v]`` float32,
  ``seq_ids [N]`` int64, ``positions [N]`` int64 (the position whose post-write state this is);
- target ``writes``: ``key [N, d_k]`` (the L2-normalised key), ``value [N, d_v]``, ``beta [N]``, ``g [N]``,
  ``seq_ids``, ``positions`` (the write at that position is ``beta * key value^T``).

Every file is written atomically (temp file + rename), so a killed writer leaves whole shards or none.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from writelens.errors import ExtractionError
from writelens.sae.files import atomic_save_safetensors, atomic_write_bytes, verify_safetensors

SHARD_FORMAT = "writelens-shards"
SHARD_FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
TARGETS = ("sampled_positions", "final_state", "all_positions", "writes")
STATE_FIELDS = ("states", "seq_ids", "positions")
WRITE_FIELDS = ("key", "value", "beta", "g", "seq_ids", "positions")
_SITE_DIR = re.compile(r"^L(\d+)_H(\d+)$")
_SHARD_FILE = re.compile(r"^shard_(\d{5,})\.safetensors$")


def site_dir_name(layer: int, head: int) -> str:
    """``L{layer}_H{head}``."""
    return f"L{layer}_H{head}"


def shard_file_name(index: int) -> str:
    """``shard_{index:05d}.safetensors``."""
    return f"shard_{index:05d}.safetensors"


def fields_for(target: str) -> tuple[str, ...]:
    """The tensor names a shard of this target holds."""
    if target not in TARGETS:
        raise ExtractionError(f"unknown extraction target {target!r}; use one of {TARGETS}.")
    return WRITE_FIELDS if target == "writes" else STATE_FIELDS


@dataclass
class ShardMetadata:
    """Contents of ``metadata.json``.

    Attributes:
        target: one of :data:`TARGETS`.
        sites: one dict per site: ``{"layer", "head", "d_k", "d_v"}``.
        dtype: storage dtype of the float tensors (``"float32"`` by default).
        n_shards: number of shards each site will hold when the extraction is complete (None: unknown).
        extra: provenance written by the extractor (model, tokenizer, positions policy, seed, sequence ids, ...).
    """

    target: str
    sites: list[dict[str, int]]
    dtype: str = "float32"
    n_shards: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": SHARD_FORMAT, "format_version": SHARD_FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> ShardMetadata:
        if not isinstance(data, dict) or data.get("format") != SHARD_FORMAT:
            raise ExtractionError(f"{source} is not writelens extraction metadata (no 'format': '{SHARD_FORMAT}').")
        if data.get("format_version") != SHARD_FORMAT_VERSION:
            raise ExtractionError(
                f"{source} has format_version {data.get('format_version')!r}; this writelens reads "
                f"{SHARD_FORMAT_VERSION}. Re-extract or upgrade writelens."
            )
        try:
            meta = cls(**{k: v for k, v in data.items() if k not in ("format", "format_version")})
        except TypeError as exc:
            raise ExtractionError(f"{source} has unexpected fields ({exc}).") from exc
        fields_for(meta.target)
        return meta

    def site(self, layer: int, head: int) -> dict[str, int]:
        for site in self.sites:
            if site["layer"] == layer and site["head"] == head:
                return site
        raise ExtractionError(
            f"site L{layer} H{head} was not extracted; this extraction has "
            f"{[(s['layer'], s['head']) for s in self.sites]}."
        )


class ShardWriter:
    """Writes ``metadata.json`` and shards into ``out_dir``, each file atomically."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)

    def write_metadata(self, metadata: ShardMetadata) -> Path:
        path = self.out_dir / METADATA_FILE
        atomic_write_bytes(path, json.dumps(metadata.to_dict(), indent=2, sort_keys=True).encode())
        return path

    def shard_path(self, layer: int, head: int, index: int) -> Path:
        return self.out_dir / site_dir_name(layer, head) / shard_file_name(index)

    def has(self, layer: int, head: int, index: int) -> bool:
        return self.shard_path(layer, head, index).is_file()

    def verified(self, layer: int, head: int, index: int) -> bool:
        """True when the shard exists, reads and matches the SHA256 recorded in its header (written with it, so a
        shard and its record cannot disagree after a crash). A bad shard is deleted with a warning, so that
        resuming rewrites it; False when it is missing or was bad."""
        path = self.shard_path(layer, head, index)
        if not path.is_file():
            return False
        problem = verify_safetensors(path)
        if problem is None:
            return True
        warnings.warn(f"extraction resume: {path} is bad and will be rewritten ({problem})", stacklevel=3)
        path.unlink()
        return False

    def write(self, layer: int, head: int, index: int, target: str, tensors: dict[str, torch.Tensor]) -> Path:
        """Write shard ``index`` of site (layer, head); ``tensors`` must hold exactly the target's fields."""
        expected = fields_for(target)
        if sorted(tensors) != sorted(expected):
            raise ExtractionError(f"a {target!r} shard holds {sorted(expected)}, got {sorted(tensors)}.")
        n_rows = {name: int(t.shape[0]) for name, t in tensors.items()}
        if len(set(n_rows.values())) != 1:
            raise ExtractionError(f"shard fields disagree on the number of rows: {n_rows}.")
        path = self.shard_path(layer, head, index)
        meta = {"format": SHARD_FORMAT, "target": target, "rows": str(next(iter(n_rows.values())))}
        atomic_save_safetensors(tensors, path, meta)
        return path


class ShardReader:
    """Reads an extraction folder: metadata, the shards of each site, their row counts and contents."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        path = self.out_dir / METADATA_FILE
        if not path.is_file():
            raise ExtractionError(
                f"no {METADATA_FILE} in {self.out_dir}: not an extraction folder. Create one with wl.extract(...)."
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ExtractionError(f"{path} is not valid JSON ({exc}); re-run wl.extract with the same out_dir.") from exc
        self.metadata = ShardMetadata.from_dict(data, str(path))

    @property
    def target(self) -> str:
        return self.metadata.target

    @property
    def sites(self) -> list[tuple[int, int]]:
        return [(s["layer"], s["head"]) for s in self.metadata.sites]

    def shard_indices(self, layer: int, head: int) -> list[int]:
        """Indices of the shards present for a site, sorted."""
        self.metadata.site(layer, head)
        folder = self.out_dir / site_dir_name(layer, head)
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _SHARD_FILE.match(p.name)))

    def missing_shards(self, layer: int, head: int) -> list[int]:
        """Planned shards not (yet) written for a site (empty when ``n_shards`` is unknown)."""
        if self.metadata.n_shards is None:
            return []
        present = set(self.shard_indices(layer, head))
        return [i for i in range(self.metadata.n_shards) if i not in present]

    def path(self, layer: int, head: int, index: int) -> Path:
        return self.out_dir / site_dir_name(layer, head) / shard_file_name(index)

    def n_rows(self, layer: int, head: int, index: int) -> int:
        """Rows in a shard, read from its header only."""
        path = self.path(layer, head, index)
        try:
            with safe_open(str(path), framework="pt") as handle:
                return int(handle.get_slice("seq_ids").get_shape()[0])
        except (SafetensorError, OSError, ValueError) as exc:
            raise self._unreadable(path, exc) from exc

    def read(self, layer: int, head: int, index: int, fields: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """The tensors of one shard (all fields, or only ``fields``, read without loading the others)."""
        path = self.path(layer, head, index)
        if fields is not None:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    return {name: handle.get_tensor(name) for name in fields}
            except (SafetensorError, OSError, ValueError) as exc:
                raise self._unreadable(path, exc) from exc
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise self._unreadable(path, exc) from exc
        expected = fields_for(self.target)
        if sorted(tensors) != sorted(expected):
            raise ExtractionError(f"{path} holds {sorted(tensors)}, expected {sorted(expected)} for {self.target!r}.")
        return tensors

    @staticmethod
    def _unreadable(path: Path, exc: Exception) -> ExtractionError:
        return ExtractionError(
            f"{path} cannot be read ({exc}): it is missing, truncated or not a shard. Delete it and re-run "
            "wl.extract with the same arguments and out_dir (extraction resumes and rewrites missing shards)."
        )
