"""SAE configuration: one dataclass, serialised to ``cfg.json`` beside the weights.

The config says *which* architecture to rebuild (``architecture`` is a key of the registry in
:mod:`writelens.sae.registry`) and every shape, so ``load_sae(dir)`` can rebuild the module before
reading the weights. Training-only knobs (learning rate, AuxK weight, ...) live in
:class:`writelens.sae.train.TrainConfig` and the per-call :class:`Objective`, not here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from writelens.errors import CheckpointError, SAEConfigError

CONFIG_FORMAT = "writelens-sae"
CONFIG_FORMAT_VERSION = 1
ACTIVATIONS = ("topk", "batchtopk", "jumprelu")


@dataclass
class SAEConfig:
    """Shapes and choices of one SAE (or of ``n_heads`` stacked independent SAEs).

    Attributes:
        architecture: registry name: ``"flat"``, ``"matrix"`` or ``"bilinear"``.
        d_k: key-side size of the state (rows of S).
        d_v: value-side size of the state (columns of S).
        n_features: dictionary size F.
        rank: rank r of each decoder atom (``matrix``, ``bilinear``) and of each bilinear encoder form.
        activation: ``"topk"`` (top-k of the pre-activations, then ReLU, so L0 <= k), ``"batchtopk"``
            (top k*B over the batch while training; a learned EMA threshold at inference) or
            ``"jumprelu"`` (learned per-feature threshold, straight-through gradients).
        k: active features per state for TopK / BatchTopK (ignored by JumpReLU except as a hint).
        tied: bilinear only: encoder factors are the decoder factors.
        center: subtract a stored mean state M before encoding and add it back after decoding.
        n_heads: ``None`` for one dictionary; an int H for H independent dictionaries held in one module
            (every parameter gets a leading head dim; inputs are [B, H, d_k, d_v]).
        jumprelu_bandwidth: width h of the rectangle kernel of the JumpReLU straight-through estimator.
        jumprelu_init_threshold: initial JumpReLU threshold theta (stored as log theta).
        batchtopk_threshold_decay: EMA decay of the BatchTopK inference threshold.
        metadata: provenance (model, model_config_sha256, layer, head, target, ...); experiments check it
            against the site they use the SAE on (:mod:`writelens.provenance`); other keys are free-form.
    """

    architecture: str
    d_k: int
    d_v: int
    n_features: int
    rank: int = 1
    activation: str = "topk"
    k: int = 32
    tied: bool = False
    center: bool = False
    n_heads: int | None = None
    jumprelu_bandwidth: float = 1e-3
    jumprelu_init_threshold: float = 1e-3
    batchtopk_threshold_decay: float = 0.99
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SAEConfigError` naming the bad field and a valid choice."""
        for name in ("d_k", "d_v", "n_features", "rank", "k"):
            value = getattr(self, name)
            if type(value).__name__.startswith(("int", "uint")) and hasattr(value, "item"):  # a numpy integer
                value = value.item()
                setattr(self, name, value)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SAEConfigError(f"SAEConfig.{name} must be a positive int, got {value!r}.")
        for name in ("tied", "center"):
            if not isinstance(getattr(self, name), bool):
                raise SAEConfigError(f"SAEConfig.{name} must be True or False, got {getattr(self, name)!r} (a string "
                                     "such as 'no' would count as True).")
        if not isinstance(self.architecture, str):
            raise SAEConfigError(f"SAEConfig.architecture must be a name such as 'bilinear', got {self.architecture!r}.")
        if not isinstance(self.metadata, dict):
            raise SAEConfigError(f"SAEConfig.metadata must be a dict (provenance: model, layer, head, ...), got "
                                 f"{type(self.metadata).__name__}.")
        for name in ("jumprelu_bandwidth", "jumprelu_init_threshold", "batchtopk_threshold_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SAEConfigError(f"SAEConfig.{name} must be a finite number, got {value!r}.")
        if self.activation not in ACTIVATIONS:
            raise SAEConfigError(
                f"SAEConfig.activation={self.activation!r} is unknown; use one of {ACTIVATIONS}."
            )
        if self.activation in ("topk", "batchtopk") and self.k > self.n_features:
            raise SAEConfigError(
                f"SAEConfig.k={self.k} exceeds n_features={self.n_features}; lower k or widen the dictionary."
            )
        if self.rank > min(self.d_k, self.d_v):
            raise SAEConfigError(
                f"SAEConfig.rank={self.rank} exceeds min(d_k, d_v)={min(self.d_k, self.d_v)}; atoms cannot "
                "have that rank."
            )
        bad_heads = not isinstance(self.n_heads, int) or isinstance(self.n_heads, bool) or self.n_heads < 1
        if self.n_heads is not None and bad_heads:
            raise SAEConfigError(f"SAEConfig.n_heads must be None or a positive int, got {self.n_heads!r}.")
        if self.jumprelu_bandwidth <= 0 or self.jumprelu_init_threshold <= 0:
            raise SAEConfigError("SAEConfig.jumprelu_bandwidth and jumprelu_init_threshold must be > 0.")
        if not 0.0 <= self.batchtopk_threshold_decay < 1.0:
            raise SAEConfigError("SAEConfig.batchtopk_threshold_decay must be in [0, 1).")

    @property
    def d_in(self) -> int:
        """Number of entries of one state, d_k * d_v."""
        return self.d_k * self.d_v

    @property
    def heads(self) -> int:
        """Number of stacked dictionaries (1 when ``n_heads`` is None)."""
        return 1 if self.n_heads is None else self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, "format_version": CONFIG_FORMAT_VERSION, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "cfg.json") -> SAEConfig:
        """Rebuild from :meth:`to_dict` output; a foreign or newer file raises :class:`CheckpointError`."""
        if not isinstance(data, dict) or data.get("format") != CONFIG_FORMAT:
            raise CheckpointError(
                f"{source} is not a writelens SAE config (no 'format': '{CONFIG_FORMAT}' key). If it is the "
                "paper's release (best.pt + config), load it with writelens.sae.reference.load_reference_sae."
            )
        version = data.get("format_version")
        if version != CONFIG_FORMAT_VERSION:
            raise CheckpointError(
                f"{source} has format_version {version!r}; this writelens reads version "
                f"{CONFIG_FORMAT_VERSION}. Upgrade writelens to read it."
            )
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key not in ("format", "format_version")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CheckpointError(f"{source} has unknown fields {unknown}; it was written by another writelens.")
        try:
            return cls(**values)
        except (TypeError, SAEConfigError) as exc:
            raise CheckpointError(f"{source} does not describe a valid SAE: {exc}") from exc

    def replace(self, **changes: Any) -> SAEConfig:
        """A copy with some fields changed (validated)."""
        data = asdict(self)
        data.update(changes)
        return SAEConfig(**data)


@dataclass(frozen=True)
class Objective:
    """Loss weights and dead-feature bookkeeping used by ``SAE.forward`` in training mode.

    Attributes:
        lambda_aux: weight of the AuxK loss (Gao et al. 2024 use 1/32; the reference code used 1.0).
        k_aux: number of dead features (top pre-activations among them) that reconstruct the residual.
        dead_window: a feature that has not fired for this many training steps counts as dead.
        lambda_sparsity: JumpReLU only: weight of the L0 penalty (straight-through to the thresholds).
        read_weighting: ``[H, d_k, d_k]`` matrix G of the read-aligned reconstruction loss ``tr(Eᵀ G E)``
            (:mod:`writelens.sae.objectives`); None: the plain MSE. AuxK keeps the plain MSE.
    """

    lambda_aux: float = 1.0 / 32.0
    k_aux: int = 256
    dead_window: int = 100
    lambda_sparsity: float = 1e-3
    read_weighting: Any = field(default=None, compare=False, repr=False)
