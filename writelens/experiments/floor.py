"""Null-edit noise floors: what a mathematically null edit does through the same path (issue 12).

Every effect an experiment reports (a KL, a Δ log p) is the difference of two float computations, the native scan
and the edited, batched forward, so it is never exactly zero. A **null edit** at the same site, position and timing,
measured exactly like the real conditions, gives the size of that difference when the true effect is zero:

- ``null_edit="restore"`` (default): the protocol's removal followed by adding back exactly what it removed —
  ``Delete`` then ``Add`` of the native write's own factors (``Replace`` with the native write itself), or, for an
  atom-contribution erasure, ``Add(−a·A)`` then ``Add(+a·A)``; it runs through the same edit arithmetic;
- ``null_edit="zero"``: an ``Add`` of a zero matrix.

**Rule.** The floor's threshold is ``τ = multiple × max |null effect|`` over the null firings (``multiple`` = 10 by
default). An effect with ``|effect| ≤ τ`` is *below the floor*; so is every effect of a firing the edit cannot reach
(``timing="after_read"`` at the final position with the last-position KL: every measured position precedes the
edit's first effect). In a paired comparison (atom vs delete, ...) a firing whose two effects both sit below the
floor is a **tie**; ties are left out of the win rate's denominator (the sign-test convention, the same as the
Wilcoxon test's ``zero_method='wilcox'``) and counted in the result. When more than half of the firings are ties of
the headline comparison (or below the floor, where there is none), :func:`noise_floor` raises a
:class:`~writelens.errors.NoiseFloorWarning` and records the message in ``NoiseFloor.warning``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from writelens.edits import Add, Delete, Edit
from writelens.errors import ExperimentError, NoiseFloorWarning
from writelens.experiments.base import JsonMixin
from writelens.experiments.options import NullEdit

TIE_RULE = ("a firing whose two compared effects are both <= threshold (= multiple x max |null effect|), or that "
            "the edit cannot reach, is a tie; ties are excluded from the win rate's denominator (sign-test "
            "convention)")
WARN_FRACTION = 0.5

__all__ = ["NullEdit", "NoiseFloor", "TIE_RULE", "null_edits", "floor_threshold", "below_floor", "noise_floor"]


@dataclass
class NoiseFloor(JsonMixin):
    """The null-edit floor of one experiment and how many of its firings sit under it.

    Attributes:
        null_edit: ``"restore"`` or ``"zero"`` (module doc). metric: what the effects are (``"kl"``,
            ``"|delta_logp|"``). multiple: τ = multiple × ``max``.
        n_null: null firings measured; median / max: of |null effect| over them; threshold: τ.
        n_items: firings of the experiment; n_unreachable: firings the edit cannot reach (all their effects
            count as below the floor).
        below: per condition, how many firings have |effect| ≤ τ (or are unreachable).
        n_all_below: firings whose every condition is below the floor.
        headline: the compared conditions of the headline rate (e.g. ``"atom vs delete"``; "" when none);
            n_ties: its ties (both effects below the floor; = ``n_all_below`` when there is no comparison).
        warning: the warning raised when ``n_ties > WARN_FRACTION × n_items`` ("" when none).
        tie_rule: how ties are counted.
    """

    null_edit: str
    metric: str
    multiple: float
    n_null: int
    median: float
    max: float
    threshold: float
    n_items: int
    n_unreachable: int
    below: dict[str, int]
    n_all_below: int
    headline: str
    n_ties: int
    warning: str = ""
    tie_rule: str = field(default=TIE_RULE)

    @property
    def tie_fraction(self) -> float:
        """n_ties / n_items (nan without firings)."""
        return self.n_ties / self.n_items if self.n_items else float("nan")

    def summary(self, prefix: str = "floor_") -> dict[str, Any]:
        """Flat headline fields for an experiment's ``summary()``."""
        return {f"{prefix}null_edit": self.null_edit, f"{prefix}median": self.median, f"{prefix}max": self.max,
                f"{prefix}threshold": self.threshold, f"{prefix}multiple": self.multiple,
                "n_below_floor": self.n_all_below, "n_ties": self.n_ties, "tie_fraction": self.tie_fraction,
                "below_floor_warning": self.warning}


def null_edits(layer: int, head: int, pos: int, key: torch.Tensor, value: torch.Tensor, beta: float,
               kind: NullEdit = "restore", timing: str = "with_read") -> list[Edit]:
    """The null edit at ``pos``: ``restore`` = ``Delete`` + ``Add`` of the native write ``beta · key ⊗ value``
    (key [d_k], value [d_v], as ``cache.write`` gives them); ``zero`` = ``Add`` of a zero (d_k × d_v) matrix."""
    if kind == "restore":
        return [Delete(layer, head, pos, timing=timing),
                Add(layer, head, pos, key=key, value=value, scale=float(beta), timing=timing)]
    if kind == "zero":
        return [Add(layer, head, pos, matrix=torch.zeros(key.numel(), value.numel()), timing=timing)]
    raise ExperimentError(f"null_edit must be 'restore' or 'zero', got {kind!r}.")


def floor_threshold(null: Any, multiple: float) -> tuple[float, float, float]:
    """(median, max, τ = multiple × max) of |null effects| [n]; all nan when there is no finite null effect."""
    v = np.abs(np.asarray(null, dtype=np.float64).reshape(-1))
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    top = float(v.max())
    return float(np.median(v)), top, float(multiple) * top


def below_floor(values: Any, threshold: float, unreachable: Any = None) -> np.ndarray:
    """Bool [n]: |value| ≤ threshold (False for nan values or a nan threshold), or ``unreachable`` [n]."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    out = np.isfinite(v) & (np.abs(v) <= threshold) if np.isfinite(threshold) else np.zeros(v.size, dtype=bool)
    if unreachable is not None:
        out = out | np.asarray(unreachable, dtype=bool).reshape(-1)
    return out


def noise_floor(null: Any, effects: dict[str, Any], *, multiple: float, null_edit: str, metric: str,
                headline: tuple[str, str] | None = None, unreachable: Any = None, what: str = "experiment",
                stacklevel: int = 3) -> NoiseFloor:
    """The :class:`NoiseFloor` of per-firing ``effects`` ({condition: [n]}) given the null effects [n_null].

    Warns (:class:`~writelens.errors.NoiseFloorWarning`) when more than half of the firings are ties of the
    ``headline`` pair of conditions (or, without a headline, below the floor in every condition).
    """
    median, top, tau = floor_threshold(null, multiple)
    n = len(next(iter(effects.values()))) if effects else 0
    unreach = np.zeros(n, dtype=bool) if unreachable is None else np.asarray(unreachable, dtype=bool).reshape(-1)
    below = {c: below_floor(v, tau, unreach) for c, v in effects.items()}
    every = np.logical_and.reduce(list(below.values())) if below else np.zeros(0, dtype=bool)
    if headline is not None:
        ties = below[headline[0]] & below[headline[1]]
        label = f"{headline[0]} vs {headline[1]}"
    else:
        ties, label = every, ""
    n_ties = int(ties.sum())
    message = ""
    if n and n_ties > WARN_FRACTION * n:
        kind = f"ties of {label}" if label else "below the floor in every condition"
        message = (f"{what}: {n_ties} of {n} firings ({n_ties / n:.0%}) are {kind}: their {metric} is <= "
                   f"{multiple:g} x the null-edit maximum ({top:.3g}, threshold {tau:.3g})"
                   + (f" or unreachable by the edit ({int(unreach.sum())})" if unreach.any() else "")
                   + "; the comparison is decided by float rounding there. Ties are excluded from rates.")
        warnings.warn(message, NoiseFloorWarning, stacklevel=stacklevel)
    n_null = int(np.isfinite(np.asarray(null, dtype=np.float64)).sum())
    return NoiseFloor(null_edit=null_edit, metric=metric, multiple=float(multiple), n_null=n_null,
                      median=median, max=top, threshold=tau, n_items=n, n_unreachable=int(unreach.sum()),
                      below={c: int(b.sum()) for c, b in below.items()}, n_all_below=int(every.sum()),
                      headline=label, n_ties=n_ties, warning=message)
