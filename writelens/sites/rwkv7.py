"""RWKV-7 write sites over the pure-PyTorch ``rwkv7-hf`` package (``RWKV7ForCausalLM``, layers
``model.model.layers[i].attn``, an ``RWKV7TimeMix``).

Per head, with ``w_t`` the per-channel decay, ``a_t = −κ̂_t`` and ``b_t = κ̂_t · iclr_t`` as the model passes them
to its kernel (``κ̂`` the L2-normalised, k_k-weighted key)::

    S_t = (diag(w_t) + b_t a_tᵀ) S_{t−1} + k_t ⊗ v_t        (diagonal-plus-rank-1 transition, then the write)
    o_t = S_tᵀ r_t                                           (the read, by the receptance; sees the write at t)

**Orientation.** The package's canonical state is ``[B, H, K, V]`` (its kernel computes in the official ``[V, K]``
presentation internally and transposes back), which is already writelens' role order: key side K (written by
``k_t``, read by ``r_t``), value side V. No transpose anywhere; ``hf_state`` is role order.
The write's coefficient is 1 (0 at masked positions), so Install's native norm is ``‖k_t‖·‖v_t‖``. The layer's
``r·(r_k⊙k)·v`` bonus term is S-independent and not part of the kernel output. The transition has no scalar decay:
``WriteFactors.g`` / ``alpha`` are NaN; :meth:`RWKV7Call.transition` gives ``(w, a, b)`` per channel.

The kernel ``rwkv7_recurrent`` is a module-level global of ``rwkv7_hf.modeling_rwkv7`` (used for prefill and
decode alike); writelens swaps it for an interceptor that runs it and adds the exactly propagated effect of edits
to its output and returned final state (which the model stores in its ``RWKV7Cache``). Edited runs reuse the native
prefix through an ``RWKV7Cache`` built at the first edit (exact states, token-shift states, and the layer-0 value
``v_first`` for short-circuited lower layers). fla's RWKV-7 (GPU only) is refused.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from writelens.edits import Edit
from writelens.errors import UnsupportedModelError
from writelens.sites.base import (
    FamilyAdapter,
    Injection,
    RecurrentCall,
    RunSession,
    WriteFactors,
    active_session,
    current_layer,
    current_module,
    register_family,
)
from writelens.sites.points import armed_sites, attach
from writelens.sites.rwkv7_oracle import naive_rwkv7
from writelens.sites.rwkv7_points import input_points, output_points
from writelens.sites.rwkv7_prefix import continue_rows as _continue_rows
from writelens.sites.rwkv7_prefix import record_native as _record_native

F64 = torch.float64


class RWKV7Call(RecurrentCall):
    """One call of ``rwkv7_recurrent`` over positions ``[offset, offset + T)``.

    r, w, k, a, b: [B, T, H, K]; v: [B, T, H, V]; initial_state: [B, H, K, V] or None; mask: bool [B, T] or None
    (None: every position active).
    """

    def __init__(self, r, w, k, v, a, b, initial_state, mask, offset):
        self.r, self.w, self.k, self.v, self.a, self.b = r, w, k, v, a, b
        self.initial_state, self.mask, self.offset = initial_state, mask, offset
        self.batch_size, self.length, self.num_heads, self.d_k = k.shape
        self.d_v = v.shape[-1]
        self.output: Tensor | None = None  # [B, T, H, V] as the layer received it (edits included)
        self.injections: list[Injection] = []

    def _active(self, rows: Tensor, t0: int, t1: int) -> Tensor:
        """[n, L] float64: 1 where the kernel processes the position, 0 where it is masked."""
        if self.mask is None:
            return torch.ones(len(rows), t1 - t0, dtype=F64)
        return self.mask[rows, t0:t1].to(F64).cpu()

    def _get(self, x: Tensor, rows: Tensor, t0: int, t1: int, heads: list[int]) -> Tensor:
        return x[rows, t0:t1][:, :, heads].to(F64).cpu()

    # ---- factors ------------------------------------------------------------------------------------------------

    def write_factors(self, rows: Tensor, head: int, t: int):
        coef = self._active(rows, t, t + 1)[:, 0].float()
        return self.k[rows, t, head].float().cpu(), self.v[rows, t, head].float().cpu(), coef

    def read_vector(self, rows: Tensor, head: int, t: int):
        return self.r[rows, t, head].float().cpu(), 1.0

    def transition(self, head: int) -> tuple[Tensor, Tensor, Tensor]:
        """(w, a, b), each [B, T, K]: the transition at t is ``S ↦ diag(w_t) S + b_t (a_tᵀ S)``."""
        return tuple(x[:, :, head].float().cpu() for x in (self.w, self.a, self.b))

    def factors(self, head: int) -> WriteFactors:
        nan = torch.full((self.batch_size, self.length), float("nan"))
        rows = torch.arange(self.batch_size)
        return WriteFactors(
            key=self.k[:, :, head].float().cpu(),
            value=self.v[:, :, head].float().cpu(),
            beta=self._active(rows, 0, self.length).float(),
            g=nan,
            alpha=nan.clone(),
            query=self.r[:, :, head].float().cpu(),
            scale=1.0,
            output=self.output[:, :, head].float().cpu(),
        )

    # ---- recurrence pieces (float64, CPU) -------------------------------------------------------------------------

    def _step(self, S: Tensor, w: Tensor, a: Tensor, b: Tensor, m: Tensor, write: Tensor | None) -> Tensor:
        """One transition (+ write) of S [n, h, K, V]; w, a, b [n, h, K]; m [n] active; write [n, h, K, V]."""
        new = w[..., None] * S + b[..., None] * torch.einsum("nhk,nhkv->nhv", a, S)[..., None, :]
        if write is not None:
            new = new + write
        return torch.where(m[:, None, None, None] > 0, new, S)

    def propagate(self, injections: list[Injection], heads: list[int]):
        """δo [B, T, h, V] and δS_end [B, h, K, V] of ``injections``: the transitions applied to the perturbation,
        one token at a time (float64), read by r_t."""
        hidx = {h: i for i, h in enumerate(heads)}
        B, T = self.batch_size, self.length
        d_o = torch.zeros(B, T, len(heads), self.d_v)
        d_s = torch.zeros(B, len(heads), self.d_k, self.d_v)
        if not injections:
            return d_o, d_s
        rows = torch.unique(torch.cat([inj.rows for inj in injections]))
        local = {int(r): i for i, r in enumerate(rows.tolist())}
        by_pos: dict[int, list[Injection]] = {}
        for inj in injections:
            by_pos.setdefault(inj.pos - self.offset, []).append(inj)
        t0 = min(by_pos)
        w, a, b, r = (self._get(x, rows, t0, T, heads) for x in (self.w, self.a, self.b, self.r))
        m = self._active(rows, t0, T)
        S = torch.zeros(len(rows), len(heads), self.d_k, self.d_v, dtype=F64)
        out = torch.zeros(len(rows), T - t0, len(heads), self.d_v, dtype=F64)
        for t in range(t0, T):
            i = t - t0
            if t > t0:
                S = self._step(S, w[:, i], a[:, i], b[:, i], m[:, i], None)
            late = []
            for inj in by_pos.get(t, ()):
                li = torch.tensor([local[int(x)] for x in inj.rows.tolist()])
                if inj.with_read:
                    S[li, hidx[inj.head]] += inj.delta.to(F64)
                else:
                    late.append((li, inj))
            out[:, i] = torch.einsum("nhkv,nhk->nhv", S, r[:, i]) * m[:, i, None, None]
            for li, inj in late:
                S[li, hidx[inj.head]] += inj.delta.to(F64)
        d_o[rows, t0:] = out.float()
        d_s[rows] = S.float()
        return d_o, d_s

    # ---- exact states --------------------------------------------------------------------------------------------

    def _start_state(self, head: int) -> Tensor:
        if self.initial_state is None:
            return torch.zeros(self.batch_size, 1, self.d_k, self.d_v, dtype=F64)
        return self.initial_state[:, head : head + 1].to(F64).cpu()

    def _advance(self, head: int, state: Tensor, t0: int, t1: int, rows: Tensor | None = None) -> Tensor:
        """State [B, 1, K, V] after local t1−1 from the state after t0−1, writes and recorded edits included
        (``rows``: only those batch rows, for a call without recorded edits)."""
        rows = torch.arange(self.batch_size) if rows is None else rows.cpu()
        w, a, b, k, r = (self._get(x, rows, t0, t1, [head]) for x in (self.w, self.a, self.b, self.k, self.r))
        v = self._get(self.v, rows, t0, t1, [head])
        m = self._active(rows, t0, t1)
        for t in range(t0, t1):
            i = t - t0
            state = self._step(state, w[:, i], a[:, i], b[:, i], m[:, i], k[:, i, :, :, None] * v[:, i, :, None, :])
            for inj in self.injections:
                if inj.head == head and inj.pos - self.offset == t:
                    state[inj.rows, 0] += inj.delta.to(F64)
        return state

    def state_at(self, head: int, t: int) -> Tensor:
        """Exact S_t [B, K, V] after the write and any recorded edit at local t (see
        :meth:`RecurrentCall._swept_state`)."""
        return self._swept_state(head, t)[:, 0].float()

    def state_for_rows(self, head: int, t: int, rows: Tensor) -> Tensor:
        """:meth:`state_at` of batch ``rows`` only ([n, K, V])."""
        return self.states_for_rows(head, t, rows)[:, 0].float()


class RWKV7Interceptor:
    """Replaces ``rwkv7_recurrent`` in the modeling module: captures, exact edits, oracle override."""

    def __init__(self, original: Any):
        self.original = original
        self.__wrapped__ = original

    def __call__(self, receptance, decay, key, value, a, b, initial_state, attention_mask=None):
        session, layer = active_session(), current_layer()
        sites = armed_sites(current_module())
        if layer is None or (session is None and sites is None):
            return self.original(receptance, decay, key, value, a, b, initial_state, attention_mask)
        session = session or RunSession()
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.to(torch.bool)
        offset = session.positions.get(layer, session.start_pos)
        captured = layer in session.capture
        init = initial_state.detach().clone() if (captured and initial_state is not None) else initial_state
        assigned = input_points(sites, receptance, decay, key, value, mask) if sites is not None else None
        if assigned is not None:
            receptance, decay, key, value = assigned
        call = RWKV7Call(receptance, decay, key, value, a, b, init, mask, offset)
        injections = [inj for e in session.edits_for(layer) for inj in call.resolve(e)]
        if assigned is not None:  # the float64 recurrence on the assigned inputs, edits applied to the state
            out, state = naive_rwkv7(receptance, decay, key, value, a, b, initial_state, attention_mask,
                                     injections=injections, offset=offset)
            state = state.to(value.dtype)
        elif session.kernel_override is not None:
            out, state = session.kernel_override(receptance, decay, key, value, a, b, initial_state, attention_mask,
                                                 injections=injections, offset=offset)
        else:
            out, state = self.original(receptance, decay, key, value, a, b, initial_state, attention_mask)
            if injections:
                heads = sorted({inj.head for inj in injections})
                d_o, d_s = call.propagate(injections, heads)
                out, state = out.clone(), state.clone()
                out[:, :, heads] = (out[:, :, heads].float() + d_o.to(out.device)).to(out.dtype)
                state[:, heads] = (state[:, heads].float() + d_s.to(state.device)).to(state.dtype)
        if sites is not None:
            out, state = output_points(sites, out, state)
        out = session.hook_output(layer, out)
        session.positions[layer] = offset + key.shape[1]
        session.injections.setdefault(layer, []).extend(injections)
        if captured:
            call.output = out.detach()
            call.injections = injections
            session.calls.setdefault(layer, []).append(call)
        return out, state


def _is_timemix(module: Any) -> bool:
    return (type(module).__name__ == "RWKV7TimeMix"
            and hasattr(sys.modules.get(type(module).__module__), "rwkv7_recurrent"))


def _is_fla_rwkv7(module: Any) -> bool:
    return type(module).__name__ == "RWKV7Attention" and type(module).__module__.startswith("fla.")


@register_family
class RWKV7Adapter(FamilyAdapter):
    """``rwkv7-hf`` ``RWKV7ForCausalLM``: every layer ``model.model.layers[i].attn`` is recurrent."""

    family = "rwkv7"
    supports_trace_points = True

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        layers = getattr(getattr(model, "model", None), "layers", None)
        return layers is not None and any(_is_timemix(getattr(layer, "attn", None))
                                          or _is_fla_rwkv7(getattr(layer, "attn", None)) for layer in layers)

    def __init__(self, model: nn.Module):
        if any(_is_fla_rwkv7(getattr(layer, "attn", None)) for layer in model.model.layers):
            raise UnsupportedModelError(
                f"{type(model).__name__} is fla's RWKV-7 (triton kernels, GPU only), which writelens does not "
                "intercept; load the same checkpoint with the pure-PyTorch rwkv7-hf package "
                "(rwkv7_hf.modeling_rwkv7.RWKV7ForCausalLM) to use RWKV-7 write sites."
            )
        super().__init__(model)
        self._layers = model.model.layers
        self._modules = {i: layer.attn for i, layer in enumerate(self._layers) if _is_timemix(layer.attn)}
        first = next(iter(self._modules.values()))
        self.num_heads, self.d_k, self.d_v = first.num_heads, first.head_dim, first.head_dim

    def install(self) -> None:
        for mod in {sys.modules[type(m).__module__] for m in self._modules.values()}:
            if not isinstance(mod.rwkv7_recurrent, RWKV7Interceptor):
                mod.rwkv7_recurrent = RWKV7Interceptor(mod.rwkv7_recurrent)
        for i, m in self._modules.items():
            attach(m, i, m.num_heads, m.head_dim, m.head_dim)

    def oracle_kernel(self):
        return naive_rwkv7

    def check_call(self, call: RWKV7Call) -> float:
        ref, _ = naive_rwkv7(call.r, call.w, call.k, call.v, call.a, call.b, call.initial_state, call.mask,
                             injections=call.injections, offset=call.offset)
        ref = ref.float()
        return ((call.output.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()

    def hf_state(self, call: RWKV7Call, t: int, rows: Tensor | None = None) -> Tensor:
        """All heads' states after local position t, [B, H, K, V] (the RWKV7Cache layout, = role order); ``rows``:
        only those batch rows."""
        return torch.stack([call.state_at(h, t) if rows is None else call.state_for_rows(h, t, rows)
                            for h in range(call.num_heads)], 1).to(call.k.device)

    def new_cache(self) -> Any:
        cache_cls = sys.modules[type(self.model.model).__module__].RWKV7Cache
        return cache_cls(num_layers=len(self._layers))

    def cache_length(self, cache: Any) -> int:
        return int(cache.get_seq_length())

    @property
    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    @contextlib.contextmanager
    def readout_inputs(self, layer: int) -> Iterator[dict[str, Tensor]]:
        """Records ``gate`` [B, T, H·V], the output gate (the ``g_lora`` projection)."""
        store: dict[str, Tensor] = {}

        def grab(mod, args, out):
            store["gate"] = out.detach()

        handle = self._modules[layer].g_lora.lora[2].register_forward_hook(grab)
        try:
            yield store
        finally:
            handle.remove()

    def readout(self, layer: int, outputs: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """``o_proj(group_norm(o) · gate)``, leaving out the S-independent bonus ``(r·(r_k⊙k)) v`` (added after
        the norm, so it shifts the output by a constant) and the padding mask."""
        module, n = self._modules[layer], outputs.shape[0]
        y = torch.nn.functional.group_norm(outputs.reshape(n, -1), module.g_norm.num_groups, module.g_norm.weight,
                                           module.g_norm.bias, module.g_norm.eps)
        return module.o_proj(y * inputs["gate"])

    def out_proj_slice(self, layer: int, head: int) -> Tensor:
        """W_O^h: the columns of ``o_proj`` that read head ``head``'s (group-normed, gated) output, [d_model, V]."""
        w = self._modules[layer].o_proj.weight
        return w[:, head * self.d_v : (head + 1) * self.d_v]

    def record_native(self, input_ids: Tensor, layers: Any, logits_to_keep: int = 0) -> Any:
        """The native pass (``writelens.sites.rwkv7_prefix``): captured calls, each block / TimeMix / ChannelMix
        input from the lowest of ``layers`` on, and ``v_first``."""
        return _record_native(self, input_ids, layers, logits_to_keep)

    def continue_rows(self, record: Any, src: Tensor, s0: int, low: int, edits: list[Edit],
                      logits_to_keep: int = 0, stop: int = 0) -> Tensor:
        """Rows continued from an ``RWKV7Cache`` at ``s0`` (state at s0−1, token shifts = the recorded inputs at
        s0−1), the blocks below ``low`` short-circuited."""
        return _continue_rows(self, record, src, s0, low, edits, logits_to_keep, stop)

