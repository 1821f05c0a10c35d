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

Every edit takes ``batch=`` (None: every row; an int or a sequence of ints: those rows) and ``timing``:
``"with_read"`` (default; the read at ``pos`` sees the edited state) or ``"after_read"`` (the output at ``pos`` is
left untouched and the edit acts from ``pos + 1`` on, as the reference code did).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from writelens.errors import EditShapeError

Timing = Literal["with_read", "after_read"]
Rows = int | Sequence[int] | None

__all__ = ["Delete", "Replace", "Add", "RandomAtom", "Install", "Edit", "Timing", "edit_positions", "edit_rows"]


def _check_timing(timing: str) -> None:
    if timing not in ("with_read", "after_read"):
        raise EditShapeError(f"timing={timing!r} is not one of 'with_read', 'after_read'.")


def _as_vector(x: Tensor | Sequence[float] | None, name: str) -> Tensor | None:
    if x is None:
        return None
    t = torch.as_tensor(x)
    if not torch.is_floating_point(t):
        raise EditShapeError(f"{name} must be a floating-point vector, got dtype {t.dtype}; pass e.g. tensor.float().")
    if t.ndim != 1:
        raise EditShapeError(
            f"{name} must be a 1-D vector (d_k for a key, d_v for a value), got shape {tuple(t.shape)}."
        )
    return t.detach()


@dataclass(frozen=True)
class Delete:
    """Remove the native write at ``pos``: ``ΔS = −β_pos k̂_pos v_posᵀ`` (decay and erase terms stay)."""

    layer: int
    head: int
    pos: int
    batch: Rows = None
    timing: Timing = "with_read"

    def __post_init__(self) -> None:
        _check_timing(self.timing)


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
        _check_timing(self.timing)
        if self.key is None or self.value is None:
            raise EditShapeError("Replace needs both key= (d_k vector) and value= (d_v vector).")
        object.__setattr__(self, "key", _as_vector(self.key, "Replace.key"))
        object.__setattr__(self, "value", _as_vector(self.value, "Replace.value"))


@dataclass(frozen=True)
class Add:
    """Add ``matrix`` (d_k × d_v), or ``scale · key ⊗ value``, to the state at ``pos``; the native write stays."""

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
        _check_timing(self.timing)
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
        _check_timing(self.timing)

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
        magnitude: m, relative to the native (β-free) write norm ‖k̂_t ⊗ v_t‖_F = ‖v_t‖.
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
        _check_timing(self.timing)
        if self.key_side not in ("key", "next_query"):
            raise EditShapeError(f"Install.key_side={self.key_side!r} is not 'key' or 'next_query'.")
        if self.value is None:
            raise EditShapeError("Install needs value= (the d_v direction to install).")
        positions = (self.positions,) if isinstance(self.positions, int) else tuple(int(p) for p in self.positions)
        if not positions:
            raise EditShapeError("Install needs at least one position.")
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "value", _as_vector(self.value, "Install.value"))
        object.__setattr__(self, "key", _as_vector(self.key, "Install.key"))


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
