"""The training configuration (torch-free: the CLI builds ``writelens train``'s options from it without importing
torch). :mod:`writelens.sae.train` runs it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from writelens.errors import CheckpointError, SAEConfigError
from writelens.sae.config import Objective

__all__ = ["TrainConfig", "RESAMPLE_TARGETS"]

#: what a resampled feature can point at (``TrainConfig.resample_target``, :mod:`writelens.sae.resample`)
RESAMPLE_TARGETS = ("input", "residual")


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved as ``train_cfg.json`` and in every checkpoint).

    Attributes:
        lr, lr_min: peak learning rate and the floor of the cosine decay (an lr_min above lr is capped at lr: the
            schedule never rises above the lr asked for).
        warmup_steps: linear warmup from lr/warmup to lr (then cosine to ``lr_min`` at the last step).
        batch_size: global batch (split evenly across DDP ranks).
        steps / epochs: length of the run (``steps`` wins; default 20 epochs of the training split).
        seed: SAE init (when the trainer builds nothing, only data order and resampling), split, data order.
        val_fraction: share of *sequences* held out when no ``val_data`` is given (0: no validation).
        log_every / eval_every / checkpoint_every: cadences in steps (eval default: once per epoch;
            checkpoint default: at every eval). ``keep_checkpoints`` most recent are kept.
        lambda_aux, k_aux, dead_window: AuxK weight (1/32, Gao et al.), its feature count, and the number
            of steps without firing after which a feature counts as dead.
        lambda_sparsity: JumpReLU's L0 penalty weight.
        renorm_every: set decoder factors to unit norm every this many steps (0: never).
        project_decoder_grads: remove the gradient component parallel to each decoder factor.
        resample_every: resample dead features every this many steps (None: never).
        resample_target, resample_encoder_share: what a resampled feature points at ("input": the state, the
            default; "residual": its residual, the reference) and its encoder norm (None: unit, so that its
            pre-activation is its atom's least-squares coefficient; a number: that share of the live features'
            mean, the reference 0.2, which under TopK never lets it fire: see :mod:`writelens.sae.resample`).
            No resampling happens in the last ``resample_every`` steps: a re-pointed feature gets at least that
            many steps of training before the run ends.
        atom_init: "data": a fresh SAE's atoms start at distinct training states (their top factors, encoder =
            decoder), see :func:`~writelens.sae.resample.init_atoms_from_data`; "random": unit Gaussian factors
            (the reference); "auto" (default): "data" under plain MSE, "random" with ``read_weight`` > 0 (atoms
            started at whole states hold the unread structure the read-aligned loss must then remove: on the
            tests' planted read structure read-FVE 0.09 after 150 steps, against 0.47 from random atoms). Like
            ``init_from_data`` it applies when every bias is 0 (a fresh SAE): pass "random" to keep atoms you set
            yourself.
        dense_threshold: at each resample, features active on more than this share of the batch count as dead
            and are resampled too (None: only dead ones). Dense features are also counted in the log records
            (``n_dense``, on the batch) and in the evaluations (``val_n_dense``, ``val_n_bias_dominated``); the
            end of training warns (:class:`~writelens.errors.FeatureHealthWarning`) when any remain.
        init_from_data: on a fresh SAE (all biases 0), start the decoder bias at the training mean (``center``
            SAEs: their stored mean) and every encoder bias where the feature's pre-activation at that mean is
            ``encoder_bias_init``; resampled features are re-centred the same way. With both this and
            ``dense_threshold`` off the recipe is the reference's (zero biases), which on states with a large
            shared mean can grow a constant feature (see :mod:`writelens.sae.health`).
        encoder_bias_init: the pre-activation of every feature at the mean state after that init (0, or
            slightly negative).
        read_weight: weight w of the read-aligned loss ``tr(Eᵀ((1 − w) I + w M)E)`` (0: the plain MSE; needs
            ``read_metric=``, see :mod:`writelens.sae.objectives`). Logged MSE / FVE stay Frobenius.
        adam_betas, adam_eps: Adam settings (no weight decay; fused Adam where available).
        eval_batch_size, device, wandb_project (log to wandb if installed), progress (tqdm bar).
    """

    lr: float = 3e-4
    lr_min: float = 3e-5
    warmup_steps: int = 50
    batch_size: int = 256
    steps: int | None = None
    epochs: float | None = None
    seed: int = 42
    val_fraction: float = 0.2
    log_every: int = 50
    eval_every: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    lambda_aux: float = 1.0 / 32.0
    k_aux: int = 256
    dead_window: int = 100
    lambda_sparsity: float = 1e-3
    renorm_every: int = 1
    project_decoder_grads: bool = True
    resample_every: int | None = None
    resample_target: str = "input"
    resample_encoder_share: float | None = None
    atom_init: str = "auto"
    dense_threshold: float | None = 0.5
    init_from_data: bool = True
    encoder_bias_init: float = 0.0
    read_weight: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    eval_batch_size: int = 1024
    device: str = "cpu"
    wandb_project: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~writelens.errors.SAEConfigError` naming the first field outside its range (the ranges of
        ``writelens train``'s options: counts ≥ 1, rates > 0 and finite, shares in [0, 1], Adam betas in [0, 1))."""
        from writelens.validate import check_bool, check_choice, check_int, check_number

        err, name = SAEConfigError, lambda f: f"TrainConfig.{f}"
        for f in ("batch_size", "log_every", "keep_checkpoints", "dead_window", "eval_batch_size"):
            setattr(self, f, check_int(getattr(self, f), name(f), err, 1))
        for f in ("steps", "eval_every", "checkpoint_every"):
            setattr(self, f, check_int(getattr(self, f), name(f), err, 1, allow_none=True))
        for f in ("warmup_steps", "k_aux", "renorm_every", "seed"):
            setattr(self, f, check_int(getattr(self, f), name(f), err, 0))
        self.resample_every = check_int(self.resample_every, name("resample_every"), err, 0, allow_none=True)
        self.lr = check_number(self.lr, name("lr"), err, 0, lo_open=True)
        self.lr_min = check_number(self.lr_min, name("lr_min"), err, 0)
        self.epochs = check_number(self.epochs, name("epochs"), err, 0, lo_open=True, allow_none=True)
        self.val_fraction = check_number(self.val_fraction, name("val_fraction"), err, 0, 1, hi_open=True)
        for f in ("lambda_aux", "lambda_sparsity"):
            setattr(self, f, check_number(getattr(self, f), name(f), err, 0))
        self.dense_threshold = check_number(self.dense_threshold, name("dense_threshold"), err, 0, 1, lo_open=True,
                                            allow_none=True)
        self.resample_target = check_choice(self.resample_target, name("resample_target"), RESAMPLE_TARGETS, err)
        self.atom_init = check_choice(self.atom_init, name("atom_init"), ("auto", "data", "random"), err)
        self.resample_encoder_share = check_number(self.resample_encoder_share, name("resample_encoder_share"), err, 0,
                                                   lo_open=True, allow_none=True)
        self.encoder_bias_init = check_number(self.encoder_bias_init, name("encoder_bias_init"), err)
        self.read_weight = check_number(self.read_weight, name("read_weight"), err, 0, 1)
        self.adam_eps = check_number(self.adam_eps, name("adam_eps"), err, 0, lo_open=True)
        betas = tuple(self.adam_betas) if isinstance(self.adam_betas, (tuple, list)) else None
        if betas is None or len(betas) != 2:
            raise err(f"TrainConfig.adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}.")
        self.adam_betas = tuple(check_number(b, name("adam_betas"), err, 0, 1, hi_open=True) for b in betas)
        for f in ("project_decoder_grads", "init_from_data", "progress"):
            check_bool(getattr(self, f), name(f), err)
        if not isinstance(self.device, str):
            raise err(f"TrainConfig.device must be a device string such as 'cpu' or 'cuda', got {self.device!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "adam_betas": list(self.adam_betas)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"train config has unknown fields {unknown}; it was written by another writelens.")
        return cls(**{**data, "adam_betas": tuple(data.get("adam_betas", (0.9, 0.999)))})

    @property
    def atoms_from_data(self) -> bool:
        """Whether a fresh SAE's atoms start at training states (``atom_init``, "auto" resolved)."""
        return self.atom_init == "data" or (self.atom_init == "auto" and self.read_weight == 0)

    @property
    def objective(self) -> Objective:
        return Objective(self.lambda_aux, self.k_aux, self.dead_window, self.lambda_sparsity)
