"""The Mamba-2 kernel interceptors: ``mamba2_chunk_scan`` (prefill) and ``mamba2_selective_state_update`` (decode)
are module-level globals of transformers' modeling file; writelens swaps them for these, which run the real kernel
(or the float64 recurrence on assigned trace points, or the oracle), add the exactly propagated effect of edits to
the output and the final state, call the trace points, and record the call (see :mod:`writelens.sites.mamba2`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from writelens.errors import UnsupportedModelError
from writelens.sites.base import Injection, RunSession, active_session, current_layer, current_module
from writelens.sites.kernels import ConvCapture, DeviceDispatch
from writelens.sites.mamba2_call import Mamba2Call
from writelens.sites.mamba2_oracle import effective_dt, naive_ssd
from writelens.sites.mamba2_points import input_points, output_points
from writelens.sites.points import armed_sites

__all__ = ["ChunkScanInterceptor", "StateUpdateInterceptor", "install_module", "count_tokens"]


def _apply(call: Mamba2Call, injections: list[Injection], out: Tensor, state: Tensor | None, step: bool):
    """Add the propagated effect of ``injections`` to the kernel output ([B,T,H,P], or [B,H,P] for a decode step)
    and to the final state (HF layout [B,H,P,N]; a decode step's state is updated in place)."""
    heads = sorted({inj.head for inj in injections})
    d_o, d_s = call.propagate(injections, heads)
    d_o, d_s = d_o.to(out.device), d_s.transpose(-1, -2).to(out.device)
    out = out.clone()
    if step:
        out[:, heads] = (out[:, heads].float() + d_o[:, 0]).to(out.dtype)
    else:
        out[:, :, heads] = (out[:, :, heads].float() + d_o).to(out.dtype)
    if state is not None:
        if step:
            state[:, heads] += d_s.to(state.dtype)  # the cache's own buffer, as the kernel itself does
        else:
            state = state.clone()
            state[:, heads] = (state[:, heads].float() + d_s).to(state.dtype)
    return out, state


def _finish(session: RunSession, layer: int, call: Mamba2Call, injections, out: Tensor, length: int) -> None:
    session.positions[layer] = call.offset + length
    session.injections.setdefault(layer, []).extend(injections)
    if layer in session.capture:
        call.output = out.detach() if out.ndim == 4 else out.detach()[:, None]
        call.injections = injections
        session.calls.setdefault(layer, []).append(call)


def _no_gate(z: Any) -> None:
    if z is not None:
        raise UnsupportedModelError(
            "This Mamba-2 layer passes a gate z into the SSD kernel; writelens supports transformers' Mamba2Mixer, "
            "which gates in its norm (z=None). Report the model class."
        )


class ChunkScanInterceptor:
    """Replaces ``mamba2_chunk_scan``: prefill / multi-token calls (captures, exact edits, oracle override)."""

    def __init__(self, original: Any):
        self.dispatch = DeviceDispatch(original)
        self.__wrapped__ = self.dispatch.torch_impl

    def __call__(self, hidden_states, dt, A, B, C, chunk_size, D=None, dt_bias=None, initial_states=None,
                 dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False, **kwargs):
        impl = self.dispatch.pick(hidden_states)
        kw = dict(D=D, dt_bias=dt_bias, initial_states=initial_states, dt_softplus=dt_softplus, dt_limit=dt_limit,
                  return_final_states=return_final_states)
        session, layer = active_session(), current_layer()
        sites = armed_sites(current_module())
        if layer is None or (session is None and sites is None):
            return impl(hidden_states, dt, A, B, C, chunk_size, **kw, **kwargs)
        session = session or RunSession()
        _no_gate(kwargs.get("z"))
        T = hidden_states.shape[1]
        if layer in session.capture_conv and layer in session.conv_inputs:  # drop any left padding / old columns
            session.conv_inputs[layer] = session.conv_inputs[layer][..., -T:]
        offset = session.positions.get(layer, session.start_pos)
        init = initial_states.detach().clone() if (initial_states is not None and layer in session.capture) \
            else initial_states
        dt_eff = effective_dt(dt.float(), dt_bias, dt_softplus, dt_limit)
        assigned = input_points(sites, hidden_states, dt_eff, A, B, C) if sites is not None else None
        if assigned is not None:
            x_, dt_, decay_, b_, c_ = assigned
            call = Mamba2Call(x_, dt_, A, b_, c_, D, init, offset, log_decay=decay_)
        else:
            call = Mamba2Call(hidden_states, dt_eff, A, B, C, D, init, offset)
        injections = [inj for e in session.edits_for(layer) for inj in call.resolve(e)]
        if assigned is not None:  # the float64 recurrence on the assigned inputs; the D skip keeps the native x
            y, last = naive_ssd(x_, dt_, A, b_, c_, None, initial_states, injections, offset, log_decay=decay_)
            if D is not None:
                y = y + D.double().to(y.device)[:, None] * hidden_states.double()
            res = (y.to(hidden_states.dtype), last.float()) if return_final_states else y.to(hidden_states.dtype)
        elif session.kernel_override is not None:
            res = session.kernel_override.chunk(hidden_states, dt, A, B, C, chunk_size, injections=injections,
                                                offset=offset, **kw)
        else:
            res = impl(hidden_states, dt, A, B, C, chunk_size, **kw, **kwargs)
        out, state = res if return_final_states else (res, None)
        if injections and session.kernel_override is None and assigned is None:
            out, state = _apply(call, injections, out, state, step=False)
        if sites is not None:
            out, state = output_points(sites, out, state)
        out = session.hook_output(layer, out)
        _finish(session, layer, call, injections, out, T)
        return (out, state) if return_final_states else out


class StateUpdateInterceptor:
    """Replaces ``mamba2_selective_state_update``: one decode token; the cached state is updated in place."""

    def __init__(self, original: Any):
        self.dispatch = DeviceDispatch(original)
        self.__wrapped__ = self.dispatch.torch_impl

    def __call__(self, state, hidden_states, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, z=None,
                 **kwargs):
        impl = self.dispatch.pick(hidden_states)
        session, layer = active_session(), current_layer()
        sites = armed_sites(current_module())
        if layer is None or (session is None and sites is None):
            return impl(state, hidden_states, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=dt_softplus, z=z,
                        **kwargs)
        session = session or RunSession()
        _no_gate(z)
        offset = session.positions.get(layer, session.start_pos)
        dt_eff = effective_dt(dt[..., 0].float(), None if dt_bias is None else dt_bias[..., 0], dt_softplus, None)
        init = state.detach().clone() if layer in session.capture else None
        x1, dt1, a1, b1, c1 = hidden_states[:, None], dt_eff[:, None], A[:, 0, 0], B[:, None], C[:, None]
        assigned = input_points(sites, x1, dt1, a1, b1, c1) if sites is not None else None
        if assigned is not None:
            x_, dt_, decay_, b_, c_ = assigned
            call = Mamba2Call(x_, dt_, a1, b_, c_, None if D is None else D[:, 0], init, offset, log_decay=decay_)
        else:
            call = Mamba2Call(x1, dt1, a1, b1, c1, None if D is None else D[:, 0], init, offset)
        injections = [inj for e in session.edits_for(layer) for inj in call.resolve(e)]
        if assigned is not None:  # one float64 step on the assigned inputs (the cached state updated in place)
            y, last = naive_ssd(x_, dt_, a1, b_, c_, None, state, injections, offset, log_decay=decay_)
            if D is not None:
                y = y + D[:, 0].double().to(y.device)[:, None] * x1.double()
            state.copy_(last.to(state.dtype))
            out = y[:, 0].to(hidden_states.dtype)
        elif session.kernel_override is not None:
            out = session.kernel_override.step(state, hidden_states, dt, A, B, C, D, dt_bias=dt_bias,
                                               dt_softplus=dt_softplus, injections=injections, offset=offset)
        else:
            out = impl(state, hidden_states, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=dt_softplus, z=z, **kwargs)
            if injections:
                out, _ = _apply(call, injections, out, state, step=True)
        if sites is not None:
            y, new_state = output_points(sites, out[:, None], state)
            out = y[:, 0]
            if new_state is not state:
                state.copy_(new_state)
        _finish(session, layer, call, injections, out, 1)
        return out


def install_module(module: Any) -> None:
    """Patch one modeling module's kernel globals once."""
    if getattr(module, "_writelens_mamba2", False):
        return
    module.mamba2_chunk_scan = ChunkScanInterceptor(module.mamba2_chunk_scan)
    module.mamba2_selective_state_update = StateUpdateInterceptor(module.mamba2_selective_state_update)
    module.causal_conv1d_fn = ConvCapture(module.causal_conv1d_fn)
    module.causal_conv1d_update = DeviceDispatch(module.causal_conv1d_update)
    module._writelens_mamba2 = True


def count_tokens(module, args, kwargs, output) -> None:
    """Backbone forward hook: HF's Mamba-2 cache holds no token count, so writelens keeps one on the cache."""
    cache = kwargs.get("cache", kwargs.get("cache_params"))
    for name in ("cache_params", "past_key_values", "cache"):
        if cache is None:
            cache = getattr(output, name, None)
    if cache is None:
        return
    x = args[0] if args and args[0] is not None else kwargs.get("input_ids")
    if x is None:
        x = kwargs.get("inputs_embeds")
    cache._writelens_length = getattr(cache, "_writelens_length", 0) + int(x.shape[1])
