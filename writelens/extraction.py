"""``wl.extract``: states (or writes) of many sites from one forward per batch, into SAE training shards.

    wl.extract(lens, texts, sites=[(9, h) for h in range(16)], target="sampled_positions",
               n_tokens=5_000_000, out_dir="states/L9", positions_per_seq=8, seed=0, batch_size=8)

writes the format of :mod:`writelens.sae.shards` (``metadata.json`` + ``L{layer}_H{head}/shard_{i:05d}``).

- **Targets**: ``sampled_positions`` (``positions_per_seq`` distinct positions per sequence, uniform in
  ``[min_position, len)``, drawn from ``numpy.random.default_rng([seed, seq_id])``: the same rows whatever
  the batching, rank or restart), ``final_state`` (the state after the last token: the reference code's
  target), ``all_positions``, and ``writes`` (``key``, ``value``, ``beta``, ``g`` per position).
- **Resumable**: shard i always holds the same sequences; each file is written atomically; a restarted
  run skips shards present for every site and (re)computes the rest, so a run killed at any point and
  restarted ends with no missing and no duplicated rows. A restart with other arguments is refused.
- **Ranks**: shard i belongs to rank ``i % world_size`` (``rank``/``world_size`` arguments, else
  ``torch.distributed`` when initialised); all ranks share ``out_dir``.
- Sequences of a batch are right-padded: the model is causal, so padding never changes a real position.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from writelens.errors import ExtractionError
from writelens.provenance import config_sha256
from writelens.sae.shards import (
    METADATA_FILE,
    TARGETS,
    ShardMetadata,
    ShardReader,
    ShardWriter,
    site_dir_name,
)
from writelens.validate import as_int, check_int, check_out_dir

ROWS_PER_SHARD = 4096
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ExtractionResult:
    """What :func:`extract` did: ``out_dir``, the ``metadata``, the planned ``n_shards``, the shards this
    call wrote (``written``) and found already complete (``skipped``)."""

    out_dir: Path
    metadata: ShardMetadata
    n_shards: int
    written: list[int]
    skipped: list[int]


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        ids = tokenizer.encode(text)
    return list(getattr(ids, "ids", ids))


def _sequences(lens, tokens_or_texts, seq_len: int | None) -> list[list[int]]:
    data = tokens_or_texts
    if isinstance(data, str):
        data = [data]
    if isinstance(data, torch.Tensor):
        if data.dim() == 1:
            if seq_len is None:
                raise ExtractionError("a 1-D token stream needs seq_len= to be cut into sequences.")
            n = data.numel() // seq_len
            data = data[: n * seq_len].reshape(n, seq_len)
        if data.dim() != 2:
            raise ExtractionError(f"token tensors must be [N, T] or a 1-D stream, got {tuple(data.shape)}.")
        if data.dtype.is_floating_point or data.dtype.is_complex or data.dtype == torch.bool:
            raise ExtractionError(f"token ids must be integers, got dtype {data.dtype}; tokenise the text or pass "
                                  "ids.long() (floats are never truncated to ids).")
        sequences = data.long().tolist()
    else:
        data = list(data)
        if data and isinstance(data[0], str):
            tokenizer = lens.tokenizer
            if tokenizer is None:
                raise ExtractionError("texts need a tokenizer: build the lens with WriteLens(model, tokenizer=tok), or pass token ids.")
            sequences = [_tokenize(tokenizer, text) for text in data]
        else:
            sequences = [[as_int(t, "token id", ExtractionError) for t in seq] for seq in data]
    if seq_len is not None:
        sequences = [seq[:seq_len] for seq in sequences]
    return sequences


def _budget(sequences: list[list[int]], n_tokens: int | None) -> list[list[int]]:
    """Sequences in order until ``n_tokens`` tokens (the last one cut to fit); empty ones dropped."""
    kept, total = [], 0
    for seq in sequences:
        if n_tokens is not None and total >= n_tokens:
            break
        if n_tokens is not None:
            seq = seq[: n_tokens - total]
        kept.append(seq)
        total += len(seq)
    return kept


def _sites(lens, sites) -> list[tuple[int, int, int, int]]:
    if sites is None or (isinstance(sites, str) and sites == "all"):
        chosen = [(s.layer, s.head) for s in lens.sites]
    elif isinstance(sites, (str, bytes)) or not hasattr(sites, "__iter__"):
        raise ExtractionError(f"sites={sites!r} is not a list of sites; pass (layer, head) pairs such as [(9, 4)], "
                              "layer ints (all heads), or None / 'all'.")
    else:
        chosen = []
        for site in sites:
            if hasattr(site, "layer"):
                chosen.append((site.layer, site.head))
            elif isinstance(site, (tuple, list)) and len(site) == 2:
                chosen.append((as_int(site[0], "a site's layer", ExtractionError),
                               as_int(site[1], "a site's head", ExtractionError)))
            elif isinstance(site, (str, bytes, tuple, list)):
                raise ExtractionError(f"sites=[..., {site!r}, ...]: each site is a (layer, head) pair, a Site or a "
                                      "layer int; e.g. sites=[(9, 4), 12].")
            else:
                layer = as_int(site, "a site's layer", ExtractionError)
                lens.site(layer, 0)  # a named error for a layer that is not a recurrent layer
                chosen += [(s.layer, s.head) for s in lens.sites if s.layer == layer]
    if not chosen:
        raise ExtractionError(f"no sites to extract from {sites!r}; pass (layer, head) pairs, layers, or None for all.")
    found = []
    for layer, head in dict.fromkeys(chosen):
        site = lens.site(layer, head)  # raises the lens's own site errors
        found.append((layer, head, site.d_k, site.d_v))
    return found


def positions_for(target: str, seq_id: int, length: int, positions_per_seq: int, seed: int, min_position: int) -> np.ndarray:
    """The positions of one sequence whose state (or write) is extracted, sorted."""
    if target == "final_state":
        return np.array([length - 1])
    if target in ("all_positions", "writes"):
        return np.arange(length)
    low = min(max(min_position, 0), length - 1)
    count = min(positions_per_seq, length - low)
    rng = np.random.default_rng([seed, seq_id])
    return np.sort(low + rng.choice(length - low, size=count, replace=False))


def _fingerprint(sequences: list[list[int]]) -> str:
    digest = hashlib.sha256()
    for seq in sequences:
        digest.update(np.asarray(seq, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None or world_size is not None:
        rank = 0 if rank is None else as_int(rank, "rank", ExtractionError)
        world_size = 1 if world_size is None else as_int(world_size, "world_size", ExtractionError)
    elif dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = 0, 1
    if world_size < 1:
        raise ExtractionError(f"world_size={world_size} must be >= 1.")
    if not 0 <= rank < world_size:
        raise ExtractionError(f"rank {rank} is outside world_size {world_size}.")
    return rank, world_size


def extract(lens, tokens_or_texts, sites=None, target: str = "sampled_positions", *, out_dir: str | os.PathLike,
            n_tokens: int | None = None, positions_per_seq: int = 8, seed: int = 0, batch_size: int = 8,
            seq_len: int | None = None, min_position: int = 0, seqs_per_shard: int | None = None,
            dtype: str = "float32", rank: int | None = None, world_size: int | None = None,
            overwrite: bool = False, progress: bool = True) -> ExtractionResult:
    """Extract ``target`` rows of every site in ``sites`` into ``out_dir`` (see the module doc).

    Args:
        lens: a :class:`writelens.WriteLens`.
        tokens_or_texts: texts (needs ``lens.tokenizer``), token-id lists, a LongTensor [N, T], or a 1-D
            token stream with ``seq_len``. Sequence ids are their indices in this input.
        sites: (layer, head) pairs, ``Site`` objects, layer ints (all heads), or None for every site.
        n_tokens: token budget (sequences in order, the last one cut to fit); None: everything.
        seq_len: truncate (or, for a 1-D stream, cut) sequences to this length (≥ 1).
        positions_per_seq / min_position: ``sampled_positions`` keeps up to ``positions_per_seq`` (≥ 1) positions in
            ``[min_position, len)`` (``min_position`` ≥ 0 and below the longest sequence; a sequence not longer than
            ``min_position`` contributes its last position).
        batch_size: sequences per forward (≥ 1).
        seqs_per_shard: sequences per shard (default: about 4096 rows per shard, a multiple of batch_size).
        dtype: storage dtype of states / factors: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.
        overwrite: delete an existing, different extraction in ``out_dir`` instead of refusing to resume it.
    """
    if target not in TARGETS:
        raise ExtractionError(f"unknown target {target!r}; use one of {TARGETS}.")
    if dtype not in _DTYPES:
        raise ExtractionError(f"dtype {dtype!r} is not supported; use one of {sorted(_DTYPES)}.")
    err = ExtractionError
    positions_per_seq = check_int(positions_per_seq, "positions_per_seq", err, 1)
    batch_size = check_int(batch_size, "batch_size", err, 1)
    min_position = check_int(min_position, "min_position", err, 0)
    seq_len = check_int(seq_len, "seq_len", err, 1, allow_none=True)
    seqs_per_shard = check_int(seqs_per_shard, "seqs_per_shard", err, 1, allow_none=True)
    n_tokens = check_int(n_tokens, "n_tokens", err, 1, allow_none=True)
    seed = check_int(seed, "seed", err, 0)
    rank, world_size = _rank_and_world(rank, world_size)
    site_list = _sites(lens, sites)
    sequences = [s for s in _budget(_sequences(lens, tokens_or_texts, seq_len), n_tokens) if s]
    if not sequences:
        raise ExtractionError("no tokens to extract from (empty input or n_tokens=0).")
    longest = max(map(len, sequences))
    if target == "sampled_positions" and min_position >= longest:
        raise ExtractionError(f"min_position={min_position} leaves nothing to sample: the longest sequence has "
                              f"{longest} tokens (positions 0..{longest - 1}); lower min_position or use longer "
                              "sequences (a shorter sequence contributes its last position).")
    rows_per_seq = {"sampled_positions": positions_per_seq, "final_state": 1}.get(
        target, max(1, sum(map(len, sequences)) // len(sequences)))
    if seqs_per_shard is None:
        seqs_per_shard = batch_size * max(1, math.ceil(ROWS_PER_SHARD / (rows_per_seq * batch_size)))
    n_shards = math.ceil(len(sequences) / seqs_per_shard)
    config = getattr(lens.model, "config", None)
    metadata = ShardMetadata(
        target=target,
        sites=[{"layer": layer, "head": h, "d_k": dk, "d_v": dv} for layer, h, dk, dv in site_list],
        dtype=dtype,
        n_shards=n_shards,
        extra={
            "model": getattr(config, "_name_or_path", "") or type(lens.model).__name__,
            "model_class": type(lens.model).__name__,
            "model_config_sha256": config_sha256(lens.model),
            "tokenizer": getattr(lens.tokenizer, "name_or_path", None) if lens.tokenizer is not None else None,
            "positions": {"target": target, "positions_per_seq": positions_per_seq, "min_position": min_position,
                          "sampling": "numpy.random.default_rng([seed, seq_id]).choice without replacement"},
            "seed": seed, "seq_len": seq_len, "n_tokens": sum(map(len, sequences)), "n_sequences": len(sequences),
            "seqs_per_shard": seqs_per_shard, "text_ids": list(range(len(sequences))),
            "token_sha256": _fingerprint(sequences),
        },
    )
    out = check_out_dir(out_dir, "out_dir")
    _prepare(out, metadata, overwrite)
    writer = ShardWriter(out)
    mine = [i for i in range(n_shards) if i % world_size == rank]
    # every existing shard is verified (read + its recorded SHA256); a bad one is deleted and extracted again
    done = [i for i in mine if all([writer.verified(layer, h, i) for layer, h, _, _ in site_list])]
    todo = [i for i in mine if i not in done]
    bar = tqdm(todo, desc=f"extract {target}", disable=not progress, unit="shard")
    for index in bar:
        seq_ids = range(index * seqs_per_shard, min((index + 1) * seqs_per_shard, len(sequences)))
        rows = _extract_shard(lens, sequences, list(seq_ids), site_list, target, positions_per_seq, seed,
                              min_position, batch_size, _DTYPES[dtype])
        for (layer, head, _, _), tensors in zip(site_list, rows, strict=True):
            if not writer.has(layer, head, index):
                writer.write(layer, head, index, target, tensors)
    return ExtractionResult(out, metadata, n_shards, todo, done)


def _prepare(out: Path, metadata: ShardMetadata, overwrite: bool) -> None:
    if (out / METADATA_FILE).is_file():
        existing = ShardReader(out).metadata
        if existing.to_dict() != metadata.to_dict():
            if not overwrite:
                differ = sorted(k for k in metadata.to_dict() if existing.to_dict().get(k) != metadata.to_dict()[k])
                extra = sorted(k for k in metadata.extra if existing.extra.get(k) != metadata.extra[k])
                raise ExtractionError(
                    f"{out} holds another extraction (differs in {differ} {extra}); resume it with the same "
                    "arguments, choose a new out_dir, or pass overwrite=True to replace it."
                )
            for site in existing.sites:
                shutil.rmtree(out / site_dir_name(site["layer"], site["head"]), ignore_errors=True)
            ShardWriter(out).write_metadata(metadata)
    else:
        ShardWriter(out).write_metadata(metadata)


@torch.no_grad()
def _extract_shard(lens, sequences, seq_ids, site_list, target, positions_per_seq, seed, min_position, batch_size, dtype):
    """Rows of one shard for every site: a list (in site order) of dicts of tensors."""
    per_site: list[dict[str, list[torch.Tensor]]] = [{} for _ in site_list]
    layers_heads = [(layer, head) for layer, head, _, _ in site_list]
    pad = getattr(getattr(lens.model, "config", None), "pad_token_id", None) or 0
    for start in range(0, len(seq_ids), batch_size):
        batch_ids = seq_ids[start : start + batch_size]
        lengths = [len(sequences[i]) for i in batch_ids]
        ids = torch.full((len(batch_ids), max(lengths)), pad, dtype=torch.long)
        for row, i in enumerate(batch_ids):
            ids[row, : lengths[row]] = torch.tensor(sequences[i])
        cache = lens.run(ids, cache=True, sites=layers_heads).cache
        positions = [positions_for(target, i, n, positions_per_seq, seed, min_position) for i, n in zip(batch_ids, lengths, strict=True)]
        row_of = torch.tensor([r for r, p in enumerate(positions) for _ in p], dtype=torch.long)
        pos_of = torch.from_numpy(np.concatenate(positions)).long()
        seq_of = torch.tensor([batch_ids[r] for r in row_of.tolist()], dtype=torch.long)
        for site_rows, (layer, head, _, _) in zip(per_site, site_list, strict=True):
            site_rows.setdefault("seq_ids", []).append(seq_of)
            site_rows.setdefault("positions", []).append(pos_of)
            if target == "writes":
                factors = cache.write(layer, head)
                for name in ("key", "value", "beta", "g"):
                    site_rows.setdefault(name, []).append(getattr(factors, name)[row_of, pos_of].to(dtype))
            else:
                site_rows.setdefault("states", []).append(_states_at(cache, layer, head, row_of, pos_of).to(dtype))
    return [{name: torch.cat(parts) for name, parts in rows.items()} for rows in per_site]


def _states_at(cache, layer: int, head: int, row_of: torch.Tensor, pos_of: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``S[row_of[n], pos_of[n]]`` for every n, sweeping the distinct positions in ascending chunks."""
    unique = torch.unique(pos_of)
    out = None
    for start in range(0, unique.numel(), chunk):
        block = unique[start : start + chunk]
        states = cache.states(layer, head, block.tolist())  # [B, P, d_k, d_v]
        if out is None:
            out = states.new_empty(pos_of.numel(), *states.shape[2:])
        where = torch.isin(pos_of, block).nonzero().squeeze(1)
        column = torch.searchsorted(block, pos_of[where])
        out[where] = states[row_of[where], column]
    return out


@torch.no_grad()
def query_metric(lens, input_ids: torch.Tensor, site: tuple[int, int] | list[tuple[int, int]], *,
                 attention_mask: torch.Tensor | None = None, min_position: int = 0, batch_size: int = 8):
    """The read-aligned objective's metric (:class:`writelens.sae.objectives.ReadMetric`) of one site, or of
    several heads of one layer (stacked, in the order given): the second moment of the read queries
    ``q̂`` [B, T, d_k] over every real position ``>= min_position`` of ``input_ids`` [B, T], normalised to trace d_k.

        metric = query_metric(lens, ids, (4, 1))
        train_sae(sae, data, TrainConfig(read_weight=1.0), read_metric=metric)
    """
    from writelens.errors import InputError
    from writelens.sae.objectives import ReadMetric

    sites = [site] if isinstance(site, tuple) else list(site)
    min_position = check_int(min_position, "min_position", InputError, 0)
    batch_size = check_int(batch_size, "batch_size", InputError, 1)
    if not sites:
        raise InputError("query_metric needs at least one site (layer, head).")
    for layer, head in sites:
        lens.site(layer, head)  # a named error for a bad site
    ids = torch.as_tensor(input_ids)
    if ids.dim() != 2 or ids.numel() == 0:
        raise InputError(f"input_ids must be a non-empty [B, T] tensor of token ids, got shape {tuple(ids.shape)}.")
    mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else torch.as_tensor(attention_mask).bool()
    if mask.shape != ids.shape:
        raise InputError(f"attention_mask {tuple(mask.shape)} must have the shape of input_ids {tuple(ids.shape)}.")
    mask = mask.clone()
    mask[:, :min_position] = False
    if not bool(mask.any()):
        raise InputError(f"no real position >= min_position={min_position} in input_ids; pass longer passages.")
    moment, n = None, 0
    for start in range(0, ids.shape[0], batch_size):
        rows, keep = ids[start : start + batch_size], mask[start : start + batch_size]
        cache = lens.run(rows, cache=True, sites=sites, attention_mask=None if attention_mask is None else
                         attention_mask[start : start + batch_size]).cache
        q = torch.stack([cache.write(layer, head).query[keep] for layer, head in sites]).double()  # [H, N, d_k]
        part = torch.einsum("hni,hnj->hij", q, q)
        moment = part if moment is None else moment + part
        n += q.shape[1]
    return ReadMetric.from_moment(moment / n, n, {"sites": [list(s) for s in sites], "n_passages": int(ids.shape[0]),
                                                  "min_position": min_position})
