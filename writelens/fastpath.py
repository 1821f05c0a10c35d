"""Edited runs at their compute floor: one native pass, then each edited row costs only what its edits change.

An edit at layer ``l``, position ``p`` changes nothing below ``l`` and nothing before ``p``. A :class:`NativePass`
runs the native forward over a set of passages once and keeps what continuing from any (layer, position) needs
(``FamilyAdapter.record_native``: layer inputs, the recurrent layers' kernel calls and conv / token-shift inputs,
attention KV). Each edited row then runs only positions ``[s0, T)`` of layers ``≥ l`` (``continue_rows``), the
edit applied exactly by the interceptors; positions before the row's first edit are the native logits, bit for
bit. Rows are continued in groups of nearby first positions, sharing one forward.

``lens.run(ids, edits=...)`` uses a one-off native pass; the experiments (replacement, population, erasure,
attribution, the organisms' replacement) keep one per chunk of passages for all of their edited rows
(``writelens.experiments.common.run_rows``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from writelens.edits import Edit, edit_positions, edit_rows
from writelens.errors import (
    BatchRowOutOfRangeError,
    EditConflictError,
    NonFiniteError,
    PositionOutOfRangeError,
)
from writelens.lens_inputs import as_edits

__all__ = ["NativePass", "run_with_prefix_reuse", "GROUP_ROWS"]

GROUP_ROWS = 16  # edited rows continued in one forward at most
SLACK = 8  # a group admits rows starting up to (T − s0) / SLACK positions after its first row (recomputed natively)


class NativePass:
    """The native forward over ``passages`` [N, T], kept so that edited rows of them cost only their suffix.

    ``layers``: every layer an edited row's lowest edit may sit at (their inputs are recorded; what the passes
    keep grows with the number of layers from ``min(layers)`` on, see the docs' performance page). ``tail``: keep
    (and compute) the native logits of the last ``tail`` positions only — with a 248k-token vocabulary the logits
    are most of a forward and 1 MB per position; :meth:`run` then serves ``tail=`` measurements only.
    ``logits`` are the native logits kept, [N, T, V] or [N, tail, V].
    """

    def __init__(self, lens: Any, passages: Int[Tensor, "N T"], layers: Iterable[int], *, tail: int | None = None):
        self.lens = lens
        self.adapter = lens.adapter
        self.passages = passages
        self.layers = sorted({int(x) for x in layers})
        if not self.layers:
            raise EditConflictError("NativePass needs at least one layer that edited rows start at (layers=[...]).")
        T = passages.shape[1]
        if tail is not None and not 1 <= int(tail) <= T:
            raise PositionOutOfRangeError(f"tail={tail} must be between 1 and the passages' {T} positions.")
        self.kept = T if tail is None else int(tail)  # native logits of positions [T − kept, T)
        self.record = self.adapter.record_native(passages, self.layers, 0 if tail is None else self.kept)

    @property
    def logits(self) -> Float[Tensor, "N T V"]:
        return self.record.logits

    def run(self, rows: Sequence[tuple[int, Sequence[Edit]]],
            reduce: Callable[[int, Float[Tensor, "L V"]], Any] | None = None, *, tail: int | None = None,
            span: int | None = None) -> list[Any]:
        """Each row (passage index, edits of that row; an edit's ``batch`` is ignored: it applies to its row) run
        with the exact edit engine; returns ``reduce(i, logits_i)`` per row in order (the logits when ``reduce`` is
        None). The logits are [T, V]; with ``tail`` the last ``tail`` positions only [tail, V] (the unembedding then
        runs on those alone: what a measurement at the last position needs); with ``span`` positions
        ``[0, first + span)`` only, ``first`` the row's first edit position (the forward stops there: what a
        next-token measurement needs). A row without edits gets the native logits (as long as the others)."""
        T = self.passages.shape[1]
        if self.kept < T:
            if span is not None or (tail is not None and int(tail) > self.kept):
                raise EditConflictError(f"this NativePass kept the native logits of the last {self.kept} positions "
                                        f"only; ask for tail <= {self.kept} (or build it without tail=).")
            tail = self.kept if tail is None else tail
        if tail is not None and span is not None:
            raise EditConflictError("give tail= (the last positions) or span= (positions after the first edit), "
                                    "not both.")
        for name, value in (("tail", tail), ("span", span)):
            if value is not None and not 1 <= int(value) <= T:
                raise PositionOutOfRangeError(f"{name}={value} must be between 1 and the passages' {T} positions.")
        lo = 0 if tail is None else T - int(tail)  # the first position handed to reduce
        plans = []
        for i, (p, edits) in enumerate(rows):
            edits = [dataclasses.replace(e, batch=0) for e in as_edits(edits)]
            edits = self.lens._check_edits(edits, 1, T)
            if not 0 <= int(p) < self.passages.shape[0]:
                raise BatchRowOutOfRangeError(f"row {i} names passage {int(p)} but this NativePass holds "
                                              f"{self.passages.shape[0]} passages (0..{self.passages.shape[0] - 1}).")
            if not edits:
                plans.append((T, 0, i, int(p), edits))
                continue
            low = min(e.layer for e in edits)
            if low not in self.layers:
                raise EditConflictError(
                    f"row {i} edits layer {low} first, but this NativePass recorded layers {self.layers}; "
                    "build it with layers= including every layer the rows' lowest edits sit at.")
            plans.append((min(p for e in edits for p in edit_positions(e)), low, i, int(p), edits))
        out: list[Any] = [None] * len(rows)
        native = self.record.logits  # positions [T − kept, T)
        off = T - self.kept
        todo = sorted(pl for pl in plans if pl[4])
        for pl in plans:
            if not pl[4]:
                out[pl[2]] = _reduced(reduce, pl[2], native[pl[3], lo - off :])  # (span: as long as a row at T)
        for group in _groups(todo, T, self.passages.numel()):
            s0 = group[0][0]
            low = min(pl[1] for pl in group)
            src = torch.tensor([pl[3] for pl in group], device=self.passages.device)
            edits = [dataclasses.replace(e, batch=j) for j, pl in enumerate(group) for e in pl[4]]
            end = T if span is None else min(T, max(pl[0] for pl in group) + int(span))  # computed: [s0, end)
            keep = end - s0 if tail is None else min(int(tail), T - s0)  # unembedded: [end − keep, end)
            suffix = self.adapter.continue_rows(self.record, src, s0, low, edits,
                                                logits_to_keep=0 if tail is None else keep,
                                                stop=0 if end == T else end)
            if not (torch.isfinite(suffix[:, 0]).all() and torch.isfinite(suffix[:, -1]).all()):
                # (a runaway edit reaches every later position; its first and last are checked)
                raise NonFiniteError(
                    "The edited run produced NaN/inf logits; an edit's magnitude is probably enormous — "
                    "check Replace/Add scales and Install magnitudes.")
            for j, (first, _low, i, p, _e) in enumerate(group):
                stop = T if span is None else min(T, first + int(span))
                full = native[p, lo - off : stop - off].clone()
                start = max(first, end - keep)
                full[start - lo :] = suffix[j, start - (end - keep) : stop - (end - keep)]
                out[i] = _reduced(reduce, i, full)
            del suffix
        return out


def _reduced(reduce, i: int, logits: Tensor) -> Any:
    return logits if reduce is None else reduce(i, logits)


def _groups(plans: list[tuple], T: int, budget: int) -> list[list[tuple]]:
    """Rows sorted by first position cut into groups of at most GROUP_ROWS whose first positions lie within
    (T − s0) / SLACK of the group's first, and whose forward covers at most ``budget`` token-rows (rows × (T − s0);
    the native pass's N × T): a group's transient memory never exceeds that of the native forward (at real widths
    transformers' Mamba-2 torch scan holds ~200 MB per row and 256 tokens)."""
    groups: list[list[tuple]] = []
    for pl in plans:
        g = groups[-1] if groups else None
        if (g is not None and len(g) < GROUP_ROWS and (len(g) + 1) * (T - g[0][0]) <= budget
                and pl[0] - g[0][0] <= max(0, (T - g[0][0]) // SLACK)):
            g.append(pl)
        else:
            groups.append([pl])
    return groups


def run_with_prefix_reuse(lens: Any, ids: Int[Tensor, "B T"], edits: list[Edit], tail: int | None = None
                          ) -> Float[Tensor, "B T V"]:
    """Logits [B, T, V] of the edited run through a one-off :class:`NativePass` over the distinct rows of ``ids``
    ([B, tail, V], the last ``tail`` positions, when given)."""
    B = ids.shape[0]
    per_row: dict[int, list[Edit]] = {}
    for e in edits:
        for r in edit_rows(e, B):
            per_row.setdefault(r, []).append(e)
    uniq, inverse = torch.unique(ids, dim=0, return_inverse=True)
    if len(uniq) == B:  # distinct rows: the native pass over ids itself (its logits are the unedited run's, bitwise)
        uniq, inverse = ids, torch.arange(B, device=ids.device)
    native = NativePass(lens, uniq, {min(e.layer for e in es) for es in per_row.values()}, tail=tail)
    logits = native.logits[inverse].clone()
    order = sorted(per_row)
    for r, row_logits in zip(order, native.run([(int(inverse[r]), per_row[r]) for r in order]), strict=True):
        logits[r] = row_logits
    return logits
