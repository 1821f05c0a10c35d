"""The SAE trainer: fused Adam, warmup + cosine schedule, AuxK, decoder constraints, resampling, seeded data
order, JSONL logs, safetensors checkpoints and exact resumption, and DDP under ``torchrun``.

    sae = BilinearSAE(d_k=128, d_v=128, n_features=2048, k=32, n_heads=16)   # a dictionary per head
    data = StateDataset.from_shards("states/", layer=9, heads=range(16))
    result = train_sae(sae, data, TrainConfig(steps=2000), out_dir="runs/L9")

Resuming: calling it again with the same ``out_dir`` continues the same run (same data order, optimizer and
RNG state) from the last checkpoint; the result equals an uninterrupted run. Under ``torchrun`` with an
initialised process group every rank takes its share of each global batch; gradients are averaged by DDP
and firing statistics all-reduced, so every rank holds identical weights.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from writelens.errors import (
    CheckpointError,
    FeatureHealthWarning,
    NonFiniteError,
    SAEConfigError,
    TrainingQualityWarning,
)
from writelens.sae.base import SAE
from writelens.sae.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from writelens.sae.data import StateDataset
from writelens.sae.files import atomic_write_bytes, save_sae
from writelens.sae.finite import check_finite_tensors
from writelens.sae.health import FeatureHealth, feature_health, init_biases_from_data
from writelens.sae.metrics import EvalMetrics, evaluate_sae
from writelens.sae.objectives import ReadMetric, training_weighting
from writelens.sae.resample import init_atoms_from_data, resample_dead_features
from writelens.sae.train_config import TrainConfig
from writelens.validate import check_device

RESUMABLE_CHANGES = {"progress", "device", "wandb_project", "eval_batch_size"}


@dataclass
class TrainResult:
    """What :func:`train_sae` returns. ``history`` holds the logged records (also in ``train_log.jsonl``);
    ``health`` the per-feature firing statistics at the end (validation split, else a training sample) and
    ``warnings`` one line per problem found there (dense or bias-dominated features), also warned and logged."""

    sae: SAE
    steps: int
    final_val: EvalMetrics | None
    best_val: EvalMetrics | None
    history: list[dict[str, Any]]
    out_dir: Path | None
    health: FeatureHealth | None = None
    warnings: list[str] = field(default_factory=list)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup over ``warmup_steps`` (never 0), then cosine decay to ``min(lr_min, lr)`` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(total_steps - 1 - cfg.warmup_steps, 1)
    floor = min(cfg.lr_min, cfg.lr)  # an lr_min above lr would make the "decay" rise above the lr asked for
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _make_adam(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    try:
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)


class Trainer:
    """Trains one (possibly stacked) SAE. See :func:`train_sae` and the module doc."""

    def __init__(self, sae: SAE, train_data: StateDataset, cfg: TrainConfig | None = None, *,
                 val_data: StateDataset | None = None, out_dir: str | Path | None = None, resume: bool = True,
                 callbacks: Sequence[Callable[[Trainer], None]] = (), read_metric: ReadMetric | None = None) -> None:
        self.cfg = cfg = cfg or TrainConfig()
        if not isinstance(cfg, TrainConfig):
            raise SAEConfigError(f"cfg must be a TrainConfig, got {type(cfg).__name__}.")
        if isinstance(train_data, torch.Tensor):
            train_data = StateDataset.from_tensor(train_data)  # a tensor of states is accepted as in-memory data
        if not isinstance(train_data, StateDataset):
            raise SAEConfigError(f"train_data must be a StateDataset (or a tensor of states [N, d_k, d_v]), got "
                                 f"{type(train_data).__name__}; use StateDataset.from_shards / from_tensor.")
        check_device(cfg.device, "TrainConfig.device")
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        if cfg.batch_size % self.world_size:
            raise SAEConfigError(f"batch_size {cfg.batch_size} is not divisible by the {self.world_size} ranks.")
        if val_data is None and cfg.val_fraction > 0:
            train_data, val_data = train_data.split(cfg.val_fraction, cfg.seed)
        self.train_data, self.val_data = train_data, val_data
        for key, value in train_data.provenance.items():  # the SAE records where its data came from
            sae.cfg.metadata.setdefault(key, value)
        expected = (*sae.head_shape, sae.cfg.d_k, sae.cfg.d_v)
        if train_data.state_shape != expected:
            raise SAEConfigError(
                f"the data holds states shaped {train_data.state_shape} but the SAE expects {expected}; build a "
                "stacked SAE (n_heads) for several heads, or load one head."
            )
        self.sae = sae.to(cfg.device)
        self.device = torch.device(cfg.device)
        self.optimizer = _make_adam(self.sae.parameters(), cfg)
        per_epoch = train_data.batches_per_epoch(cfg.batch_size)
        if per_epoch == 0:
            raise SAEConfigError(f"batch_size {cfg.batch_size} exceeds the {len(train_data)} training states.")
        self.batches_per_epoch = per_epoch
        self.total_steps = cfg.steps if cfg.steps is not None else math.ceil((cfg.epochs or 20) * per_epoch)
        self.eval_every = cfg.eval_every or per_epoch
        self.checkpoint_every = cfg.checkpoint_every or self.eval_every
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.callbacks = list(callbacks)
        self.step = 0
        self.resampled_since_log = 0
        self.best_val_mse = math.inf
        self.best_val: EvalMetrics | None = None
        self.history: list[dict[str, Any]] = []
        self.out_dir = Path(out_dir) if out_dir is not None else None
        fresh = not bool(sae.b_enc.detach().abs().sum() > 0) and not bool(sae.b_dec.detach().abs().sum() > 0)
        has_mean = sae.cfg.center and bool(sae.mean.abs().sum() > 0)  # a mean the caller set is kept
        centre = None
        if fresh and (cfg.atoms_from_data or cfg.init_from_data):
            centre = sae.mean if has_mean else train_data.mean()
            if cfg.atoms_from_data:  # atoms first: the bias init centres the encoder they start with
                init_atoms_from_data(sae, train_data.fetch, len(train_data), centre,
                                     torch.Generator().manual_seed(cfg.seed + 1))
            if cfg.init_from_data:
                init_biases_from_data(sae, centre, cfg.encoder_bias_init)
        if sae.cfg.center and not bool(sae.mean.abs().sum() > 0):
            sae.set_mean(centre if centre is not None else train_data.mean())
        if self.out_dir is not None:
            self._prepare_out_dir(resume)
        weighting = training_weighting(read_metric, cfg.read_weight, sae.head_shape, sae.cfg.d_k, self.out_dir,
                                       resumed=self.step > 0)
        self.objective = replace(cfg.objective, read_weighting=weighting)
        self.sae.sync_statistics = self.distributed
        self.model = self.sae
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.sae, broadcast_buffers=False)

    # ---- run directory, resume -----------------------------------------------------------------------------

    @functools.cached_property
    def data_fingerprint(self) -> str:
        """:meth:`StateDataset.fingerprint` of the training data (recorded in checkpoints, checked on resume)."""
        return self.train_data.fingerprint()

    def _prepare_out_dir(self, resume: bool) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.out_dir / "train_cfg.json"
        folder = latest_checkpoint(self.out_dir / "checkpoints") if resume else None
        if folder is not None:
            state, rng = load_checkpoint(folder, self.sae, self.optimizer)
            saved = TrainConfig.from_dict(state["train_cfg"])
            changed = [f.name for f in fields(TrainConfig) if getattr(saved, f.name) != getattr(self.cfg, f.name)]
            if set(changed) - RESUMABLE_CHANGES:
                raise CheckpointError(
                    f"{self.out_dir} holds a run with another TrainConfig (fields {sorted(set(changed) - RESUMABLE_CHANGES)} "
                    "differ); resume it with the same config, use a fresh out_dir, or pass resume=False."
                )
            if state.get("data_fingerprint") not in (None, self.data_fingerprint):
                raise CheckpointError(
                    f"{self.out_dir} holds a run trained on other data (fingerprint {state['data_fingerprint'][:12]}… "
                    f"vs this data's {self.data_fingerprint[:12]}…); resume on the same data, use a fresh out_dir, "
                    "or pass resume=False.")
            self.step = state["step"]
            self.best_val_mse = state.get("best_val_mse", math.inf)
            self.resampled_since_log = state.get("resampled_since_log", 0)
            self.generator.set_state(rng["trainer_generator"])
            torch.set_rng_state(rng["torch_cpu"])
        if self.rank == 0:
            atomic_write_bytes(cfg_path, json.dumps(self.cfg.to_dict(), indent=2).encode())
            self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log records past the resumed step, so the log equals an uninterrupted run's."""
        path = self.out_dir / "train_log.jsonl"
        if not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= self.step]
        atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode())
        self.history = [json.loads(line) for line in kept]

    def save_checkpoint(self) -> Path | None:
        if self.out_dir is None or self.rank != 0:
            return None
        check_finite_tensors(dict(self.sae.named_parameters()), f"the SAE after step {self.step}", "training "
                             "diverged and this checkpoint is not written (the last good one is kept); lower lr")
        state = {"train_cfg": self.cfg.to_dict(), "best_val_mse": self.best_val_mse,
                 "data_fingerprint": self.data_fingerprint,
                 "resampled_since_log": self.resampled_since_log}
        rng = {"trainer_generator": self.generator.get_state(), "torch_cpu": torch.get_rng_state()}
        return save_checkpoint(self.out_dir / "checkpoints", self.step, self.sae, self.optimizer, state, rng,
                               keep=self.cfg.keep_checkpoints)

    # ---- one step ------------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, Any] | None:
        """One optimizer step on the next batch; returns the log record when this step is logged."""
        cfg, step = self.cfg, self.step
        batch = self.train_data.batch(step, cfg.batch_size, cfg.seed, self.rank, self.world_size).to(self.device)
        self.model.train()
        out = self.model(batch, self.objective)
        if not bool(torch.isfinite(out.losses.total.detach())):
            kept = latest_checkpoint(self.out_dir / "checkpoints") if self.out_dir is not None else None
            raise NonFiniteError(
                f"the training loss is {float(out.losses.total)} at step {step} (lr {lr_at(step, cfg, self.total_steps):.3g}); "
                f"training stopped. Last good checkpoint: {kept or 'none (no out_dir, or none saved yet)'}. Lower lr "
                "or check the data, then resume from it.")
        self.optimizer.zero_grad(set_to_none=True)
        out.losses.total.backward()
        if cfg.project_decoder_grads:
            self.sae.project_decoder_grads()
        lr = lr_at(step, cfg, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        if cfg.renorm_every and (step + 1) % cfg.renorm_every == 0:
            self.sae.normalize_decoder()
        every = cfg.resample_every
        if every and (step + 1) % every == 0 and step + 1 + every <= self.total_steps:  # never in the last interval
            full_batch = self.train_data.batch(step, cfg.batch_size, cfg.seed).to(self.device)
            self.resampled_since_log += resample_dead_features(
                self.sae, full_batch, self.optimizer, self.generator, cfg.dead_window, cfg.dense_threshold,
                centre_biases=cfg.init_from_data, target=cfg.resample_target,
                encoder_share=cfg.resample_encoder_share,
            )
        self.step += 1
        if self.step % cfg.log_every and self.step != self.total_steps:
            return None
        record = self._record(batch, out, lr, self.resampled_since_log)
        self.resampled_since_log = 0
        return record

    @torch.no_grad()
    def _record(self, batch, out, lr: float, resampled: int) -> dict[str, Any]:
        x = batch.double().reshape(batch.shape[0], -1)
        err = (out.recon.double().reshape_as(x) - x).pow(2).sum()
        variance = (x - x.mean(0)).pow(2).sum().clamp_min(1e-300)
        return {
            "step": self.step,
            "epoch": self.step / self.batches_per_epoch,
            "lr": lr,
            "loss": float(out.losses.total),
            "mse": float(out.losses.mse.mean()),
            "aux": float(out.losses.aux.mean()),
            "sparsity": float(out.losses.sparsity.mean()),
            "nmse": float(err / x.pow(2).sum().clamp_min(1e-300)),
            "fve": float(1 - err / variance),
            "l0": float((out.codes > 0).sum(-1).double().mean()),
            "dead_fraction": float(self.sae.dead_mask(self.cfg.dead_window).double().mean()),
            "n_dense": int(((out.codes.reshape(batch.shape[0], -1) > 0).double().mean(0)
                            > (self.cfg.dense_threshold or 0.5)).sum()),
            "resampled": resampled,
        }

    def evaluate(self) -> EvalMetrics | None:
        if self.val_data is None or len(self.val_data) == 0:
            return None
        return evaluate_sae(self.sae, self.val_data, self.cfg.eval_batch_size, self.device)

    # ---- the loop ------------------------------------------------------------------------------------------

    def run(self, until_step: int | None = None) -> TrainResult:
        """Train to ``total_steps`` (or stop after ``until_step``, checkpointing there)."""
        stop = min(self.total_steps, until_step) if until_step is not None else self.total_steps
        wandb = self._start_wandb()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.cfg.progress or self.rank != 0,
                   desc=f"{self.sae.cfg.architecture} SAE")
        final_val = None
        started, start_step = time.perf_counter(), self.step
        while self.step < stop:
            record = self.train_step()
            bar.update(1)
            if self.step % self.eval_every == 0 or self.step == self.total_steps:
                final_val = self._evaluate_and_keep_best(record)
            if record is not None and self.rank == 0:
                record["states_per_s"] = (self.step - start_step) * self.cfg.batch_size / (time.perf_counter() - started)
                self._log(record, wandb)
                bar.set_postfix(mse=f"{record['mse']:.3e}", fve=f"{record['fve']:.3f}", l0=f"{record['l0']:.1f}")
            if self.step % self.checkpoint_every == 0 or self.step == stop:
                self.save_checkpoint()
            for callback in self.callbacks:
                callback(self)
        bar.close()
        health, problems = None, []
        if self.step == self.total_steps and self.rank == 0:
            health, problems = self._check_health(final_val)
            problems += self._check_quality(final_val)
            if self.out_dir is not None:
                save_sae(self.sae, self.out_dir / "final")
        if wandb is not None:
            wandb.finish()
        return TrainResult(self.sae, self.step, final_val, self.best_val, self.history, self.out_dir, health, problems)

    def _check_health(self, final_val: EvalMetrics | None) -> tuple[FeatureHealth, list[str]]:
        """Feature health at the end (the last evaluation's, else on up to 4,096 training states); a warning,
        and a ``warning`` line in the last log record, when dense or bias-dominated features remain."""
        threshold = self.cfg.dense_threshold or 0.5
        health = final_val.health if final_val is not None and final_val.health is not None else None
        if health is None:
            n = min(len(self.train_data), 4096)
            sample = self.train_data.batch(0, n, self.cfg.seed) if n else None
            if sample is None:
                return None, []
            health = feature_health(self.sae, sample.to(self.device), self.cfg.eval_batch_size, threshold)
        line = health.warning()
        if line is None:
            return health, []
        warnings.warn(line, FeatureHealthWarning, stacklevel=3)
        if self.history:
            self.history[-1]["warning"] = line
        return health, [line]

    MIN_FVE: ClassVar[float] = 0.3  # below this the final FVE is warned about
    MIN_STATES_PER_FEATURE: ClassVar[int] = 20  # a budget below this many training states per feature is warned about

    def _check_quality(self, final_val: EvalMetrics | None) -> list[str]:
        """Warnings (:class:`TrainingQualityWarning`) for a final FVE below :attr:`MIN_FVE` (validation, else the
        last training record) and a budget below :attr:`MIN_STATES_PER_FEATURE` states per feature."""
        lines = []
        fve = final_val.fve if final_val is not None else (self.history[-1]["fve"] if self.history else None)
        fve = None if fve is None else float(min(fve) if isinstance(fve, (list, tuple)) else fve)
        if fve is not None and fve < self.MIN_FVE:
            lines.append(f"the SAE ends training at FVE {fve:.3f} ({'validation' if final_val else 'training batch'}; "
                         f"< {self.MIN_FVE}): it explains little of the states; train longer (steps), on more "
                         "states, or with fewer features before running experiments on it.")
        seen = self.total_steps * self.cfg.batch_size
        n_features = self.sae.cfg.n_features
        if seen < self.MIN_STATES_PER_FEATURE * n_features:
            lines.append(f"the training budget is {seen:,} states ({self.total_steps} steps x {self.cfg.batch_size}) "
                         f"for {n_features:,} features: {seen / n_features:.1f} per feature (< "
                         f"{self.MIN_STATES_PER_FEATURE}); raise steps or lower n_features.")
        for line in lines:
            warnings.warn(line, TrainingQualityWarning, stacklevel=3)
        if lines and self.history:
            self.history[-1]["warning"] = " ".join(filter(None, [self.history[-1].get("warning"), *lines]))
        return lines

    def _evaluate_and_keep_best(self, record: dict[str, Any] | None) -> EvalMetrics | None:
        if self.rank != 0:
            return None
        metrics = self.evaluate()
        if metrics is None:
            return None
        if record is not None:
            record.update(metrics.to_dict("val_"))
        else:
            self._log({"step": self.step, **metrics.to_dict("val_")}, None)
        if metrics.mse < self.best_val_mse:
            self.best_val_mse, self.best_val = metrics.mse, metrics
            if self.out_dir is not None:
                save_sae(self.sae, self.out_dir / "best")
        return metrics

    def _log(self, record: dict[str, Any], wandb) -> None:
        self.history.append(record)
        if self.out_dir is not None:
            with open(self.out_dir / "train_log.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if wandb is not None:
            wandb.log(record, step=record["step"])

    def _start_wandb(self):
        if not self.cfg.wandb_project or self.rank != 0:
            return None
        try:
            import wandb
        except ImportError:
            return None
        wandb.init(project=self.cfg.wandb_project, config={"train": self.cfg.to_dict(), "sae": self.sae.cfg.to_dict()})
        return wandb


def train_sae(sae: SAE, train_data: StateDataset, cfg: TrainConfig | None = None, *, val_data: StateDataset | None = None,
              out_dir: str | Path | None = None, resume: bool = True,
              callbacks: Sequence[Callable[[Trainer], None]] = (), read_metric: ReadMetric | None = None) -> TrainResult:
    """Train ``sae`` on ``train_data`` (a :class:`StateDataset`, or a tensor of states ``[N, (H,) d_k, d_v]`` wrapped
    with ``StateDataset.from_tensor``; see :class:`Trainer`); resumes from ``out_dir`` when it holds a run.
    ``read_metric``: the heads' query second moment, for ``cfg.read_weight > 0``."""
    return Trainer(sae, train_data, cfg, val_data=val_data, out_dir=out_dir, resume=resume, callbacks=callbacks,
                   read_metric=read_metric).run()
