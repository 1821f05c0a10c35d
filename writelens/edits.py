"""Edits of the matrix state, as plain frozen dataclasses.

The contract (``shared/design/conventions.md``, "Edit semantics"): an edit is a matrix ``ΔS`` added to the state of
one site right after the write at position ``pos`` (``S_pos ← S_pos + ΔS``). Inside one layer the recurrence is linear
in S, so the effect on every later state and read is propagated exactly; later layers are recomputed by the model.

=================  =====================================================================================
edit               ΔS at ``pos`` (``write = β k̂ vᵀ`` is the native write of that run at that position)
=================  =====================================================================================
``Delete``         ``−write``
``Replace``        ``−write + s · (key ⊗ value) / ‖key ⊗ value‖_F``; ``s`` = ``scale`` or ``‖write‖_F`` if None
``Add``            ``matrix`` or ``scale · key ⊗ value`` (as given, not normalised)
``RandomAtom``     ``Replace`` with ``key ~ N(0, I)``, ``value ~ N(0, I)`` drawn from ``seed`` (``replace=False``: add)
``Install``        at each position t: ``m · ‖k̂_t ⊗ v_t‖_F · key_t ⊗ value/‖value‖``; key_t = k̂_t unless given
=================  =====================================================================================

Every edit takes ``batch=`` (None: every row; an int or a sequence of distinct ints: those rows) and ``timing``:
``"with_read"`` (default; the read at ``pos`` sees the edited state) or ``"after_read"`` (the output at ``pos`` is
left untouched and the edit acts from ``pos + 1`` on, as the reference code did).

Checked at construction (:class:`~writelens.errors.EditShapeError` unless noted): layer, head, positions and rows
are integers (``3.0`` and ``True`` are refused, never truncated; negative ones raise the matching out-of-range
error); ``Replace`` / ``RandomAtom`` ``scale`` is a finite norm ≥ 0 (flip an atom by negating ``key`` or ``value``);
``Replace`` / ``Install`` key and value are not all zeros (the atom would vanish: use ``Delete``); ``Add`` scale
and ``Install`` magnitude are finite and may be negative (they subtract / install ``−value``); scales are numbers (not
strings); vectors and matrices hold no NaN / inf; ``batch=`` is a row, a list of rows or a 1-D tensor. The lengths of
key and value (d_k, d_v) are checked against the site when the edit is run.

Composition: edits at one site, position and row add up (``Add``, ``Install``, ``RandomAtom(replace=False)``), but
at most one of them may *replace* the native write there: two of ``Delete`` / ``Replace`` / ``RandomAtom`` at the
same (layer, head, pos, row) raise :class:`~writelens.errors.EditConflictError` in ``lens.run`` / ``generate``
(each would remove the write once more).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from writelens.errors import (
    BatchRowOutOfRangeError,
    EditShapeError,
    PositionOutOfRangeError,
    SiteOutOfRangeError,
)
from writelens.validate import as_int

Timing = Literal["with_read", "after_read"]
Rows = int | Sequence[int] | None

__all__ = ["Delete", "Replace", "Add", "RandomAtom", "Install", "Edit", "Timing", "edit_positions", "edit_rows",
           "replaces_write"]


def _check_timing(timing: str) -> None:
    if timing not in ("with_read", "after_read"):
        raise EditShapeError(f"timing={timing!r} is not one of 'with_read', 'after_read'.")


def _check_common(edit: object, *, pos: bool = True) -> None:
    """Normalise and check the fields every edit has: integer layer / head (/ pos), rows, timing."""
    name = type(edit).__name__
    _check_timing(edit.timing)
    for field_name in ("layer", "head"):
        v = as_int(getattr(edit, field_name), f"{name}.{field_name}", EditShapeError)
        if v < 0:
            raise SiteOutOfRangeError(f"{name}.{field_name}={v} is negative; layers and heads count from 0.")
        object.__setattr__(edit, field_name, v)
    if pos:
        p = as_int(edit.pos, f"{name}.pos", EditShapeError)
        if p < 0:
            raise PositionOutOfRangeError(f"{name}.pos={p} is negative; edits take absolute positions from 0.")
        object.__setattr__(edit, "pos", p)
    object.__setattr__(edit, "batch", _rows(edit.batch, name))


def _rows(batch: object, name: str) -> int | tuple[int, ...] | None:
    if batch is None:
        return None
    if getattr(batch, "ndim", 0) > 1:
        raise EditShapeError(f"{name}.batch has shape {tuple(batch.shape)}; pass one row, a list of rows or a 1-D tensor.")
    if hasattr(batch, "ndim") and batch.ndim == 1:
        batch = batch.tolist()  # a 1-D tensor / array of rows
    if isinstance(batch, (str, bytes)) or not hasattr(batch, "__iter__") or getattr(batch, "ndim", None) == 0:
        rows: int | tuple[int, ...] = as_int(batch, f"{name}.batch", EditShapeError)
        listed = (rows,)
    else:
        rows = tuple(as_int(r, f"{name}.batch row", EditShapeError) for r in batch)
        listed = rows
        if not rows:
            raise EditShapeError(f"{name}.batch is empty, so the edit would apply to no row; pass batch=None for "
                                 "every row or the rows to edit.")
        if len(set(rows)) != len(rows):
            raise EditShapeError(f"{name}.batch={list(rows)} names a row twice; list each row once.")
    bad = [r for r in listed if r < 0]
    if bad:
        raise BatchRowOutOfRangeError(f"{name}.batch names row {bad[0]}; rows count from 0.")
    return rows


def _check_scale(value: object, name: str, *, allow_none: bool, nonnegative: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (str, bytes)):
        raise EditShapeError(f"{name} must be a number, got the string {value!r}.")
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise EditShapeError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(v):
        raise EditShapeError(f"{name}={v} is not finite; pass a finite number.")
    if nonnegative and v < 0:
        raise EditShapeError(f"{name}={v} is negative, but it is the atom's Frobenius norm (>= 0); to flip the atom "
                             "negate key or value, or use Add for a signed change.")
    return v


def _nonzero(vec: Tensor | None, name: str) -> None:
    if vec is not None and not bool(vec.ne(0).any()):
        hint = {"Install.key": " (or key=None for the native key)", "Install.value": ""}.get(
            name, " (use Delete to remove the write)")
        raise EditShapeError(f"{name} is all zeros, so its direction is undefined and the edit would vanish; pass "
                             f"a nonzero vector{hint}.")


def _as_vector(x: Tensor | Sequence[float] | None, name: str) -> Tensor | None:
    if x is None:
        return None
    if isinstance(x, (str, bytes)):
        raise EditShapeError(f"{name} must be a float vector, got the string {x!r}.")
    t = torch.as_tensor(x)
    if not torch.is_floating_point(t):
        raise EditShapeError(f"{name} must be a floating-point vector, got dtype {t.dtype}; pass e.g. tensor.float().")
    if t.ndim != 1:
        raise EditShapeError(
            f"{name} must be a 1-D vector (d_k for a key, d_v for a value), got shape {tuple(t.shape)}."
        )
    _finite(t, name)
    return t.detach()


def _finite(t: Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise EditShapeError(f"{name} holds NaN or inf, which would make every later state and logit NaN; pass a "
                             "finite tensor.")


@dataclass(frozen=True)
class Delete:
    """Remove the native write at ``pos``: ``ΔS = −β_pos k̂_pos v_posᵀ`` (decay and erase terms stay)."""

    layer: int
    head: int
    pos: int
    batch: Rows = None
    timing: Timing = "with_read"

    def __post_init__(self) -> None:
        _check_common(self)


@dataclass(frozen=True)
class Replace:
    """Replace the native write at ``pos`` by the rank-1 atom ``key ⊗ value`` scaled to Frobenius norm ``scale``.

    Args:
        key: Float[Tensor, " d_k"], the key-side factor (u of an SAE atom).
        value: Float[Tensor, " d_v"], the value-side factor (w of an SAE atom).
        scale: the atom's Frobenius norm after replacement; None uses the native write's norm (``matched_norm``).
    """

    layer: int
    head: int
    pos: int
    key: Float[Tensor, " d_k"] = field(repr=False, default=None)
    value: Float[Tensor, " d_v"] = field(repr=False, default=None)
    scale: float | None = None
    batch: Rows = None
    timing: Timing = "with_read"

    def __post_init__(self) -> None:
        _check_common(self)
        if self.key is None or self.value is None:
            raise EditShapeError("Replace needs both key= (d_k vector) and value= (d_v vector).")
        object.__setattr__(self, "key", _as_vector(self.key, "Replace.key"))
        object.__setattr__(self, "value", _as_vector(self.value, "Replace.value"))
        _nonzero(self.key, "Replace.key")
        _nonzero(self.value, "Replace.value")
        object.__setattr__(self, "scale", _check_scale(self.scale, "Replace.scale", allow_none=True, nonnegative=True))


@dataclass(frozen=True)
class Add:
    """Add ``matrix`` (d_k × d_v), or ``scale · key ⊗ value``, to the state at ``pos``; the native write stays.

    ``scale`` may be negative (it subtracts); several ``Add`` at one site, position and row add up."""

    layer: int
    head: int
    pos: int
    matrix: Float[Tensor, "d_k d_v"] | None = field(repr=False, default=None)
    key: Float[Tensor, " d_k"] | None = field(repr=False, default=None)
    value: Float[Tensor, " d_v"] | None = field(repr=False, default=None)
    scale: float = 1.0
    batch: Rows = None
    timing: Timing = "with_read"

    def __post_init__(self) -> None:
        _check_common(self)
        object.__setattr__(self, "scale", _check_scale(self.scale, "Add.scale", allow_none=False, nonnegative=False))
        has_matrix = self.matrix is not None
        has_factors = self.key is not None or self.value is not None
        if has_matrix == has_factors:
            raise EditShapeError("Add takes either matrix= (d_k × d_v) or both key= and value=, not both / neither.")
        if has_matrix:
            m = torch.as_tensor(self.matrix).detach()
            if m.ndim != 2 or not torch.is_floating_point(m):
                raise EditShapeError(
                    f"Add.matrix must be a float (d_k, d_v) matrix, got shape {tuple(m.shape)} dtype {m.dtype}."
                )
            _finite(m, "Add.matrix")
            object.__setattr__(self, "matrix", m)
        else:
            if self.key is None or self.value is None:
                raise EditShapeError("Add with factors needs both key= and value=.")
            object.__setattr__(self, "key", _as_vector(self.key, "Add.key"))
            object.__setattr__(self, "value", _as_vector(self.value, "Add.value"))


@dataclass(frozen=True)
class RandomAtom:
    """The random-atom control: replace the write at ``pos`` by ``scale · r zᵀ/‖r‖‖z‖``, with r ~ N(0, I_{d_k}) and
    z ~ N(0, I_{d_v}) drawn from a CPU generator seeded with ``seed`` (so results do not depend on the device).
    ``scale=None`` matches the native write's norm; ``replace=False`` adds the atom and keeps the write."""

    layer: int
    head: int
    pos: int
    scale: float | None = None
    seed: int = 0
    replace: bool = True
    batch: Rows = None
    timing: Timing = "with_read"

    def __post_init__(self) -> None:
        _check_common(self)
        object.__setattr__(self, "scale", _check_scale(self.scale, "RandomAtom.scale", allow_none=True,
                                                       nonnegative=True))
        object.__setattr__(self, "seed", as_int(self.seed, "RandomAtom.seed", EditShapeError))
        if not isinstance(self.replace, bool):
            raise EditShapeError(f"RandomAtom.replace must be True or False, got {self.replace!r}.")

    def factors(self, d_k: int, d_v: int) -> tuple[Tensor, Tensor]:
        """The seeded random factors (r [d_k], z [d_v]), unit norm."""
        gen = torch.Generator().manual_seed(int(self.seed))
        r = torch.randn(d_k, generator=gen, dtype=torch.float64)
        z = torch.randn(d_v, generator=gen, dtype=torch.float64)
        return (r / r.norm()).float(), (z / z.norm()).float()


@dataclass(frozen=True)
class Install:
    """Steering install: at each of ``positions`` add ``magnitude · ‖k̂_t ⊗ v_t‖_F · key_t ⊗ value/‖value‖``.

    Args:
        value: Float[Tensor, " d_v"], the value-side direction (e.g. ``W_O^hᵀ W_U[target]``); normalised here.
        key: Float[Tensor, " d_k"] or None; None uses the native key k̂_t at each install position; a given key is
            normalised.
        magnitude: m, relative to the native (β-free) write norm ‖k̂_t ⊗ v_t‖_F = ‖v_t‖; negative installs −value.
        key_side: with ``key=None``, ``"key"`` installs along the native key k̂_t (read like that write);
            ``"next_query"`` along the next read query q̂_{t+1} (the position must not be the last of the call).
    """

    layer: int
    head: int
    positions: tuple[int, ...]
    value: Float[Tensor, " d_v"] = field(repr=False, default=None)
    key: Float[Tensor, " d_k"] | None = field(repr=False, default=None)
    magnitude: float = 3.0
    key_side: Literal["key", "next_query"] = "key"
    batch: Rows = None
    timing: Timing = "with_read"

    def __post_init__(self) -> None:
        _check_common(self, pos=False)
        if self.key_side not in ("key", "next_query"):
            raise EditShapeError(f"Install.key_side={self.key_side!r} is not 'key' or 'next_query'.")
        if self.value is None:
            raise EditShapeError("Install needs value= (the d_v direction to install).")
        raw = self.positions
        if hasattr(raw, "ndim") and raw.ndim == 1:
            raw = raw.tolist()
        many = hasattr(raw, "__iter__") and not isinstance(raw, (str, bytes)) and getattr(raw, "ndim", None) != 0
        positions = tuple(as_int(p, "Install.positions", EditShapeError) for p in raw) if many else (
            as_int(raw, "Install.positions", EditShapeError),)
        if not positions:
            raise EditShapeError("Install needs at least one position.")
        if min(positions) < 0:
            raise PositionOutOfRangeError(f"Install.positions {list(positions)} has a negative position; edits take "
                                          "absolute positions from 0.")
        if len(set(positions)) != len(positions):
            raise EditShapeError(f"Install.positions {list(positions)} lists a position twice; list each once (raise "
                                 "magnitude for a larger dose).")
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "magnitude", _check_scale(self.magnitude, "Install.magnitude", allow_none=False,
                                                           nonnegative=False))
        object.__setattr__(self, "value", _as_vector(self.value, "Install.value"))
        object.__setattr__(self, "key", _as_vector(self.key, "Install.key"))
        _nonzero(self.value, "Install.value")
        _nonzero(self.key, "Install.key")


Edit = Delete | Replace | Add | RandomAtom | Install


def edit_positions(edit: Edit) -> tuple[int, ...]:
    """The absolute token positions an edit touches."""
    return edit.positions if isinstance(edit, Install) else (edit.pos,)


def edit_rows(edit: Edit, batch_size: int) -> list[int]:
    """The batch rows an edit applies to (``batch=None`` means all rows)."""
    if edit.batch is None:
        return list(range(batch_size))
    if isinstance(edit.batch, int):
        return [int(edit.batch)]
    return [int(r) for r in edit.batch]


def replaces_write(edit: Edit) -> bool:
    """Whether ``edit`` removes the native write at its position (``Delete``, ``Replace``, ``RandomAtom`` with
    ``replace=True``): at most one such edit may act on one site, position and row."""
    return isinstance(edit, (Delete, Replace)) or (isinstance(edit, RandomAtom) and edit.replace)
