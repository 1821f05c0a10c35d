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
from writelens.sites.base import FamilyAdapter, logits_kwarg, register_family
from writelens.sites.mamba2_call import Mamba2Call
from writelens.sites.mamba2_interceptors import count_tokens, install_module
from writelens.sites.mamba2_oracle import Mamba2Oracle, naive_ssd
from writelens.sites.points import attach


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

    def hf_state(self, call: Mamba2Call, t: int, rows: Tensor | None = None) -> Tensor:
        """All heads' states after local position t in HF layout [B, H, headdim, d_state] (transposed role order);
        ``rows``: only those batch rows."""
        states = torch.stack([call.state_at(h, t) if rows is None else call.state_for_rows(h, t, rows)
                              for h in range(call.num_heads)], 1)
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
                position_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                logits_to_keep: int | Tensor = 0) -> Any:
        """Mamba-2 takes no position ids (positions come from the cache)."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, self.cache_keyword: cache, "use_cache": use_cache,
                                  **logits_kwarg(logits_to_keep, input_ids.device)}
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
