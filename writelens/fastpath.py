"""Edited runs that reuse the native prefix.

An edited row differs from the native run only from the lowest edited layer ``L`` on, and only from its first edit
position ``s0`` on. So: run the native forward once over the distinct rows (recording the input of layer ``L``, the
pre-conv streams and kernel calls of the recurrent layers, and the attention KV), then, for groups of edited rows,
continue from an HF cache built at ``s0`` — attention KV of ``[0, s0)``, conv history and exact recurrent states at
``s0 − 1`` — running only positions ``[s0, T)``, with layers below ``L`` short-circuited to their recorded output.
The result equals the full edited forward (tested); it is what makes thousands of firings cheap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from writelens.edits import Edit, edit_positions, edit_rows
from writelens.sites.base import RunSession, session_scope

GROUP_ROWS = 8  # edited rows continued together (sorted by first edit position, so little is recomputed)


@contextlib.contextmanager
def _short_circuit(layers: Sequence[torch.nn.Module], hidden: Tensor) -> Iterator[None]:
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


def _record_inputs(layers: dict[int, torch.nn.Module], store: dict[int, Tensor]):
    handles = []
    for idx, layer in layers.items():
        def hook(module, args, kwargs, idx=idx):
            hs = args[0] if args else kwargs["hidden_states"]
            store[idx] = hs.detach()

        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


def run_with_prefix_reuse(lens, ids: Tensor, edits: list[Edit]) -> Tensor:
    """Logits [B, T, V] of the edited run, computed by native prefix reuse (see module docstring)."""
    adapter = lens.adapter
    B, T = ids.shape
    uniq, inverse = torch.unique(ids, dim=0, return_inverse=True)
    per_row: dict[int, list[Edit]] = {}
    for e in edits:
        for r in edit_rows(e, B):
            per_row.setdefault(r, []).append(e)
    low_layers = {min(e.layer for e in es) for es in per_row.values()}
    first_low = min(low_layers)
    rec_layers = [i for i in adapter.layer_modules if i >= first_low]

    # 1. native pass over the distinct rows
    inputs: dict[int, Tensor] = {}
    handles = _record_inputs({i: adapter.layers[i] for i in low_layers}, inputs)
    session = RunSession(capture=frozenset(rec_layers), capture_conv=frozenset(rec_layers))
    native_cache = adapter.new_cache()
    try:
        with torch.no_grad(), session_scope(session, adapter.layer_modules):
            native = adapter.forward(uniq, cache=native_cache, use_cache=True).logits
    finally:
        for h in handles:
            h.remove()
    logits = native[inverse].clone()

    # 2. groups of edited rows, sorted by first edit position
    rows = sorted(per_row, key=lambda r: min(p for e in per_row[r] for p in edit_positions(e)))
    for g0 in range(0, len(rows), GROUP_ROWS):
        group = rows[g0 : g0 + GROUP_ROWS]
        group_edits = [(r, e) for r in group for e in per_row[r]]
        s0 = min(p for _, e in group_edits for p in edit_positions(e))
        low = min(e.layer for _, e in group_edits)
        src = inverse[torch.tensor(group)]
        remapped = [_remap(e, i) for i, r in enumerate(group) for e in per_row[r]]
        # s0 == 0: no prefix to reuse, but the layers below `low` are still short-circuited (fresh cache)
        cache = adapter.new_cache() if s0 == 0 else _prefix_cache(adapter, native_cache, session, src, s0)
        hidden = inputs[low][src, s0:]
        pos_ids = torch.arange(s0, T, device=ids.device)[None].expand(len(group), -1)
        run = RunSession(edits=remapped, start_pos=s0)
        with torch.no_grad(), _short_circuit([adapter.layers[i] for i in range(low)], hidden), \
                session_scope(run, adapter.layer_modules):
            out = adapter.forward(ids[group, s0:], cache=cache, use_cache=True, position_ids=pos_ids)
        logits[group, s0:] = out.logits
    return logits


def _remap(edit: Edit, row: int) -> Edit:
    from dataclasses import replace

    return replace(edit, batch=row)


def _prefix_cache(adapter, native_cache, session: RunSession, src: Tensor, s0: int):
    """An HF cache holding positions [0, s0) of the native rows ``src``."""
    cache = adapter.new_cache()
    for i, layer in enumerate(cache.layers):
        if i in adapter.layer_modules:
            if i not in session.calls:
                continue  # below every edited layer: short-circuited, never read
            call = session.calls[i][0]
            state = adapter.hf_state(call, s0 - 1)[src]
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
            src_layer = native_cache.layers[i]
            layer.update(src_layer.keys[src, :, :s0].clone(), src_layer.values[src, :, :s0].clone())
    return cache
