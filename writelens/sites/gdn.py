"""Gated DeltaNet write sites over the live HF classes (Qwen3.5, Qwen3.5 VLM text part, Qwen3-Next, and any model
whose linear-attention layers call the same module-level ``torch_*_gated_delta_rule`` kernels).

Per value head h and position t (kernel layout, ``S`` is ``[d_k, d_v]``)::

    k̂_t = l2norm(k_t), q̂_t = l2norm(q_t), α_t = exp(g_t), β_t = sigmoid(b_t)
    S_t = α_t (I − β_t k̂_t k̂_tᵀ) S_{t−1} + β_t k̂_t v_tᵀ          (transition, then the write)
    o_t = d_k^{-1/2} · S_tᵀ q̂_t                                      (the read sees the write at t)

When ``num_v_heads > num_k_heads`` value heads ``r·j … r·j + r − 1`` share key head ``j`` (``r = Hv / Hk``).

The kernels are module-level globals of the modeling file, looked up at call time, so writelens swaps them for
interceptors. Off a session they call straight through; on CPU they always run the torch reference kernels (fla
picked by transformers at import time cannot run without a GPU).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

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
from writelens.sites.gdn_chunk import STEP_TOKENS, BoundaryStates, chunk_rule_with_boundaries
from writelens.sites.gdn_oracle import l2norm, naive_gated_delta_rule
from writelens.sites.kernels import ConvCapture, DeviceDispatch
from writelens.sites.points import WriteSites, attach, call_input_points


class GDNCall(BoundaryStates, RecurrentCall):
    """One call of the gated-delta-rule kernel, with the kernel's own (raw, un-normalised) arguments.

    query, key: [B, T, Hk, d_k]; value: [B, T, Hv, d_v]; g, beta: [B, T, Hv]; initial_state: [B, Hv, d_k, d_v] or
    None; ``chunk_kernel`` / ``step_kernel``: the model's kernels used for exact propagation and state recompute.
    """

    def __init__(self, query, key, value, g, beta, initial_state, offset, chunk_kernel, step_kernel,
                 prenormalized: bool = False):
        self.query, self.key, self.value, self.g, self.beta = query, key, value, g, beta
        self.prenormalized = prenormalized  # q, k already unit (trace points assigned): the kernel must not renormalise
        self.initial_state = initial_state
        self.offset = offset
        self.chunk_kernel, self.step_kernel = chunk_kernel, step_kernel
        self.batch_size, self.length, self.num_k_heads, self.d_k = key.shape
        self.num_heads, self.d_v = value.shape[-2:]
        self.rep = self.num_heads // self.num_k_heads
        self.scale = self.d_k**-0.5
        self.output: Tensor | None = None  # [B, T, Hv, d_v] as the layer received it (edits included)
        self.injections: list[Injection] = []
        #: [n, B, Hv, d_k, d_v] float32: the native state after local position 64 (i + 1) − 1, recorded by the
        #: captured kernel call itself (writelens.sites.gdn_chunk); None when the call ran another kernel
        self.native_boundaries: Tensor | None = None
        self.native_interior = None  # ChunkInterior of that kernel call: states inside a chunk without a kernel run

    # ---- factors ------------------------------------------------------------------------------------------------

    def kh(self, head: int) -> int:
        return head // self.rep

    def unit(self, x: Tensor) -> Tensor:
        return x.float() if self.prenormalized else l2norm(x.float())

    def write_factors(self, rows: Tensor, head: int, t: int):
        key = self.unit(self.key[rows, t, self.kh(head)])
        return key, self.value[rows, t, head].float(), self.beta[rows, t, head].float()

    def read_vector(self, rows: Tensor, head: int, t: int):
        return self.unit(self.query[rows, t, self.kh(head)]), self.scale

    def factors(self, head: int) -> WriteFactors:
        kh = self.kh(head)
        g = self.g[:, :, head].float()
        return WriteFactors(
            key=self.unit(self.key[:, :, kh]),
            value=self.value[:, :, head].float(),
            beta=self.beta[:, :, head].float(),
            g=g,
            alpha=g.exp(),
            query=self.unit(self.query[:, :, kh]),
            scale=self.scale,
            output=self.output[:, :, head].float(),
        )

    # ---- kernel segments ----------------------------------------------------------------------------------------

    def segment(self, rows: Tensor, heads: list[int], t0: int, t1: int, initial: Tensor, zero_value: bool):
        """Run the model's kernel on local positions [t0, t1) for ``rows`` × ``heads`` from ``initial``
        ([n, h, d_k, d_v]); returns (o [n, L, h, d_v] fp32, S_{t1−1} [n, h, d_k, d_v] fp32)."""
        kh = [self.kh(h) for h in heads]
        q = self.query[rows, t0:t1][:, :, kh].float()
        k = self.key[rows, t0:t1][:, :, kh].float()
        v = self.value[rows, t0:t1][:, :, heads].float()
        if zero_value:
            v = torch.zeros_like(v)
        g = self.g[rows, t0:t1][:, :, heads].float()
        beta = self.beta[rows, t0:t1][:, :, heads].float()
        kernel = self.step_kernel if t1 - t0 <= STEP_TOKENS else self.chunk_kernel
        o, state = kernel(
            q, k, v, g=g, beta=beta, initial_state=initial.float().contiguous(),
            output_final_state=True, use_qk_l2norm_in_kernel=not self.prenormalized,
        )
        return o.float(), state.float()

    def propagate(self, injections: list[Injection], heads: list[int]):
        """δo [B, T, h, d_v] and δS_end [B, h, d_k, d_v] of ``injections`` (exact: the δ-recurrence is the kernel
        with zero values and the perturbation as initial state)."""
        hidx = {h: i for i, h in enumerate(heads)}
        B, T = self.batch_size, self.length
        dev = self.value.device
        d_o = torch.zeros(B, T, len(heads), self.d_v, device=dev)
        d_s = torch.zeros(B, len(heads), self.d_k, self.d_v, device=dev)
        if not injections:
            return d_o, d_s
        rows = torch.unique(torch.cat([inj.rows for inj in injections]))
        local = {int(r): i for i, r in enumerate(rows.tolist())}
        state = torch.zeros(len(rows), len(heads), self.d_k, self.d_v, device=dev)
        out = torch.zeros(len(rows), T, len(heads), self.d_v, device=dev)
        by_pos: dict[int, list[Injection]] = {}
        for inj in injections:
            by_pos.setdefault(inj.pos - self.offset, []).append(inj)
        positions = sorted(by_pos)
        for i, t in enumerate(positions):
            if i > 0:
                o, state = self.segment(rows, heads, positions[i - 1] + 1, t + 1, state, zero_value=True)
                out[:, positions[i - 1] + 1 : t + 1] = o
            for inj in by_pos[t]:
                li = torch.tensor([local[int(r)] for r in inj.rows.tolist()])
                hi = hidx[inj.head]
                state[li, hi] += inj.delta
                if inj.with_read:
                    q, scale = self.read_vector(inj.rows, inj.head, t)
                    out[li, t, hi] += scale * torch.einsum("nkv,nk->nv", inj.delta, q)
        if positions[-1] + 1 < T:
            o, state = self.segment(rows, heads, positions[-1] + 1, T, state, zero_value=True)
            out[:, positions[-1] + 1 :] = o
        d_o[rows] = out
        d_s[rows] = state
        return d_o, d_s

    # ---- exact states of a captured call --------------------------------------------------------------------

    def _start_state(self, heads: tuple[int, ...]) -> Tensor:
        if self.initial_state is None:
            return torch.zeros(self.batch_size, len(heads), self.d_k, self.d_v, device=self.value.device)
        return self.initial_state[:, list(heads)].float()

    def _advance(self, heads: tuple[int, ...], state: Tensor, t0: int, t1: int, rows: Tensor | None = None) -> Tensor:
        """State of ``heads`` after local position t1−1 given it after t0−1, including recorded injections
        (``rows``: only those batch rows, for a call without injections)."""
        if rows is not None:
            return self.segment(rows, list(heads), t0, t1, state, zero_value=False)[1]
        rows = torch.arange(self.batch_size)
        mine = [inj for inj in self.injections if inj.head in heads and t0 <= inj.pos - self.offset < t1]
        start = t0
        for t in [*sorted({inj.pos - self.offset for inj in mine}), None]:
            stop = t1 if t is None else t + 1
            if stop > start:
                _, state = self.segment(rows, list(heads), start, stop, state, zero_value=False)
            for inj in mine:
                if inj.pos - self.offset == t:
                    state[inj.rows, heads.index(inj.head)] += inj.delta
            start = stop
        return state

    def states_at(self, heads: tuple[int, ...], t: int) -> Tensor:
        """Exact S of ``heads`` after the write (and any recorded edit) at local position t, [B, h, d_k, d_v];
        recomputes at most one chunk with the model's kernel (see :meth:`RecurrentCall._swept_state`)."""
        return self._swept_state(heads, t)

    def state_at(self, head: int, t: int) -> Tensor:
        """Exact S of one head after local position t, [B, d_k, d_v]."""
        return self.states_at((head,), t)[:, 0]


class GDNInterceptor:
    """Replaces ``torch_chunk_gated_delta_rule`` / ``torch_recurrent_gated_delta_rule`` in a modeling module."""

    def __init__(self, original: Any, adapter_kernels: dict[str, DeviceDispatch]):
        self.original = original
        self.dispatch = DeviceDispatch(original)
        self.kernels = adapter_kernels
        self.__wrapped__ = self.dispatch.torch_impl

    def __call__(self, query, key, value, g=None, beta=None, initial_state=None, output_final_state=False,
                 use_qk_l2norm_in_kernel=False, **kwargs):
        session = active_session()
        impl = self.dispatch.pick(query)
        layer = current_layer()
        sites = getattr(current_module(), "write_sites", None)
        sites = sites if isinstance(sites, WriteSites) and sites.armed else None
        if layer is None or (session is None and sites is None):
            return impl(query, key, value, g=g, beta=beta, initial_state=initial_state,
                        output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                        **kwargs)
        if not use_qk_l2norm_in_kernel:
            raise UnsupportedModelError(
                "This layer calls the gated delta rule with use_qk_l2norm_in_kernel=False; writelens supports the "
                "Qwen3.5 / Qwen3-Next convention (q, k normalised inside the kernel). Report the model class."
            )
        return _handle_call(session or RunSession(), layer, sites, self.kernels, query, key, value, g, beta,
                            initial_state, output_final_state, impl, kwargs)


def _input_points(sites: WriteSites, query, key, value, g, beta):
    """Call the input trace points; returns the (possibly assigned) kernel inputs and whether any changed."""
    rep = value.shape[2] // key.shape[2]
    given = {
        "query": l2norm(query.float()).repeat_interleave(rep, 2),
        "key": l2norm(key.float()).repeat_interleave(rep, 2),
        "value": value.clone(),  # the model's value is a view of a split; points get their own tensors
        "beta": beta.clone(),
        "gate": g.clone(),
    }
    new, flags = call_input_points(sites, given)
    any_changed = any(flags.values())
    if not any_changed:
        return query, key, value, g, beta, False
    return (new["query"].to(query.dtype), new["key"].to(key.dtype), new["value"].to(value.dtype), new["gate"],
            new["beta"].to(beta.dtype), True)


def _handle_call(session: RunSession, layer: int, sites: WriteSites | None, kernels, query, key, value, g, beta,
                 initial_state, output_final_state, impl, kwargs):
    prenorm = False
    if sites is not None:
        query, key, value, g, beta, prenorm = _input_points(sites, query, key, value, g, beta)
    offset = session.positions.get(layer, session.start_pos)
    captured = layer in session.capture
    init = initial_state.detach().clone() if (captured and initial_state is not None) else initial_state
    chunk = kernels["chunk"].pick(query)
    step = kernels["step"].pick(query)
    call = GDNCall(query, key, value, g, beta, init, offset, chunk, step, prenormalized=prenorm)
    injections = [inj for e in session.edits_for(layer) for inj in call.resolve(e)]
    if session.kernel_override is not None:
        out, state = session.kernel_override(
            query, key, value, g=g, beta=beta, initial_state=initial_state, output_final_state=output_final_state,
            use_qk_l2norm_in_kernel=not prenorm, injections=injections, offset=offset,
        )
    else:
        if captured and _plain(kwargs) and impl is kernels["chunk"].torch_impl:
            # transformers' CPU chunk kernel, op for op, keeping its boundary states (exact states then cost no sweep)
            out, state, call.native_boundaries, call.native_interior = chunk_rule_with_boundaries(
                query, key, value, g, beta, initial_state=initial_state, output_final_state=output_final_state,
                use_qk_l2norm_in_kernel=not prenorm)
        else:
            out, state = impl(query, key, value, g=g, beta=beta, initial_state=initial_state,
                              output_final_state=output_final_state, use_qk_l2norm_in_kernel=not prenorm, **kwargs)
        if injections:
            heads = sorted({inj.head for inj in injections})
            d_o, d_s = call.propagate(injections, heads)
            out = out.clone()
            out[:, :, heads] = (out[:, :, heads].float() + d_o.to(out.device)).to(out.dtype)
            if state is not None:
                state = state.clone()
                state[:, heads] = (state[:, heads].float() + d_s.to(state.device)).to(state.dtype)
    if sites is not None:
        out = sites.read(out)
        if state is not None:
            state = sites.state(state)
    out = session.hook_output(layer, out)
    session.positions[layer] = offset + query.shape[1]
    session.injections.setdefault(layer, []).extend(injections)
    if captured:
        call.output = out.detach()
        call.injections = injections
        session.calls.setdefault(layer, []).append(call)
    return out, state


def _plain(kwargs: dict) -> bool:
    """The call passes nothing the reference kernel would act on (no packed sequences, no chunk size)."""
    return set(kwargs) <= {"cu_seqlens", "use_cache"} and kwargs.get("cu_seqlens") is None


_KERNEL_NAMES = {"chunk": "torch_chunk_gated_delta_rule", "step": "torch_recurrent_gated_delta_rule"}


def _install_module(module: Any) -> dict[str, DeviceDispatch]:
    """Patch one modeling module once; returns the device dispatchers of its two kernels."""
    if getattr(module, "_writelens_kernels", None) is not None:
        return module._writelens_kernels
    kernels = {role: DeviceDispatch(getattr(module, name)) for role, name in _KERNEL_NAMES.items()}
    for name in _KERNEL_NAMES.values():
        setattr(module, name, GDNInterceptor(getattr(module, name), kernels))
    if hasattr(module, "causal_conv1d_fn"):
        module.causal_conv1d_fn = ConvCapture(module.causal_conv1d_fn)
    if hasattr(module, "causal_conv1d_update"):
        module.causal_conv1d_update = DeviceDispatch(module.causal_conv1d_update)
    module._writelens_kernels = kernels
    return kernels


def _decoder(model: nn.Module) -> nn.Module | None:
    inner = getattr(model, "model", None)
    if inner is None:
        return None
    return getattr(inner, "language_model", inner)


@register_family
class GDNAdapter(FamilyAdapter):
    """Qwen3.5 / Qwen3-Next style hybrids: ``model.model[.language_model].layers[i].linear_attn``."""

    family = "gdn"
    supports_trace_points = True

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        dec = _decoder(model)
        layers = getattr(dec, "layers", None) if dec is not None else None
        if layers is None:
            return False
        return any(type(getattr(layer, "linear_attn", None)).__name__.endswith("GatedDeltaNet") for layer in layers)

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.decoder = _decoder(model)
        self.text_config = model.config.get_text_config(decoder=True)
        self._layers = self.decoder.layers
        types = list(getattr(self.text_config, "layer_types", None) or [])
        self._modules = {
            i: layer.linear_attn
            for i, layer in enumerate(self._layers)
            if (types[i] == "linear_attention" if types else hasattr(layer, "linear_attn"))
        }
        first = next(iter(self._modules.values()))
        self.num_heads, self.num_k_heads = first.num_v_heads, first.num_k_heads
        self.d_k, self.d_v = first.head_k_dim, first.head_v_dim
        self.kernels: dict[str, DeviceDispatch] = {}

    def install(self) -> None:
        for mod in {sys.modules[type(m).__module__] for m in self._modules.values()}:
            self.kernels = _install_module(mod)
        for i, m in self._modules.items():
            attach(m, i, m.num_v_heads, m.head_k_dim, m.head_v_dim)

    def oracle_kernel(self):
        return naive_gated_delta_rule

    def check_call(self, call: GDNCall) -> float:
        ref, _ = naive_gated_delta_rule(call.query, call.key, call.value, call.g, call.beta,
                                        initial_state=call.initial_state, injections=call.injections,
                                        offset=call.offset, use_qk_l2norm_in_kernel=not call.prenormalized)
        ref = ref.float()
        return ((call.output.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()

    def hf_state(self, call: GDNCall, t: int, rows: Tensor | None = None) -> Tensor:
        """All heads' states after local position t in the HF cache layout [B, Hv, d_k, d_v] (role order); ``rows``:
        only those batch rows."""
        heads = tuple(range(call.num_heads))
        return call.states_at(heads, t) if rows is None else call.states_for_rows(heads, t, rows)

    @property
    def final_norm(self) -> nn.Module:
        return self.decoder.norm

    @contextlib.contextmanager
    def readout_inputs(self, layer: int) -> Iterator[dict[str, Tensor]]:
        """Records ``z`` [B, T, H·d_v], the gate of the layer's gated RMSNorm ``norm(o, z)``."""
        module, store = self._modules[layer], {}

        def shape(mod, args, kwargs):
            store["_bt"] = (args[0] if args else kwargs["hidden_states"]).shape[:2]

        def grab(mod, args):
            store["z"] = args[1].detach().reshape(*store.pop("_bt"), -1)

        handles = [module.register_forward_pre_hook(shape, with_kwargs=True),
                   module.norm.register_forward_pre_hook(grab)]
        try:
            yield store
        finally:
            for h in handles:
                h.remove()

    def readout(self, layer: int, outputs: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """``out_proj(norm(o, z))``: the gated RMSNorm acts per head."""
        module, n = self._modules[layer], outputs.shape[0]
        y = module.norm(outputs.reshape(-1, self.d_v), inputs["z"].reshape(-1, self.d_v))
        return module.out_proj(y.reshape(n, -1))

    def out_proj_slice(self, layer: int, head: int) -> Tensor:
        """W_O^h: the columns of ``out_proj`` that read head ``head``'s (normed) output, [d_model, d_v]."""
        w = self._modules[layer].out_proj.weight
        return w[:, head * self.d_v : (head + 1) * self.d_v]
