"""RWKV-7's native pass and continued rows (its ``RWKV7Cache`` holds per layer the state and the two token-shift
inputs instead of a conv history; see ``writelens.sites.prefix`` for the scheme)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from writelens.sites.prefix import NativeRecord
from writelens.sites.session import RunSession, session_scope

__all__ = ["record_native", "continue_rows"]


def record_native(adapter: Any, ids: Int[Tensor, "N T"], layers: Sequence[int], logits_to_keep: int = 0
                  ) -> NativeRecord:
    """The native forward over ``ids``: captured calls of the layers from the lowest of ``layers`` on, each of
    those layers' block / TimeMix / ChannelMix inputs ([N, T, C]) and block 0's ``v_first``."""
    first = min(layers)
    seen: dict[str, Any] = {"block": {}, "attn": {}, "ffn": {}, "v_first": None}
    session = RunSession(capture=frozenset(i for i in adapter.layer_modules if i >= first))
    with torch.no_grad(), _recording(adapter.layers, first, seen), session_scope(session, adapter.layer_modules):
        logits = adapter.forward(ids, logits_to_keep=logits_to_keep).logits
    return NativeRecord(ids=ids, logits=logits, inputs=seen["block"], session=session, cache=None,
                        first_layer=first, extra=seen)


def continue_rows(adapter: Any, record: NativeRecord, src: Int[Tensor, " n"], s0: int, low: int,
                  edits: list[Any], logits_to_keep: int = 0, stop: int = 0) -> Float[Tensor, "n L V"]:
    """Logits of positions ``[s0, stop)`` (``stop`` 0: T; the last ``logits_to_keep`` of them when > 0) of the
    native rows ``src`` with ``edits`` applied (``batch`` indexes ``src``)."""
    T = stop or record.ids.shape[1]
    ids = record.ids[src, :T]
    if s0 == 0:
        with torch.no_grad(), session_scope(RunSession(edits=edits), adapter.layer_modules):
            return adapter.forward(ids, logits_to_keep=logits_to_keep).logits
    seen, calls = record.extra, record.session.calls
    cache = adapter.new_cache()
    for i in range(low, len(adapter.layers)):
        state = adapter.hf_state(calls[i][0], s0 - 1, rows=src)
        cache.set_layer(i, state, seen["attn"][i][src, s0 - 1].clone(), seen["ffn"][i][src, s0 - 1].clone())
    cache.seen_tokens = s0
    skipped = [adapter.layers[i] for i in range(low)]
    run = RunSession(edits=edits, start_pos=s0)
    with torch.no_grad(), _short_circuit(skipped, seen["block"][low][src, s0:T], seen["v_first"][src, s0:T]), \
            session_scope(run, adapter.layer_modules):
        return adapter.forward(ids[:, s0:], cache=cache, use_cache=True, logits_to_keep=logits_to_keep).logits


@contextlib.contextmanager
def _recording(layers, first: int, seen: dict[str, Any]) -> Iterator[None]:
    """Record, during one forward, the inputs of blocks / TimeMix / ChannelMix from layer ``first`` on ([B, T, C])
    and block 0's ``v_first`` output."""
    handles = []

    def keep(kind: str, i: int):
        def hook(module, args):
            seen[kind][i] = args[0].detach()
        return hook

    for i in range(first, len(layers)):
        handles += [layers[i].register_forward_pre_hook(keep("block", i)),
                    layers[i].attn.register_forward_pre_hook(keep("attn", i)),
                    layers[i].ffn.register_forward_pre_hook(keep("ffn", i))]
    handles.append(layers[0].register_forward_hook(lambda m, a, out: seen.__setitem__("v_first", out[4].detach())))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _short_circuit(blocks, hidden: Tensor, v_first: Tensor) -> Iterator[None]:
    """Make ``blocks`` return the recorded ``hidden`` and ``v_first`` (their states pass through unused)."""

    def skip(hidden_states, recurrent, attention_shift, ffn_shift, first, mask):
        return hidden, recurrent, attention_shift, ffn_shift, v_first

    for block in blocks:
        block.forward = skip
    try:
        yield
    finally:
        for block in blocks:
            del block.forward
