"""``replacement_test(..., reuse=earlier)``: which firings of an earlier result a new run may take over."""

from __future__ import annotations

from typing import Any

from writelens.errors import ExperimentError
from writelens.experiments.options import ReplacementOptions

__all__ = ["reusable"]


#: the options a firing's KLs depend on (``reuse=`` needs them equal); the rest only choose the firings
_MEASUREMENT = ("scale", "kl_position", "kl_direction", "timing", "random_control", "baseline", "null_edit", "seed")
# (null_every is not among them: a reused firing brings its null KL, or nan where its run skipped it)


def reusable(reuse: Any, options: ReplacementOptions, layer: int, head: int, length: int,
              fingerprint: dict[str, str]) -> dict[tuple[int, int, int, float], tuple[dict[str, float], int]]:
    """(passage, position, atom, coefficient) → (KL per condition, random atom) of ``reuse``'s firings, after
    checking that they measure the same thing."""
    if reuse is None:
        return {}
    if type(reuse).__name__ != "ReplacementResult":
        raise ExperimentError(f"reuse= takes a ReplacementResult, got {type(reuse).__name__}.")
    differ = [k for k in _MEASUREMENT if getattr(reuse.options, k) != getattr(options, k)]
    if (reuse.layer, reuse.head) != (layer, head):
        differ.append(f"site (L{reuse.layer}H{reuse.head} vs L{layer}H{head})")
    if reuse.passage_length != length or reuse.fingerprint != fingerprint:
        differ.append("passages or SAE (their SHA256 differ)" if reuse.fingerprint else
                      "fingerprint (the earlier result records none: it was made before reuse= existed)")
    if differ:
        raise ExperimentError(f"reuse= holds a result measured differently ({', '.join(differ)}); rerun without "
                              "reuse= or pass a result of the same site, SAE, passages and measurement options.")
    kls = {"atom": reuse.kl_atom, "delete": reuse.kl_delete, "random": reuse.kl_random, "null": reuse.kl_null}
    if reuse.kl_flat_svd is not None:
        kls["flat_svd"] = reuse.kl_flat_svd
    keys = zip(reuse.passage, reuse.position, reuse.atom, reuse.coefficient, strict=True)
    return {key: ({k: float("nan") if v[i] is None else v[i] for k, v in kls.items()}, reuse.random_atom[i])
            for i, key in enumerate(keys)}  # (a skipped null comes back from JSON as None)
