"""Datasets of states for SAE training: from a tensor in memory or from extraction shards.

A :class:`StateDataset` is a list of *chunks* (one tensor in memory, or one shard per chunk) and a subset
of their rows. Rows are ``[d_k, d_v]`` states, or ``[H, d_k, d_v]`` for several heads of one layer
(stacked training). What it guarantees:

- **Split by sequence**: :meth:`StateDataset.split` puts every row of a sequence on the same side
  (a seeded hash of the sequence id), so states of one text never leak from train into val.
- **Seeded shuffling across shards**: each epoch's order is a function of (seed, epoch) only: shards are
  shuffled, taken ``shuffle_window`` at a time (None: all at once, a full shuffle), and the rows of
  each window are shuffled together. The order can therefore be recomputed to resume at any step.
- **Bounded memory**: at most ``cache_chunks`` shards are held (set it >= ``shuffle_window``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from torch import Tensor

from writelens.errors import ExtractionError, SAEConfigError
from writelens.sae.files import tensors_sha256
from writelens.sae.finite import check_finite_rows
from writelens.sae.shards import ShardReader


def _splitmix64(values: np.ndarray) -> np.ndarray:
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sequence_fraction(seq_ids: Int[Tensor, " N"], seed: int) -> Float[Tensor, " N"]:
    """A uniform number in [0, 1) per sequence id, fixed by (id, seed): the split key."""
    with np.errstate(over="ignore"):
        mixed = _splitmix64(seq_ids.cpu().numpy().astype(np.int64).view(np.uint64) ^ _splitmix64(np.array([seed]))[0])
    return torch.from_numpy((mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53))


class _MemorySource:
    """One chunk: a tensor already in memory."""

    def __init__(self, states: Tensor) -> None:
        self.states = states

    def chunk_rows(self) -> list[int]:
        return [self.states.shape[0]]

    def load(self, chunk: int) -> Tensor:
        return self.states

    def describe(self, chunk: int) -> str:
        return "the in-memory training states (rows counted from 0)"

    def fingerprint(self) -> str:
        return "memory:" + tensors_sha256({"states": self.states})


class _ShardSource:
    """One chunk per shard index of one layer; several heads are stacked along dim 1."""

    def __init__(self, reader: ShardReader, layer: int, heads: Sequence[int], indices: list[int]) -> None:
        self.reader, self.layer, self.heads, self.indices = reader, layer, list(heads), indices

    def chunk_rows(self) -> list[int]:
        return [self.reader.n_rows(self.layer, self.heads[0], i) for i in self.indices]

    def seq_ids(self, chunk: int) -> Tensor:
        return self.reader.read(self.layer, self.heads[0], self.indices[chunk], ("seq_ids",))["seq_ids"]

    @property
    def provenance(self) -> dict:
        """What the SAE trained on these rows should record (see :mod:`writelens.provenance`)."""
        extra = self.reader.metadata.extra
        out = {"layer": self.layer, "target": self.reader.target, "model": extra.get("model"),
               "model_config_sha256": extra.get("model_config_sha256")}
        out.update({"head": self.heads[0]} if len(self.heads) == 1 else {"heads": list(self.heads)})
        return {k: v for k, v in out.items() if v is not None}

    def fingerprint(self) -> str:
        """The extraction (its metadata) and each shard's recorded SHA256 (header only; size where none)."""
        parts = [json.dumps(self.reader.metadata.to_dict(), sort_keys=True), str(self.layer), str(self.heads)]
        for head in self.heads:
            for index in self.indices:
                path = self.reader.path(self.layer, head, index)
                with safe_open(str(path), framework="pt") as handle:
                    parts.append((handle.metadata() or {}).get("sha256") or f"size:{path.stat().st_size}")
        return "shards:" + hashlib.sha256("|".join(parts).encode()).hexdigest()

    def describe(self, chunk: int) -> str:
        index = self.indices[chunk]
        return (f"shard {index} of L{self.layer} H{','.join(map(str, self.heads))} "
                f"({self.reader.path(self.layer, self.heads[0], index)}; rows counted within the shard)")

    def load(self, chunk: int) -> Tensor:
        index = self.indices[chunk]
        per_head, reference = [], None
        for head in self.heads:
            shard = self.reader.read(self.layer, head, index)
            if reference is None:
                reference = shard["seq_ids"]
            elif not torch.equal(reference, shard["seq_ids"]):
                raise ExtractionError(
                    f"shard {index} of L{self.layer} H{head} holds other rows than H{self.heads[0]}; the heads "
                    "were not extracted together. Re-extract them in one wl.extract call."
                )
            if self.reader.target == "writes":
                write = shard["beta"][:, None, None] * shard["key"][:, :, None] * shard["value"][:, None, :]
                per_head.append(write.float())
            else:
                per_head.append(shard["states"].float())
        return per_head[0] if len(self.heads) == 1 else torch.stack(per_head, dim=1)


class StateDataset:
    """Rows of states ``[d_k, d_v]`` (or ``[H, d_k, d_v]`` when ``n_heads`` is set). See module doc."""

    def __init__(self, source, chunk_rows: list[int], seq_ids: Tensor, rows: Tensor | None = None,
                 n_heads: int | None = None, cache_chunks: int = 8, shuffle_window: int | None = None) -> None:
        self._source = source
        self._chunk_rows = chunk_rows
        self._chunk_start = torch.tensor([0, *np.cumsum(chunk_rows).tolist()], dtype=torch.long)
        self.seq_ids = seq_ids  # for every row of every chunk
        self.rows = torch.arange(int(self._chunk_start[-1])) if rows is None else rows
        self.n_heads = n_heads
        self.cache_chunks = max(1, cache_chunks)
        self.shuffle_window = shuffle_window
        self._cache: OrderedDict[int, Tensor] = OrderedDict()

    # ---- construction --------------------------------------------------------------------------------------

    @classmethod
    def from_tensor(cls, states: Float[Tensor, "N *H dk dv"], seq_ids: Int[Tensor, " N"] | None = None) -> StateDataset:
        """An in-memory dataset: ``states [N, d_k, d_v]`` or ``[N, H, d_k, d_v]`` (stacked heads).

        ``seq_ids`` (default: every row its own sequence) groups rows for the train/val split."""
        if not isinstance(states, Tensor):
            raise SAEConfigError(f"states must be a tensor [N, d_k, d_v] or [N, H, d_k, d_v], got {type(states).__name__}.")
        if states.dim() not in (3, 4):
            raise SAEConfigError(f"states must be [N, d_k, d_v] or [N, H, d_k, d_v], got {tuple(states.shape)}.")
        if states.shape[0] == 0:
            raise SAEConfigError("states holds no rows (N = 0); pass at least one state to train on.")
        if not states.is_floating_point():
            raise SAEConfigError(f"states have dtype {states.dtype}; pass float states (e.g. states.float()).")
        seq_ids = torch.arange(states.shape[0]) if seq_ids is None else seq_ids.long().reshape(-1)
        if seq_ids.shape[0] != states.shape[0]:
            raise SAEConfigError(f"{seq_ids.shape[0]} seq_ids for {states.shape[0]} states.")
        return cls(_MemorySource(states), [states.shape[0]], seq_ids, n_heads=states.shape[1] if states.dim() == 4 else None)

    @classmethod
    def from_shards(cls, out_dir: str | os.PathLike, layer: int, heads: int | Sequence[int], *,
                    cache_chunks: int = 8, shuffle_window: int | None = None, require_complete: bool = True) -> StateDataset:
        """States of one site (``heads`` an int) or of several heads of one layer, stacked (a list).

        ``shuffle_window`` shards are shuffled together (None: all, needs them all in ``cache_chunks``)."""
        reader = ShardReader(out_dir)
        head_list = [heads] if isinstance(heads, int) else list(heads)
        for head in head_list:
            reader.metadata.site(layer, head)
            if require_complete and reader.missing_shards(layer, head):
                missing = reader.missing_shards(layer, head)
                raise ExtractionError(
                    f"extraction in {out_dir} is incomplete for L{layer} H{head}: {len(missing)} of "
                    f"{reader.metadata.n_shards} shards missing (first {missing[:5]}). Re-run wl.extract with the "
                    "same arguments to finish it, or pass require_complete=False."
                )
        indices = reader.shard_indices(layer, head_list[0])
        if any(reader.shard_indices(layer, h) != indices for h in head_list[1:]):
            raise ExtractionError(f"heads {head_list} of L{layer} have different shards; finish the extraction first.")
        if not indices:
            raise ExtractionError(f"no shards for L{layer} H{head_list[0]} in {out_dir}; run wl.extract first.")
        source = _ShardSource(reader, layer, head_list, indices)
        seq_ids = torch.cat([source.seq_ids(c) for c in range(len(indices))])
        window = shuffle_window if shuffle_window is not None else (None if len(indices) <= cache_chunks else cache_chunks)
        return cls(source, source.chunk_rows(), seq_ids, n_heads=None if isinstance(heads, int) else len(head_list),
                   cache_chunks=cache_chunks, shuffle_window=window)

    def subset(self, rows: Tensor) -> StateDataset:
        """A dataset over some of this one's rows (global row ids), sharing the source."""
        child = StateDataset(self._source, self._chunk_rows, self.seq_ids, rows, self.n_heads, self.cache_chunks, self.shuffle_window)
        child._cache = self._cache
        return child

    def split(self, val_fraction: float, seed: int) -> tuple[StateDataset, StateDataset]:
        """(train, val), splitting by sequence id with a seeded hash (about ``val_fraction`` of sequences)."""
        if not 0.0 <= val_fraction < 1.0:
            raise SAEConfigError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        is_val = sequence_fraction(self.seq_ids[self.rows], seed) < val_fraction
        return self.subset(self.rows[~is_val]), self.subset(self.rows[is_val])

    # ---- shape and access ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.rows.numel())

    @property
    def state_shape(self) -> tuple[int, ...]:
        return tuple(self._load_chunk(0).shape[1:])

    @property
    def provenance(self) -> dict:
        """Layer, head(s), target and model of shard-backed data (empty for in-memory states)."""
        return dict(getattr(self._source, "provenance", {}))

    def fingerprint(self) -> str:
        """SHA256 of what this dataset serves: its source (the states, or the extraction and its shards' hashes),
        its rows and their sequence ids. Training records it and refuses to resume on another."""
        digest = hashlib.sha256(self._source.fingerprint().encode())
        digest.update(tensors_sha256({"rows": self.rows, "seq_ids": self.seq_ids}).encode())
        return digest.hexdigest()

    def _load_chunk(self, chunk: int) -> Tensor:
        if chunk in self._cache:
            self._cache.move_to_end(chunk)
            return self._cache[chunk]
        tensor = self._source.load(chunk)
        check_finite_rows(tensor, self._source.describe(chunk), "re-extract that shard (delete it and re-run "
                          "wl.extract with the same arguments) or drop those rows")
        self._cache[chunk] = tensor
        while len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return tensor

    def fetch(self, rows: Int[Tensor, " n"]) -> Float[Tensor, "n *H dk dv"]:
        """The states of global rows ``rows``, in that order."""
        chunk_of = torch.searchsorted(self._chunk_start, rows, right=True) - 1
        if len(self._chunk_rows) == 1:
            return self._load_chunk(0)[rows]
        out = None
        for chunk in torch.unique(chunk_of).tolist():
            where = (chunk_of == chunk).nonzero().squeeze(1)
            states = self._load_chunk(chunk)[rows[where] - self._chunk_start[chunk]]
            if out is None:
                out = states.new_empty(rows.shape[0], *states.shape[1:])
            out[where] = states
        return out

    # ---- ordering ------------------------------------------------------------------------------------------

    def epoch_order(self, epoch: int, seed: int) -> Int[Tensor, " N"]:
        """This dataset's rows in the shuffled order of ``epoch`` (a function of seed and epoch only)."""
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
        n_chunks = len(self._chunk_rows)
        window = n_chunks if self.shuffle_window is None else max(1, self.shuffle_window)
        chunk_of = torch.searchsorted(self._chunk_start, self.rows, right=True) - 1
        chunk_order = torch.randperm(n_chunks, generator=generator)
        pieces = []
        for start in range(0, n_chunks, window):
            in_window = torch.isin(chunk_of, chunk_order[start : start + window])
            window_rows = self.rows[in_window]
            pieces.append(window_rows[torch.randperm(window_rows.numel(), generator=generator)])
        return torch.cat(pieces) if pieces else self.rows[:0]

    def batches_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Tensor:
        """The training batch of global ``step`` (epochs wrap); this rank's ``batch_size / world_size`` rows."""
        per_epoch = self.batches_per_epoch(batch_size)
        if per_epoch == 0:
            raise SAEConfigError(f"batch_size {batch_size} exceeds the {len(self)} training rows; lower it.")
        epoch, index = divmod(step, per_epoch)
        if getattr(self, "_order_epoch", None) != (epoch, seed):
            self._order, self._order_epoch = self.epoch_order(epoch, seed), (epoch, seed)
        rows = self._order[index * batch_size : (index + 1) * batch_size]
        share = batch_size // world_size
        return self.fetch(rows[rank * share : (rank + 1) * share])

    def iter_batches(self, batch_size: int) -> Iterator[Tensor]:
        """All rows in storage order (for evaluation), ``batch_size`` at a time (last batch may be short)."""
        order = torch.sort(self.rows).values
        for start in range(0, len(order), batch_size):
            yield self.fetch(order[start : start + batch_size])

    def mean(self, batch_size: int = 4096) -> Float[Tensor, "*H dk dv"]:
        """Mean state over this dataset (float64 accumulation), for ``center=True`` SAEs."""
        total, count = None, 0
        for batch in self.iter_batches(batch_size):
            part = batch.double().sum(0)
            total = part if total is None else total + part
            count += batch.shape[0]
        if total is None:
            raise SAEConfigError("cannot take the mean of an empty dataset.")
        return (total / count).float()
