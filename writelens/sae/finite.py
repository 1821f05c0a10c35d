"""Finiteness checks with messages that name the offending rows (training data, SAE inputs, weights)."""

from __future__ import annotations

import torch
from torch import Tensor

from writelens.errors import NonFiniteError

__all__ = ["check_finite_rows", "check_finite_tensors"]


def check_finite_rows(rows: Tensor, what: str, fix: str) -> None:
    """Raise :class:`NonFiniteError` naming the first rows of ``rows`` [n, ...] that hold NaN or inf."""
    if not rows.is_floating_point() or rows.numel() == 0:
        return
    finite = torch.isfinite(rows)
    if bool(finite.all()):
        return
    bad = (~finite.reshape(rows.shape[0], -1).all(1)).nonzero().flatten().tolist()
    n_nan = int(torch.isnan(rows).sum())
    raise NonFiniteError(
        f"{what} hold NaN or inf in {len(bad)} of {rows.shape[0]} rows (first {bad[:8]}; {n_nan} NaN values, "
        f"{int((~finite).sum()) - n_nan} inf); {fix}."
    )


def check_finite_tensors(tensors: dict[str, Tensor], source: str, fix: str) -> None:
    """Raise :class:`NonFiniteError` naming every floating tensor of ``tensors`` that holds NaN or inf."""
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteError(f"{source}: tensors {bad} hold NaN or inf; {fix}.")
