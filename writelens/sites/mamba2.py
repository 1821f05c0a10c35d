"""Mamba-2 write sites over transformers' ``Mamba2ForCausalLM`` (layers ``model.backbone.layers[i].mixer``).

Per head h (group g = h // (H / G), B and C shared by the heads of a group), with the effective step size
``dt_t = clamp(softplus(dt_raw + dt_bias))`` as the kernel derives it::

    S_t = exp(dt_t A_h) S_{t−1} + dt_t · B_t ⊗ x_t          (transition: a scalar decay; then the write)
    y_t = S_tᵀ C_t + D_h x_t                                 (the read sees the write at t; D x is S-independent)

**Orientation.** writelens exposes states in role order ``(d_k, d_v) = (d_state, headdim)``: the key side is the
side read by ``C_t`` (and written by ``B_t``), the value side the one that reaches ``y_t`` (written by ``x_t``).
HF stores ``[B, H, headdim, d_state]``, the transpose; ``hf_state`` returns HF layout, everything else role order
(``cache.state`` [B, N, P], ``Add(matrix=...)`` takes (N, P), ``Replace(key=N-vector, value=P-vector)``).
The write's coefficient is ``dt`` (``WriteFactors.beta``), so Install's native norm is ``‖B_t‖·‖x_t‖``;
``WriteFactors.g = dt·A`` (log-decay), ``query = C``, ``scale = 1``, ``output = y`` (with the D skip).

The kernels ``mamba2_chunk_scan`` (prefill) and ``mamba2_selective_state_update`` (decode, updates the cached state
in place) are module-level globals of the modeling file; writelens swaps them for interceptors that run the real
kernel and add the exactly propagated effect of edits (closed form: δS_s = exp(Σ_{p<u≤s} dt_u A) ΔS_p).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from writelens.errors import PositionOutOfRangeError
from writelens.sites.base import (
    FamilyAdapter,
    Injection,
    RecurrentCall,
    WriteFactors,
    register_family,
)
from writelens.sites.mamba2_oracle import Mamba2Oracle, naive_ssd
from writelens.sites.points import attach


class Mamba2Call(RecurrentCall):
    """One SSD kernel call over positions ``[offset, offset + T)``.

    x: [B, T, H, P]; dt: [B, T, H] effective step sizes (fp32); A: [H]; Bm, Cm: [B, T, G, N]; D: [H] or None;
    initial_state: [B, H, P, N] (HF layout) or None; log_decay: [B, T, H] when the decay is not ``dt·A`` (an
    assigned ``gate`` trace point).
    """

    def __init__(self, x, dt, A, Bm, Cm, D, initial_state, offset, log_decay=None):
        self.x, self.dt, self.A, self.Bm, self.Cm, self.D = x, dt, A, Bm, Cm, D
        self.initial_state = initial_state
        self.offset = offset
        self.batch_size, self.length, self.num_heads, self.d_v = x.shape
        self.num_groups, self.d_k = Bm.shape[2], Bm.shape[3]
        self.rep = self.num_heads // self.num_groups
        if log_decay is None:
            log_decay = dt.double() * A.double().to(dt.device)
        self.log_decay = log_decay.double().cpu()  # [B, T, H]
        self.cum = self.log_decay.cumsum(1)  # float64 cumulative log-decay, cum[:, t] = Σ_{u ≤ t}
        self.output: Tensor | None = None  # [B, T, H, P] as the layer received it (edits included)
        self.injections: list[Injection] = []

    def group(self, head: int) -> int:
        return head // self.rep

    # ---- factors ------------------------------------------------------------------------------------------------

    def write_factors(self, rows: Tensor, head: int, t: int):
        g = self.group(head)
        return (self.Bm[rows, t, g].float().cpu(), self.x[rows, t, head].float().cpu(),
                self.dt[rows, t, head].float().cpu())

    def read_vector(self, rows: Tensor, head: int, t: int):
        return self.Cm[rows, t, self.group(head)].float().cpu(), 1.0

    def factors(self, head: int) -> WriteFactors:
        g = self.group(head)
        log_decay = self.log_decay[:, :, head].float()
        return WriteFactors(
            key=self.Bm[:, :, g].float().cpu(),
            value=self.x[:, :, head].float().cpu(),
            beta=self.dt[:, :, head].float().cpu(),
            g=log_decay,
            alpha=log_decay.exp(),
            query=self.Cm[:, :, g].float().cpu(),
            scale=1.0,
            output=self.output[:, :, head].float().cpu(),
        )

    # ---- exact propagation (closed form) ------------------------------------------------------------------------

    def _decay(self, rows: Tensor, head: int, t: int) -> Tensor:
        """exp(cum_s − cum_t) for s in [t, T): [n, T − t] float64 (1 at s = t)."""
        cum = self.cum[rows, :, head]
        return torch.exp(cum[:, t:] - cum[:, t : t + 1])

    def propagate(self, injections: list[Injection], heads: list[int]):
        """δo [B, T, h, P] and δS_end [B, h, N, P] (role order) of ``injections``, float32 on CPU."""
        hidx = {h: i for i, h in enumerate(heads)}
        B, T = self.batch_size, self.length
        d_o = torch.zeros(B, T, len(heads), self.d_v, dtype=torch.float64)
        d_s = torch.zeros(B, len(heads), self.d_k, self.d_v, dtype=torch.float64)
        for inj in injections:
            t, hi, rows = inj.pos - self.offset, hidx[inj.head], inj.rows
            decay = self._decay(rows, inj.head, t)  # [n, T − t]
            C = self.Cm[rows, t:, self.group(inj.head)].double().cpu()  # [n, T − t, N]
            contrib = torch.einsum("nkv,nsk->nsv", inj.delta.double(), C) * decay[..., None]
            if not inj.with_read:
                contrib[:, 0] = 0
            d_o[rows, t:, hi] += contrib
            d_s[rows, hi] += decay[:, -1, None, None] * inj.delta.double()
        return d_o.float(), d_s.float()

    # ---- exact states --------------------------------------------------------------------------------------------

    def _start_state(self, head: int) -> Tensor:
        if self.initial_state is None:
            return torch.zeros(self.batch_size, self.d_k, self.d_v, dtype=torch.float64)
        return self.initial_state[:, head].double().cpu().transpose(-1, -2)

    def _advance(self, head: int, state: Tensor, t0: int, t1: int) -> Tensor:
        """State after local position t1−1 from the state after t0−1 ([B, N, P] float64), recorded edits included."""
        cum = self.cum[:, :, head]
        prev = cum[:, t0 - 1] if t0 > 0 else torch.zeros(self.batch_size, dtype=torch.float64)
        end = cum[:, t1 - 1]
        weight = torch.exp(end[:, None] - cum[:, t0:t1]) * self.dt[:, t0:t1, head].double().cpu()  # [B, L]
        Bm = self.Bm[:, t0:t1, self.group(head)].double().cpu()
        x = self.x[:, t0:t1, head].double().cpu()
        state = torch.exp(end - prev)[:, None, None] * state + torch.einsum("bs,bsk,bsv->bkv", weight, Bm, x)
        for inj in self.injections:
            t = inj.pos - self.offset
            if inj.head == head and t0 <= t < t1:
                state[inj.rows] += torch.exp(end[inj.rows] - cum[inj.rows, t])[:, None, None] * inj.delta.double()
        return state

    def state_at(self, head: int, t: int) -> Tensor:
        """Exact S_t (role order [B, N, P]) after the write and any recorded edit at local t (see
        :meth:`RecurrentCall._swept_state`)."""
        return self._swept_state(head, t).float()


@register_family
class Mamba2Adapter(FamilyAdapter):
    """transformers ``Mamba2ForCausalLM``: every layer ``model.backbone.layers[i].mixer`` is recurrent."""

    family = "mamba2"
    supports_trace_points = True

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        layers = getattr(getattr(model, "backbone", None), "layers", None)
        if layers is None:
            return False
        mixers = [getattr(layer, "mixer", None) for layer in layers]
        return any(type(m).__name__ == "Mamba2Mixer"
                   and hasattr(sys.modules[type(m).__module__], "mamba2_selective_state_update") for m in mixers)

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.backbone = model.backbone
        self._layers = self.backbone.layers
        self._modules = {i: layer.mixer for i, layer in enumerate(self._layers)
                         if type(getattr(layer, "mixer", None)).__name__ == "Mamba2Mixer"}
        first = next(iter(self._modules.values()))
        self.num_heads, self.d_k, self.d_v = first.num_heads, first.ssm_state_size, first.head_dim

    def install(self) -> None:
        from writelens.sites.mamba2_interceptors import count_tokens, install_module

        for mod in {sys.modules[type(m).__module__] for m in self._modules.values()}:
            install_module(mod)
        if not getattr(self.backbone, "_writelens_counts_tokens", False):
            self.backbone.register_forward_hook(count_tokens, with_kwargs=True)
            self.backbone._writelens_counts_tokens = True
        for i, m in self._modules.items():
            attach(m, i, m.num_heads, m.ssm_state_size, m.head_dim)

    def oracle_kernel(self) -> Mamba2Oracle:
        return Mamba2Oracle()

    def check_call(self, call: Mamba2Call) -> float:
        ref, _ = naive_ssd(call.x, call.dt, call.A, call.Bm, call.Cm, call.D, call.initial_state,
                           call.injections, call.offset)
        ref = ref.float().to(call.output.device)
        return ((call.output.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()

    def hf_state(self, call: Mamba2Call, t: int) -> Tensor:
        """All heads' states after local position t in HF layout [B, H, headdim, d_state] (transposed role order)."""
        states = torch.stack([call.state_at(h, t) for h in range(call.num_heads)], 1)
        return states.transpose(-1, -2).to(call.x.device)

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        cache._writelens_length = 0
        return cache

    def cache_length(self, cache: Any) -> int:
        n = getattr(cache, "_writelens_length", None)
        if n is None and not any(layer.is_recurrent_states_initialized.get(0, False)
                                 for layer in getattr(cache, "layers", [])):
            return 0  # an empty cache
        if n is None:
            raise PositionOutOfRangeError(
                "This Mamba-2 cache was filled before writelens wrapped the model, and HF's Mamba-2 cache does not "
                "count its tokens, so edit positions cannot be placed; build the prefix with "
                "lens.run(prefix_ids, use_cache=True).past_key_values (or any forward after WriteLens(model))."
            )
        return int(n)

    def forward(self, input_ids: Tensor, cache: Any = None, use_cache: bool = False,
                position_ids: Tensor | None = None, attention_mask: Tensor | None = None) -> Any:
        """Mamba-2 takes no position ids (positions come from the cache)."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, self.cache_keyword: cache, "use_cache": use_cache}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        return self.model(**kwargs)

    @property
    def final_norm(self) -> nn.Module:
        return self.backbone.norm_f

    @contextlib.contextmanager
    def readout_inputs(self, layer: int) -> Iterator[dict[str, Tensor]]:
        """Records ``gate`` [B, T, H·P], the gate of the mixer's grouped gated RMSNorm ``norm(y, gate)``."""
        store: dict[str, Tensor] = {}

        def grab(mod, args):
            store["gate"] = args[1].detach()

        handle = self._modules[layer].norm.register_forward_pre_hook(grab)
        try:
            yield store
        finally:
            handle.remove()

    def readout(self, layer: int, outputs: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """``out_proj(norm(y, gate))`` with y the kernel output (D skip included); the norm mixes the heads of a
        group (its RMS runs over ``group_size`` channels)."""
        module, n = self._modules[layer], outputs.shape[0]
        y = module.norm(outputs.reshape(n, -1), inputs["gate"])
        return module.out_proj(y.to(module.out_proj.weight.dtype))

    def out_proj_slice(self, layer: int, head: int) -> Tensor:
        """W_O^h: the columns of ``out_proj`` that read head ``head``'s (gated, normed) output, [d_model, headdim]."""
        w = self._modules[layer].out_proj.weight
        return w[:, head * self.d_v : (head + 1) * self.d_v]
