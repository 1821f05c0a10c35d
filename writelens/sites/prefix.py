"""One native pass kept, edited rows continued from it: the default for models that keep their recurrent layers in
an HF ``DynamicCache`` (Qwen3.5 / Qwen3-Next GDN, Mamba-2); a family whose cache differs overrides
``FamilyAdapter.record_native`` / ``continue_rows`` (RWKV-7).

An edit at layer ``l``, position ``p`` changes nothing below ``l`` and nothing before ``p``. So the native forward
over the passages records the input of each layer an edit may start at, the kernel calls and pre-conv streams of
the recurrent layers from the lowest of them on, and the attention KV (the HF cache). An edited row then runs only
positions ``[s0, T)`` of layers ``≥ low``: the layers below ``low`` are short-circuited to their recorded output,
and an HF cache built at ``s0`` (attention KV of ``[0, s0)``, the conv history, the exact recurrent state after
``s0 − 1``) stands in for the prefix. The edit itself is applied by the interceptors, exactly, inside layer ``low``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from writelens.sites.session import RunSession, session_scope

__all__ = ["NativeRecord", "record_native", "continue_rows", "short_circuit", "record_inputs"]


@dataclass
class NativeRecord:
    """What one native forward over passages ``ids`` [N, T] keeps so that edited rows can continue from it.

    ``logits`` [N, T, V]; ``inputs``: decoder layer → its input hidden states [N, T, d_model] (for each layer an
    edited row may start at); ``session``: the kernel calls (and pre-conv streams) of every recurrent layer from
    ``first_layer`` on; ``cache``: the native run's HF cache (attention KV); ``extra``: what a family adds.
    """

    ids: Int[Tensor, "N T"]
    logits: Float[Tensor, "N T V"]
    inputs: dict[int, Tensor]
    session: RunSession
    cache: Any
    first_layer: int
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def short_circuit(layers: Sequence[torch.nn.Module], hidden: Tensor) -> Iterator[None]:
    """Make ``layers`` return ``hidden`` without computing (instance-level forward override)."""

    def skip(*args, **kwargs):
        return hidden

    for layer in layers:
        layer.forward = skip
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def record_inputs(layers: dict[int, torch.nn.Module], store: dict[int, Tensor]) -> list[Any]:
    """Forward pre-hooks that keep each layer's input hidden states in ``store`` (remove the returned handles)."""
    handles = []
    for idx, layer in layers.items():
        def hook(module, args, kwargs, idx=idx):
            hs = args[0] if args else kwargs["hidden_states"]
            store[idx] = hs.detach()

        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


def record_native(adapter: Any, ids: Int[Tensor, "N T"], layers: Sequence[int], logits_to_keep: int = 0
                  ) -> NativeRecord:
    """The native forward over ``ids`` with what :func:`continue_rows` needs for rows whose lowest edited layer is
    one of ``layers`` (its logits: of the last ``logits_to_keep`` positions only when > 0)."""
    first = min(layers)
    inputs: dict[int, Tensor] = {}
    handles = record_inputs({i: adapter.layers[i] for i in set(layers)}, inputs)
    recorded = frozenset(i for i in adapter.layer_modules if i >= first)
    session = RunSession(capture=recorded, capture_conv=recorded)
    cache = adapter.new_cache()
    try:
        with torch.no_grad(), session_scope(session, adapter.layer_modules):
            logits = adapter.forward(ids, cache=cache, use_cache=True, logits_to_keep=logits_to_keep).logits
    finally:
        for h in handles:
            h.remove()
    return NativeRecord(ids=ids, logits=logits, inputs=inputs, session=session, cache=cache, first_layer=first)


def continue_rows(adapter: Any, record: NativeRecord, src: Int[Tensor, " n"], s0: int, low: int,
                  edits: list[Any], logits_to_keep: int = 0, stop: int = 0) -> Float[Tensor, "n L V"]:
    """Logits of positions ``[s0, stop)`` (``stop`` 0: T; the last ``logits_to_keep`` of them when > 0) of the
    native rows ``src`` with ``edits`` applied (their ``batch`` indexes ``src``; none before ``s0`` or below layer
    ``low``, which must be one of the recorded layers)."""
    T = stop or record.ids.shape[1]
    cache = adapter.new_cache() if s0 == 0 else prefix_cache(adapter, record, src, s0, low)
    hidden = record.inputs[low][src, s0:T]
    pos_ids = torch.arange(s0, T, device=record.ids.device)[None].expand(len(src), -1)
    run = RunSession(edits=edits, start_pos=s0)
    with torch.no_grad(), short_circuit([adapter.layers[i] for i in range(low)], hidden), \
            session_scope(run, adapter.layer_modules):
        out = adapter.forward(record.ids[src, s0:T], cache=cache, use_cache=True, position_ids=pos_ids,
                              logits_to_keep=logits_to_keep)
    return out.logits


def prefix_cache(adapter: Any, record: NativeRecord, src: Tensor, s0: int, low: int) -> Any:
    """An HF cache holding positions [0, s0) of the native rows ``src``: recurrent layers from ``low`` on (those
    below are short-circuited and never read theirs), every attention layer's KV (transformers counts the cached
    length on the first attention layer)."""
    cache = adapter.new_cache()
    session = record.session
    for i, layer in enumerate(cache.layers):
        if i in adapter.layer_modules:
            if i < low:
                continue  # short-circuited: its cache is never read
            call = session.calls[i][0]
            state = adapter.hf_state(call, s0 - 1, rows=src)
            conv_in = session.conv_inputs[i][src]  # [n, conv_dim, T]
            k = adapter.conv_kernel_size(i)
            hist = conv_in[..., max(0, s0 - k) : s0]
            if hist.shape[-1] < k:
                hist = torch.nn.functional.pad(hist, (k - hist.shape[-1], 0))
            layer.lazy_initialization(conv_states=hist, conv_kernel_size=k)
            layer.conv_states[0].copy_(hist)
            layer.update_recurrent_state(state.to(layer.dtype or state.dtype).contiguous())
            layer.has_previous_state[0] = True
        else:
            src_layer = record.cache.layers[i]
            layer.update(src_layer.keys[src, :, :s0].clone(), src_layer.values[src, :, :s0].clone())
    return cache
