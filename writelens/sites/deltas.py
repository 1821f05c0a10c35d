"""Edit resolution: the state perturbation ΔS each edit type adds after the write at one position (Delete,
Replace, RandomAtom, Add, Install), from the native write's factors. ``RecurrentCall.resolve`` uses it."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from writelens.edits import Add, Delete, Edit, Install, RandomAtom, Replace
from writelens.errors import EditConflictError, EditShapeError

__all__ = ["edit_delta", "check_factor"]


def edit_delta(call: Any, edit: Edit, native: Tensor, native_norm: Tensor, key: Tensor, value: Tensor, rows: Tensor,
               t: int) -> Tensor:
    """The state perturbation ΔS [n, d_k, d_v] that ``edit`` adds right after the write at local position ``t`` of
    ``call`` (a ``RecurrentCall``), for batch ``rows``: ``native`` [n, d_k, d_v] is the native write, ``native_norm``
    [n] its Frobenius norm, ``key`` / ``value`` its factors."""
    n, dk, dv = native.shape

    def atom(k: Tensor, v: Tensor, scale: float | None) -> Tensor:
        k, v = check_factor(k, dk, "key"), check_factor(v, dv, "value")
        unit = torch.outer(k, v) / (k.norm() * v.norm()).clamp_min(1e-30)
        s = native_norm if scale is None else torch.full((n,), float(scale), dtype=native.dtype)
        return s[:, None, None].to(native) * unit.to(native)

    if isinstance(edit, Delete):
        return -native
    if isinstance(edit, Replace):
        return atom(edit.key, edit.value, edit.scale) - native
    if isinstance(edit, RandomAtom):
        r, z = edit.factors(dk, dv)
        added = atom(r, z, edit.scale)
        return added - native if edit.replace else added
    if isinstance(edit, Add):
        if edit.matrix is not None:
            m = edit.matrix
            if tuple(m.shape) != (dk, dv):
                raise EditShapeError(
                    f"Add.matrix has shape {tuple(m.shape)} but site (layer {edit.layer}, head {edit.head}) "
                    f"holds a ({dk}, {dv}) state; pass a (d_k, d_v) matrix in the key-rows orientation."
                )
            return (edit.scale * m.to(native)).expand(n, dk, dv).clone()
        k, v = check_factor(edit.key, dk, "key"), check_factor(edit.value, dv, "value")
        return (edit.scale * torch.outer(k, v)).to(native).expand(n, dk, dv).clone()
    if isinstance(edit, Install):
        v = check_factor(edit.value, dv, "value").to(native)
        v = v / v.norm().clamp_min(1e-30)
        if edit.key is None and edit.key_side == "next_query":
            if t + 1 >= call.length:
                raise EditConflictError(
                    f"Install(key_side='next_query') at position {call.offset + t} needs the query of the next "
                    "position, which this forward does not contain; install earlier or use key_side='key'."
                )
            k, _ = call.read_vector(rows, edit.head, t + 1)
            k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        elif edit.key is None:
            k = key / key.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        else:
            k = check_factor(edit.key, dk, "key").to(native)
            k = (k / k.norm().clamp_min(1e-30)).expand(n, dk)
        size = edit.magnitude * key.norm(dim=-1) * value.norm(dim=-1)
        return size[:, None, None] * k[:, :, None] * v[None, None, :]
    raise EditShapeError(f"Unknown edit type {type(edit).__name__}; use writelens.Delete/Replace/Add/...")


def check_factor(x: Tensor, d: int, side: str) -> Tensor:
    """``x`` as float32 after checking its last dimension is the site's ``d`` (:class:`EditShapeError` if not)."""
    if x.shape[-1] != d:
        raise EditShapeError(
            f"The {side} factor has length {x.shape[-1]} but this site's {side} side has dimension {d} "
            f"({'d_k' if side == 'key' else 'd_v'}); key factors live on the d_k side, value factors on d_v."
        )
    return x.float()
