"""Finiteness checks with messages that name the offending rows (training data, SAE inputs, weights), and the dtype
check of tensors given to an SAE."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from writelens.errors import NonFiniteError, SAEInputError

__all__ = ["as_real_tensor", "check_finite_rows", "check_finite_tensors"]


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


def as_real_tensor(x: Any, what: str) -> Tensor:
    """``x`` as a tensor (numpy arrays and nested lists are converted) of a real dtype: complex and bool inputs
    raise :class:`SAEInputError` (complex would drop its imaginary part, bool is not a state)."""
    try:
        t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise SAEInputError(f"the {what} must be a tensor, got {type(x).__name__} ({err}).") from None
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise SAEInputError(f"the {what} have dtype {t.dtype}; pass real-valued (float) {what}.")
    return t
