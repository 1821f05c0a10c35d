"""The checks ``WriteLens.run`` / ``generate`` / ``trace`` make on their inputs before any forward pass.

Cheap by design (a min / max over the ids, one pass over the edits, nothing on the model): each bad input raises a
named error from :mod:`writelens.errors` whose message says what was wrong and what to pass instead.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from writelens.edits import (
    Add,
    Delete,
    Edit,
    Install,
    RandomAtom,
    Replace,
    edit_positions,
    edit_rows,
    replaces_write,
)
from writelens.errors import (
    BatchRowOutOfRangeError,
    EditConflictError,
    EditShapeError,
    InputError,
    PositionOutOfRangeError,
)
from writelens.validate import as_int, check_bool

__all__ = ["as_edits", "check_edits", "check_ids", "check_mask", "check_generate_args", "site_pair"]

_EDIT_TYPES = (Delete, Replace, Add, RandomAtom, Install)


def as_edits(edits: Any) -> list[Edit]:
    """``edits`` as a list: one edit alone is accepted as ``[edit]``, None as no edits."""
    if edits is None:
        return []
    if isinstance(edits, _EDIT_TYPES):
        return [edits]
    if isinstance(edits, (str, bytes)) or not hasattr(edits, "__iter__"):
        raise EditShapeError(f"edits={edits!r} is not a list of edits; pass e.g. edits=[wl.Delete(layer, head, pos)].")
    return list(edits)


def check_edits(lens: Any, edits: Any, batch_size: int, length: int, mask: Tensor | None = None) -> list[Edit]:
    """Sites, positions (in range, and not padding where ``mask`` [B, T] is 0), rows, and at most one
    write-replacing edit per (layer, head, pos, row) (:class:`EditConflictError`)."""
    edits = as_edits(edits)
    replacing: dict[tuple[int, int, int, int], Edit] = {}
    for e in edits:
        if not isinstance(e, _EDIT_TYPES):
            raise EditShapeError(f"{e!r} is not a writelens edit; use wl.Delete / Replace / Add / RandomAtom / Install.")
        name = type(e).__name__
        lens._check_site(e.layer, e.head)
        for p in edit_positions(e):
            if not 0 <= p < length:
                raise PositionOutOfRangeError(
                    f"{name} at position {p} is outside the {length} positions this call processes "
                    f"(valid: 0..{length - 1}); edits take absolute, non-negative positions."
                )
        rows = edit_rows(e, batch_size)
        for r in rows:
            if not 0 <= r < batch_size:
                raise BatchRowOutOfRangeError(
                    f"{name} names batch row {r} but the batch has {batch_size} rows (0..{batch_size - 1})."
                )
        if mask is not None:
            for p in edit_positions(e):
                padded = [r for r in rows if not mask[r, p]]
                if padded:
                    raise PositionOutOfRangeError(
                        f"{name} at position {p} of row {padded[0]} edits a padded position (attention_mask 0 "
                        "there), which holds no real token; move the edit to a position the mask keeps, or restrict "
                        "it with batch= to the rows where that position is real."
                    )
        if replaces_write(e):
            for r in rows:
                key = (e.layer, e.head, e.pos, r)
                if key in replacing:
                    raise EditConflictError(
                        f"{type(replacing[key]).__name__} and {name} both replace the native write at "
                        f"L{e.layer}H{e.head} position {e.pos} row {r}; keep one (Add and Install add up freely; put "
                        "different conditions in different batch rows with batch=)."
                    )
                replacing[key] = e
    return edits


def site_pair(s: Any, site_cls: type) -> tuple[Any, Any]:
    """(layer, head) of one item of ``sites=``: a ``Site``, a (layer, head) pair, or a layer index (head 0);
    :class:`InputError` for a string, a triple or another sequence."""
    if isinstance(s, site_cls):
        return s.layer, s.head
    if isinstance(s, (tuple, list)) and len(s) == 2:
        return s[0], s[1]
    if isinstance(s, (str, bytes, tuple, list)) or (hasattr(s, "__iter__") and getattr(s, "ndim", 1) != 0):
        raise InputError(f"sites=[..., {s!r}, ...]: each site is a (layer, head) pair, a Site or a layer index; e.g. "
                         "sites=[(0, 1), 2].")
    return s, 0


def _is_text(x: Any) -> bool:
    return isinstance(x, (str, bytes)) or (isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], str))


def check_ids(input_ids: Any, vocab: int, what: str = "input_ids") -> Tensor:
    """``input_ids`` as a LongTensor [B, T] (a [T] input gains a batch axis), B, T ≥ 1, every id in 0..vocab-1."""
    if _is_text(input_ids):
        raise InputError(f"{what} must be token ids, got text; tokenise it first, e.g. "
                         "lens.tokenizer(text, return_tensors='pt').input_ids.")
    try:
        ids = torch.as_tensor(input_ids)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{what} must be an integer tensor [B, T] (rows of equal length), got "
                         f"{type(input_ids).__name__} ({err}).") from None
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise InputError(f"{what} must be an integer tensor [B, T] (or [T]), got shape {tuple(ids.shape)} dtype "
                         f"{ids.dtype}; pass token ids, e.g. tensor.long().")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InputError(f"{what} has shape {tuple(ids.shape)}: an empty batch or sequence; pass at least one row of "
                         "at least one token.")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        bad = lo if lo < 0 else hi
        row, col = (ids == bad).nonzero()[0].tolist()
        raise InputError(f"{what}[{row}, {col}] = {bad} is outside the vocabulary (valid ids: 0..{vocab - 1}); "
                         "tokenise with this model's tokenizer.")
    return ids.long()


def check_mask(attention_mask: Any, ids: Tensor) -> Tensor | None:
    """The attention mask as a [B, T] tensor shaped like ``ids``, of 0 / 1 only, with a real token in every row."""
    if attention_mask is None:
        return None
    try:
        mask = torch.as_tensor(attention_mask)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"attention_mask must be a [B, T] tensor of 0 / 1, got {type(attention_mask).__name__} "
                         f"({err}).") from None
    if mask.ndim == 1 and ids.shape[0] == 1:
        mask = mask[None]
    if tuple(mask.shape) != tuple(ids.shape):
        raise InputError(f"attention_mask has shape {tuple(mask.shape)} but input_ids {tuple(ids.shape)}; pass one "
                         "0 / 1 entry per token (1: a real token, 0: padding).")
    if mask.dtype.is_complex:
        raise InputError(f"attention_mask has dtype {mask.dtype}; pass a bool or integer tensor of 0 / 1.")
    flags = mask.detach().cpu()
    if flags.dtype != torch.bool and not bool(((flags == 0) | (flags == 1)).all()):
        raise InputError("attention_mask must hold only 0 and 1 (1: a real token, 0: padding).")
    empty = (~flags.bool().any(1)).nonzero().flatten().tolist()
    if empty:
        raise InputError(f"attention_mask row {empty[0]} is all zeros: that row has no real token; drop the row or "
                         "fix its mask.")
    return mask


def check_generate_args(max_new_tokens: Any, do_sample: bool, temperature: Any, top_k: Any, seed: Any,
                        n_logits: int) -> tuple[int, int | None, int | None]:
    """``(max_new_tokens, top_k, seed)`` as ints: max_new_tokens ≥ 1, top_k in 1..n_logits or None, and a finite
    temperature > 0 when sampling."""
    max_new_tokens = as_int(max_new_tokens, "max_new_tokens", InputError)
    check_bool(do_sample, "do_sample", InputError)
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens}: generate at least 1 token (lens.run is the forward "
                         "without generation).")
    if top_k is not None:
        top_k = as_int(top_k, "top_k", InputError)
        if not 1 <= top_k <= n_logits:
            raise InputError(f"top_k={top_k} is outside 1..{n_logits} (the vocabulary); pass top_k=None to sample "
                             "from the whole vocabulary.")
    if do_sample:
        ok = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
        if not (ok and math.isfinite(temperature) and temperature > 0):
            raise InputError(f"temperature={temperature!r} must be a finite number > 0 when sampling; use "
                             "do_sample=False for greedy decoding.")
    if seed is not None:
        seed = as_int(seed, "seed", InputError)
    return max_new_tokens, top_k, seed
