"""The method's experiments: each is a function with a typed options dataclass and a typed result dataclass that
records the options and seeds and has ``.to_json()`` / ``.from_json()`` / ``.summary()``.

=================================  ===================================================================================
``replacement_test``               atom vs delete vs random rank-1 substitution of the native write (per-firing KL)
``attribution``                    closed-form logit attribution (three-factor, exact in-layer) vs measured change
``slot_erasure``                   erase one feature's slot; preferred token chosen on a disjoint selection half
``install_steering``               install ``W_O^hᵀ W_U[T]`` at 3 positions, greedy decode, strata by native rank
``feature_amplification``          push property-selected features during sampling, matched random control
``feature_card``                   top contexts, activation histogram and promoted tokens of one feature
=================================  ===================================================================================

Statistics live in :mod:`writelens.experiments.stats`; null-edit noise floors (ties, the floor warning) in
:mod:`writelens.experiments.floor`; plots in :mod:`writelens.plot`.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ReplacementOptions": "replacement", "ReplacementResult": "replacement", "replacement_test": "replacement",
    "replacement_stats": "replacement",
    "AttributionOptions": "logit_attribution", "AttributionResult": "logit_attribution",
    "attribution": "logit_attribution",
    "ErasureOptions": "erasure", "ErasureResult": "erasure", "slot_erasure": "erasure",
    "InstallOptions": "install", "InstallResult": "install", "install_steering": "install",
    "AmplifyOptions": "amplify", "AmplifyResult": "amplify", "feature_amplification": "amplify",
    "tokens_matching": "amplify",
    "FeatureCard": "features", "feature_card": "features",
    "NoiseFloor": "floor",
    "stats": None, "common": None, "base": None, "floor": None,
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'writelens.experiments' has no attribute {name!r}")
    module = _LAZY[name]
    value = (importlib.import_module(f"writelens.experiments.{name}") if module is None
             else getattr(importlib.import_module(f"writelens.experiments.{module}"), name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
