"""The common SAE base class: encode / decode / forward / atoms, dead tracking, AuxK, decoder norms.

Subclasses (one file each: ``flat.py``, ``matrix.py``, ``bilinear.py``) only say how pre-activations are
computed (for all features, and for selected ones with gradients) and how selected atoms are decoded.
Internally every tensor carries a leading head dim H (1 for a single SAE); parameters of a stacked SAE
(``cfg.n_heads = H``) have that dim for real, those of a single SAE do not (``dec_k`` is ``(F, r, d_k)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from writelens.errors import SAEConfigError, SAEInputError
from writelens.sae.activations import Selection, build_activation
from writelens.sae.config import Objective, SAEConfig
from writelens.sae.files import save_sae
from writelens.sae.finite import as_real_tensor, check_finite_rows
from writelens.sae.objectives import weighted_squared_error
from writelens.sae.outputs import Atoms, SAELosses, SAEOutput, SparseCodes
from writelens.sae.sparse import check_sparse_codes, gather_features
from writelens.validate import as_int

SHARED_BUFFERS = ("activation.threshold_updates",)


#: ``from_pretrained`` and ``push_to_hub`` of :mod:`writelens.sae.io`, handed down when io is imported (the package
#: ``writelens.sae`` imports it before handing out any SAE class): this module stays below io and the registry.
PERSISTENCE: dict[str, Callable[..., Any]] = {}


def _persistence(name: str) -> Callable[..., Any]:
    try:
        return PERSISTENCE[name]
    except KeyError:
        raise SAEConfigError(
            f"SAE.{name} needs writelens.sae.io, which is not imported; take the class from the package "
            "(`from writelens.sae import BilinearSAE`) or `import writelens.sae.io` first."
        ) from None


class SAE(nn.Module):
    """Base class of every writelens SAE. Build one with ``FlatSAE(cfg)``, ``MatrixSAE(cfg)``,
    ``BilinearSAE(cfg)`` or :func:`writelens.sae.build_sae`; load one with :func:`writelens.load_sae`.

    Inputs are states ``[..., d_k, d_v]`` (``[..., H, d_k, d_v]`` when stacked); any leading dims are kept.
    """

    architecture: ClassVar[str] = ""

    def __init__(self, cfg: SAEConfig | None = None, *, seed: int | None = None, **fields: Any) -> None:
        """Build from a config, or from config fields: ``BilinearSAE(d_k=64, d_v=64, n_features=2048, k=32)``."""
        super().__init__()
        if cfg is None:
            cfg = SAEConfig(architecture=self.architecture, **fields)
        elif fields:
            cfg = cfg.replace(**fields)
        if cfg.architecture != self.architecture:
            raise SAEConfigError(
                f"{type(self).__name__} is architecture {self.architecture!r} but the config says "
                f"{cfg.architecture!r}; build it with writelens.sae.build_sae(cfg)."
            )
        cfg.validate()
        self.cfg = cfg
        self.head_shape: tuple[int, ...] = () if cfg.n_heads is None else (cfg.n_heads,)
        self.activation = build_activation(cfg)
        self.b_enc = nn.Parameter(torch.zeros(*self.head_shape, cfg.n_features))
        self.b_dec = nn.Parameter(torch.zeros(*self.head_shape, cfg.d_k, cfg.d_v))
        self.register_buffer("steps_since_active", torch.zeros(*self.head_shape, cfg.n_features, dtype=torch.long))
        if cfg.center:
            self.register_buffer("mean", torch.zeros(*self.head_shape, cfg.d_k, cfg.d_v))
        self.sync_statistics = False  # set by the trainer under DDP: all-reduce firing / threshold stats
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            self._init_parameters(generator)

    # ---- hooks each architecture implements (tensors in head-leading layout) -------------------------------

    def _init_parameters(self, generator: torch.Generator | None) -> None:
        raise NotImplementedError

    def _preacts(self, states: Float[Tensor, "H B dk dv"]) -> Float[Tensor, "H B F"]:
        """Pre-activations of every feature (called under ``no_grad``)."""
        raise NotImplementedError

    def _preacts_at(self, states: Float[Tensor, "H B dk dv"], indices: Int[Tensor, "H B m"]) -> Tensor:
        """Pre-activations ``[H, B, m]`` of the selected features, differentiable."""
        raise NotImplementedError

    def _decode(self, values: Float[Tensor, "H B m"], indices: Int[Tensor, "H B m"]) -> Tensor:
        """``sum_j values_j * atom_{indices_j}`` as ``[H, B, d_k, d_v]`` (no bias, no mean)."""
        raise NotImplementedError

    def decoder_factors(self) -> list[tuple[nn.Parameter, int]]:
        """Decoder parameters and how many trailing dims form one unit-norm factor (1 for a vector factor,
        2 for a FlatSAE atom matrix); these are renormalised and gradient-projected."""
        raise NotImplementedError

    def feature_parameters(self) -> list[nn.Parameter]:
        """Every parameter with a feature axis right after the head dims (for resampling)."""
        raise NotImplementedError

    def _atom_factors(self, head: int, indices: Int[Tensor, " n"]) -> tuple[Tensor, Tensor]:
        """Raw decoder factors ``(key [n, r, d_k], value [n, r, d_v])`` of some features of one head."""
        raise NotImplementedError

    def _encoder_scale(self, head: int, live: Bool[Tensor, " F"]) -> Tensor:
        """A typical encoder norm of the live features of one head (resampling scale)."""
        raise NotImplementedError

    def _reinit_features(self, head: int, features: Tensor, targets: Float[Tensor, "n dk dv"], scale: Tensor):
        """Point ``features`` at ``targets`` ``[n, d_k, d_v]``: decoder = their top singular factors (FlatSAE: the
        unit matrix), encoder = the same direction with norm ``scale`` (bilinear: the form's norm)."""
        raise NotImplementedError

    # ---- layout helpers ------------------------------------------------------------------------------------

    @property
    def stacked(self) -> bool:
        return self.cfg.n_heads is not None

    def heads_first(self, tensor: Tensor) -> Tensor:
        """A parameter or buffer with the head dim in front (``unsqueeze(0)`` for a single SAE)."""
        return tensor if self.stacked else tensor.unsqueeze(0)

    def _to_heads(self, states: Tensor) -> tuple[torch.Size, Float[Tensor, "H B dk dv"]]:
        states = as_real_tensor(states, "states")
        tail = (*self.head_shape, self.cfg.d_k, self.cfg.d_v)
        if tuple(states.shape[-len(tail) :]) != tail or states.dim() < len(tail):
            raise SAEInputError(
                f"expected states shaped [..., {', '.join(map(str, tail))}] for this SAE, got {tuple(states.shape)}."
            )
        lead = states.shape[: states.dim() - len(tail)]
        flat = states.reshape(-1, *tail).to(self.b_dec.dtype)
        check_finite_rows(flat, "the states given to this SAE", "drop or repair those rows first")
        return lead, flat.transpose(0, 1) if self.stacked else flat.unsqueeze(0)

    def _codes_to_heads(self, codes: Tensor) -> tuple[torch.Size, Float[Tensor, "H B F"]]:
        codes = as_real_tensor(codes, "codes")
        check_finite_rows(codes.reshape(-1, codes.shape[-1]) if codes.dim() else codes.reshape(1, 1), "the codes "
                          "given to decode", "drop or repair those rows first")
        tail = (*self.head_shape, self.cfg.n_features)
        if tuple(codes.shape[-len(tail) :]) != tail:
            raise SAEInputError(f"expected codes shaped [..., {', '.join(map(str, tail))}], got {tuple(codes.shape)}.")
        lead = codes.shape[: codes.dim() - len(tail)]
        flat = codes.reshape(-1, *tail).to(self.b_dec.dtype)
        return lead, flat.transpose(0, 1) if self.stacked else flat.unsqueeze(0)

    def _from_heads(self, lead: torch.Size, tensor: Tensor) -> Tensor:
        tensor = tensor.transpose(0, 1) if self.stacked else tensor[0]
        return tensor.reshape(*lead, *tensor.shape[1:])

    def _input_offset(self) -> Tensor | None:
        return self.heads_first(self.mean) if self.cfg.center else None

    def _output_offset(self) -> Float[Tensor, "H dk dv"]:
        offset = self.heads_first(self.b_dec)
        return offset + self.heads_first(self.mean) if self.cfg.center else offset

    # ---- encode / decode -----------------------------------------------------------------------------------

    #: True when recomputing pre-activations at the selected features is cheap (bilinear encoder); dense
    #: encoders instead keep the full pre-activations with gradients and gather from them.
    recompute_selected: ClassVar[bool] = True

    def _encode_heads(self, states: Float[Tensor, "H B dk dv"]):
        """Detached pre-acts, the selection, the selected pre-acts (with grad), the coefficients, and a
        function giving differentiable pre-acts at any other indices (for AuxK)."""
        offset = self._input_offset()
        centred = states - offset[:, None] if offset is not None else states
        grad = torch.is_grad_enabled()
        if grad and not self.recompute_selected:
            full = self._preacts(centred)
            pre = full.detach()

            def preacts_at(indices: Tensor) -> Tensor:
                return full.gather(-1, indices)
        else:
            with torch.no_grad():
                pre = self._preacts(centred)

            def preacts_at(indices: Tensor) -> Tensor:
                return self._preacts_at(centred, indices) if grad else pre.gather(-1, indices)

        selection = self.activation.select(pre)
        pre_selected = preacts_at(selection.indices)
        values = self.activation.activate(pre_selected, selection)
        return pre, selection, pre_selected, values, preacts_at

    def encode_sparse(self, states: Float[Tensor, "... dk dv"]) -> SparseCodes:
        """Coefficients of each state as :class:`SparseCodes` ``[..., (H), m]``."""
        lead, heads = self._to_heads(states)
        _, selection, _, values, _ = self._encode_heads(heads)
        return SparseCodes(self._from_heads(lead, values), self._from_heads(lead, selection.indices))

    def encode(self, states: Float[Tensor, "... dk dv"]) -> Float[Tensor, "... F"]:
        """Dense coefficients ``[..., (H), F]`` of states ``[..., (H), d_k, d_v]``."""
        return self.encode_sparse(states).to_dense(self.cfg.n_features)

    def decode_sparse(self, codes: SparseCodes) -> Float[Tensor, "... dk dv"]:
        """States ``[..., (H), d_k, d_v]`` from :class:`SparseCodes` (bias and mean included)."""
        check_sparse_codes(codes, self.cfg.n_features)
        lead, values = self._codes_to_heads_sparse(codes.values)
        _, indices = self._codes_to_heads_sparse(codes.indices)
        return self._from_heads(lead, self._decode(values, indices) + self._output_offset()[:, None])

    def _codes_to_heads_sparse(self, tensor: Tensor) -> tuple[torch.Size, Tensor]:
        lead = tensor.shape[: tensor.dim() - 1 - len(self.head_shape)]
        flat = tensor.reshape(-1, *self.head_shape, tensor.shape[-1])
        return lead, flat.transpose(0, 1) if self.stacked else flat.unsqueeze(0)

    def decode(self, codes: Float[Tensor, "... F"]) -> Float[Tensor, "... dk dv"]:
        """States ``[..., (H), d_k, d_v]`` from dense codes ``[..., (H), F]`` (only nonzeros are decoded)."""
        lead, heads = self._codes_to_heads(codes)
        width = max(int((heads != 0).sum(-1).max().item()) if heads.numel() else 0, 1)
        indices = torch.topk(heads.detach().abs(), width, dim=-1).indices
        recon = self._decode(heads.gather(-1, indices), indices) + self._output_offset()[:, None]
        return self._from_heads(lead, recon)

    # ---- forward -------------------------------------------------------------------------------------------

    def forward(self, states: Float[Tensor, "... dk dv"], objective: Objective | None = None) -> SAEOutput:
        """Encode, decode and compute the losses. In training mode also updates dead-feature counters and
        activation statistics and adds the AuxK (and JumpReLU L0) terms; see :class:`SAELosses`."""
        objective = objective or Objective()
        lead, heads = self._to_heads(states)
        pre, selection, pre_selected, values, preacts_at = self._encode_heads(heads)
        recon = self._decode(values, selection.indices) + self._output_offset()[:, None]
        error = recon - heads
        if objective.read_weighting is None:
            mse = error.pow(2).mean(dim=(1, 2, 3))
        else:
            mse = weighted_squared_error(error, self._checked_weighting(objective.read_weighting, heads))
        aux = torch.zeros_like(mse)
        sparsity = torch.zeros_like(mse)
        if self.training:
            dead = self._track_dead(values, selection, objective.dead_window)
            if objective.lambda_aux > 0 and objective.k_aux > 0:
                aux = self._aux_loss(preacts_at, pre, -error.detach(), dead, objective.k_aux)
            penalty = self.activation.sparsity_penalty(pre_selected, selection)
            if penalty is not None:
                sparsity = penalty
            self.activation.update_statistics(values, selection, self.sync_statistics)
        total = (mse + objective.lambda_aux * aux + objective.lambda_sparsity * sparsity).sum()
        squeeze = (lambda t: t) if self.stacked else (lambda t: t[0])
        return SAEOutput(
            recon=self._from_heads(lead, recon),
            codes=self._from_heads(lead, SparseCodes(values, selection.indices).to_dense(self.cfg.n_features)),
            sparse_codes=SparseCodes(self._from_heads(lead, values), self._from_heads(lead, selection.indices)),
            pre_acts=self._from_heads(lead, pre),
            losses=SAELosses(total, squeeze(mse), squeeze(aux), squeeze(sparsity)),
        )

    def _checked_weighting(self, weighting: Tensor, heads: Tensor) -> Tensor:
        n_heads, d_k = heads.shape[0], heads.shape[2]
        if weighting.shape != (n_heads, d_k, d_k):
            raise SAEInputError(f"the read weighting is {tuple(weighting.shape)}; this SAE needs [{n_heads}, {d_k}, "
                                f"{d_k}] (one d_k x d_k matrix per head of the SAE).")
        return weighting.to(device=heads.device)

    @torch.no_grad()
    def _track_dead(self, values: Tensor, selection: Selection, window: int) -> Bool[Tensor, "H F"]:
        """Reset the counter of every feature that fired in this batch, add one to the others (on device)."""
        n_heads = values.shape[0]
        fired = values.new_zeros(n_heads, self.cfg.n_features)
        fired.scatter_add_(1, selection.indices.reshape(n_heads, -1), (values > 0).to(values.dtype).reshape(n_heads, -1))
        if self.sync_statistics:
            dist.all_reduce(fired, op=dist.ReduceOp.SUM)
        counters = self.heads_first(self.steps_since_active)
        counters.copy_(torch.where(fired > 0, torch.zeros_like(counters), counters + 1))
        return counters >= window

    def _aux_loss(self, preacts_at, pre: Tensor, residual: Tensor, dead: Tensor, k_aux: int) -> Tensor:
        """AuxK (Gao et al. 2024): the top ``k_aux`` dead features rebuild the detached residual (no bias).

        Dead features are selected on device without a host sync on CUDA. On CPU (where the count is free) the pass
        is skipped when no feature is dead and decodes at most as many features as are dead: the others would enter
        with value 0, so the loss is the same and the cost is that of the dead features, not of ``k_aux``."""
        k_aux = min(k_aux, self.cfg.n_features)
        if not pre.is_cuda:
            n_dead = int(dead.sum(-1).max()) if dead.numel() else 0
            if n_dead == 0:
                return torch.zeros(pre.shape[0], dtype=pre.dtype, device=pre.device)
            k_aux = min(k_aux, n_dead)
        masked = pre.masked_fill(~dead[:, None, :], float("-inf"))
        indices = torch.topk(masked, k_aux, dim=-1).indices
        valid = gather_features(dead, indices)
        values = torch.relu(preacts_at(indices)) * valid
        aux_recon = self._decode(values, indices)
        any_dead = dead.any(-1).to(pre.dtype)
        return (aux_recon - residual).pow(2).mean(dim=(1, 2, 3)) * any_dead

    # ---- atoms and decoder constraints ---------------------------------------------------------------------

    def atoms(self, indices: int | Tensor | list[int], head: int | None = None) -> Atoms:
        """Unit-norm factors of the given atoms (``head`` required for a stacked SAE)."""
        if self.stacked and head is None:
            raise SAEInputError("this SAE is stacked (n_heads set): pass head= to atoms().")
        if head is not None and not 0 <= as_int(head, "atoms(head=)", SAEInputError) < self.cfg.heads:
            raise SAEInputError(f"atoms(head={head}): this SAE holds {self.cfg.heads} head(s) (0..{self.cfg.heads - 1})"
                                + ("" if self.stacked else "; a single-head SAE takes head=None") + ".")
        raw = torch.as_tensor(indices)
        if raw.dtype.is_floating_point or raw.dtype.is_complex or raw.dtype == torch.bool:
            raise SAEInputError(f"feature indices must be integers, got {raw.tolist() if raw.numel() < 9 else raw.dtype}.")
        idx = raw.to(dtype=torch.long, device=self.b_enc.device).reshape(-1)
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.cfg.n_features):
            raise SAEInputError(f"feature indices must be in [0, {self.cfg.n_features}), got {idx.tolist()[:8]}.")
        key, value = self._atom_factors(head or 0, idx)
        key_norm, value_norm = key.norm(dim=-1), value.norm(dim=-1)
        return Atoms(
            key / key_norm.clamp_min(1e-12)[..., None],
            value / value_norm.clamp_min(1e-12)[..., None],
            key_norm * value_norm,
        )

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Set every decoder factor to unit L2 norm (for rank-1 atoms: unit Frobenius norm)."""
        for factor, n_dims in self.decoder_factors():
            dims = tuple(range(-n_dims, 0))
            factor.div_(factor.norm(dim=dims, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def project_decoder_grads(self) -> None:
        """Remove from each decoder factor's gradient its component along that (unit) factor."""
        for factor, n_dims in self.decoder_factors():
            if factor.grad is None:
                continue
            dims = tuple(range(-n_dims, 0))
            unit = factor / factor.norm(dim=dims, keepdim=True).clamp_min(1e-12)
            factor.grad.sub_((factor.grad * unit).sum(dims, keepdim=True) * unit)

    @torch.no_grad()
    def set_mean(self, mean: Float[Tensor, "*H dk dv"]) -> None:
        """Store the mean state subtracted before encoding (``cfg.center=True`` only)."""
        if not self.cfg.center:
            raise SAEInputError("set_mean needs an SAE built with center=True.")
        mean = as_real_tensor(mean, "mean")
        if tuple(mean.shape) != tuple(self.mean.shape) or not bool(torch.isfinite(mean).all()):
            raise SAEInputError(f"set_mean: the mean is {tuple(mean.shape)} (finite: {bool(torch.isfinite(mean).all())}) "
                                f"but this SAE stores a finite {tuple(self.mean.shape)} (not broadcast; no NaN or inf).")
        self.mean.copy_(mean.to(self.mean))

    def dead_mask(self, window: int = Objective.dead_window) -> Bool[Tensor, "*H F"]:
        """Features that have not fired for ``window`` training steps."""
        return self.steps_since_active >= window

    # ---- stacking ------------------------------------------------------------------------------------------

    def head(self, index: int) -> SAE:
        """The single-head SAE of head ``index`` of a stacked SAE (a copy)."""
        if not self.stacked:
            raise SAEInputError("head() needs a stacked SAE (n_heads set).")
        index = as_int(index, "head()", SAEInputError)
        if not 0 <= index < self.cfg.n_heads:
            raise SAEInputError(f"head({index}): this stacked SAE holds heads 0..{self.cfg.n_heads - 1} (negative "
                                "indices are not counted from the end).")
        single = type(self)(self.cfg.replace(n_heads=None), seed=0).to(self.b_dec)
        state = {
            name: tensor if name in SHARED_BUFFERS else tensor[index]
            for name, tensor in self.state_dict().items()
        }
        single.load_state_dict(state)
        return single

    @classmethod
    def stack(cls, saes: list[SAE]) -> SAE:
        """One stacked SAE holding several single-head SAEs of identical config (in order)."""
        saes = list(saes)
        if not saes or not all(isinstance(s, SAE) for s in saes):
            raise SAEInputError("stack() needs a non-empty list of single-head SAEs.")
        first = saes[0]
        if any(s.cfg.replace(metadata={}) != first.cfg.replace(metadata={}) or s.stacked for s in saes):
            raise SAEInputError("stack() needs single-head SAEs with identical configs.")
        stacked = type(first)(first.cfg.replace(n_heads=len(saes)), seed=0).to(first.b_dec)
        states = [s.state_dict() for s in saes]
        stacked.load_state_dict(
            {
                name: tensor if name in SHARED_BUFFERS else torch.stack([st[name] for st in states])
                for name, tensor in states[0].items()
            }
        )
        return stacked

    # ---- persistence (see writelens.sae.io) ----------------------------------------------------------------

    def save(self, directory: Any) -> Any:
        """Write ``sae_weights.safetensors`` + ``cfg.json`` to ``directory``; returns its Path."""
        return save_sae(self, directory)

    @classmethod
    def from_pretrained(cls, repo_id_or_path: str, subfolder: str | None = None, **kwargs: Any) -> SAE:
        """Load from a local folder or a Hugging Face Hub repo (see :func:`writelens.sae.io.from_pretrained`)."""
        return _persistence("from_pretrained")(repo_id_or_path, subfolder=subfolder, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload to a Hugging Face Hub repo (see :func:`writelens.sae.io.push_to_hub`)."""
        return _persistence("push_to_hub")(self, repo_id, **kwargs)

    def extra_repr(self) -> str:
        c = self.cfg
        heads = f", n_heads={c.n_heads}" if c.n_heads else ""
        return f"{c.architecture}: d_k={c.d_k}, d_v={c.d_v}, F={c.n_features}, r={c.rank}, {c.activation}(k={c.k}){heads}"
