"""The per-run write cache: factors, reads, outputs and exact states of every captured site."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from writelens.errors import (
    NotRecurrentLayerError,
    PositionOutOfRangeError,
    SiteNotCapturedError,
    SiteOutOfRangeError,
)
from writelens.sites.base import RecurrentCall, Site, WriteFactors
from writelens.validate import as_int

__all__ = ["WriteCache", "WriteFactors"]


def _nonempty(positions: Sequence[int]) -> list:
    """``positions`` as a list, or :class:`PositionOutOfRangeError` when it is empty or not a sequence."""
    if isinstance(positions, (str, bytes)) or not hasattr(positions, "__iter__"):
        raise PositionOutOfRangeError(f"positions={positions!r} is not a list of positions; pass e.g. [3, 7].")
    listed = positions.tolist() if isinstance(positions, Tensor) else list(positions)
    if not listed:
        raise PositionOutOfRangeError("positions is empty; pass at least one position (states of no position would "
                                      "be an empty tensor).")
    return listed


class WriteCache:
    """What ``lens.run(..., cache=True)`` recorded.

    Factors are kept as the kernel received them (a few vectors per token); states are recomputed exactly on
    request from cached chunk-boundary states (at most one chunk of local recompute), never all T at once.
    """

    def __init__(self, calls: dict[int, RecurrentCall], sites: Sequence[Site], recurrent_layers: Sequence[int],
                 num_layers: int):
        self._calls = calls
        self.sites = [s for s in sites if s.layer in calls]
        self._recurrent = set(recurrent_layers)
        self._num_layers = num_layers
        first = next(iter(calls.values()), None)
        self.batch_size = first.batch_size if first else 0
        self.seq_len = first.length if first else 0

    def __repr__(self) -> str:
        return f"WriteCache(layers={sorted(self._calls)}, batch={self.batch_size}, seq_len={self.seq_len})"

    def _call(self, layer: int, head: int) -> RecurrentCall:
        layer = as_int(layer, "layer", SiteOutOfRangeError)
        head = as_int(head, "head", SiteOutOfRangeError)
        if not 0 <= layer < self._num_layers:
            raise SiteOutOfRangeError(f"layer {layer} is outside the model's {self._num_layers} layers.")
        if layer not in self._recurrent:
            raise NotRecurrentLayerError(
                f"layer {layer} is not a recurrent (linear-attention) layer; recurrent layers: {sorted(self._recurrent)}."
            )
        if layer not in self._calls:
            raise SiteNotCapturedError(
                f"layer {layer} was not captured in this run (captured: {sorted(self._calls)}); "
                "pass sites=None or include it in sites=[...]."
            )
        call = self._calls[layer]
        if not 0 <= head < call.num_heads:
            raise SiteOutOfRangeError(f"head {head} is outside layer {layer}'s {call.num_heads} value heads.")
        return call

    def _pos(self, call: RecurrentCall, pos: int) -> int:
        t = as_int(pos, "position", PositionOutOfRangeError)
        if t < 0:
            t += call.length
        if not 0 <= t < call.length:
            raise PositionOutOfRangeError(
                f"position {pos} is outside the run's {call.length} tokens (valid: 0..{call.length - 1} or negative)."
            )
        return t

    def write(self, layer: int, head: int) -> WriteFactors:
        """The write factors of a site: key k̂ [B,T,d_k], value [B,T,d_v], beta [B,T], g/alpha [B,T], query q̂
        [B,T,d_k] (L2-normalised; the read multiplies by ``scale`` = d_k^-1/2), output o [B,T,d_v]."""
        return self._call(layer, head).factors(head)

    def write_matrix(self, layer: int, head: int, pos: int) -> Float[Tensor, "B d_k d_v"]:
        """The native write ``β k̂ vᵀ`` at ``pos`` as a dense matrix."""
        call = self._call(layer, head)
        t = self._pos(call, pos)
        key, value, coef = call.write_factors(torch.arange(call.batch_size), head, t)
        return coef[:, None, None] * key[:, :, None] * value[:, None, :]

    def output(self, layer: int, head: int) -> Float[Tensor, "B T d_v"]:
        """The head's kernel output o (before the gated norm and out_proj)."""
        return self.write(layer, head).output

    def outputs(self, layer: int) -> Float[Tensor, "B T H d_v"]:
        """Every head's kernel output o of a layer, as the layer received it (edits included)."""
        call = self._call(layer, 0)
        return call.output.float() if call.output.ndim == 4 else call.output.float()[:, None]

    def recurrent_call(self, layer: int) -> RecurrentCall:
        """The recorded kernel call of a layer (its factors, exact propagation and states; advanced use)."""
        return self._call(layer, 0)

    def state(self, layer: int, head: int, pos: int | Int[Tensor, " B"]) -> Float[Tensor, "B d_k d_v"]:
        """Exact state ``S_pos`` after the write at ``pos``; ``pos`` an int, or a LongTensor [B] (one per row)."""
        call = self._call(layer, head)
        if isinstance(pos, Tensor) and pos.ndim > 1:
            raise PositionOutOfRangeError(f"pos has shape {tuple(pos.shape)}; pass an int or a [B] tensor (one per row).")
        if isinstance(pos, Tensor) and pos.ndim == 1:
            if pos.dtype.is_floating_point or pos.dtype == torch.bool:
                raise PositionOutOfRangeError(f"pos has dtype {pos.dtype}; pass integer positions (e.g. pos.long()).")
            if pos.shape[0] != call.batch_size:
                raise PositionOutOfRangeError(
                    f"pos has {pos.shape[0]} entries but the batch has {call.batch_size} rows; give one per row."
                )
            out = None
            for t in torch.unique(pos).tolist():
                rows = (pos == t).nonzero().flatten()
                state = call.state_at(head, self._pos(call, t))
                out = torch.empty_like(state) if out is None else out
                out[rows.to(state.device)] = state[rows.to(state.device)]
            return out
        return call.state_at(head, self._pos(call, pos))

    def states(self, layer: int, head: int, positions: Sequence[int]) -> Float[Tensor, "B P d_k d_v"]:
        """States at several positions (ascending order is fastest): [B, P, d_k, d_v]. Positions are integers (a list or
        a 1-D tensor, at least one; negative ones count from the end); floats are refused, never truncated."""
        call = self._call(layer, head)
        ts = [self._pos(call, p) for p in _nonempty(positions)]
        order = sorted(range(len(ts)), key=ts.__getitem__)
        out = None
        for i in order:
            state = call.state_at(head, ts[i])
            if out is None:
                out = state.new_empty(call.batch_size, len(ts), call.d_k, call.d_v)
            out[:, i] = state
        return out

    def layer_states(self, layer: int, positions: Sequence[int]) -> Float[Tensor, "B P H d_k d_v"]:
        """States of every head of ``layer`` at several positions, [B, P, H, d_k, d_v]: one sweep of the model's
        kernel for all heads where the family has one (GDN), else per head; ascending positions are fastest."""
        call = self._call(layer, 0)
        ts = [self._pos(call, p) for p in _nonempty(positions)]
        heads = tuple(range(call.num_heads))
        many = call.states_many(heads, ts) if hasattr(call, "states_many") else None
        if many is not None:  # every position in one kernel call from the kernel's own boundary states (GDN)
            return many
        out = None
        for i in sorted(range(len(ts)), key=ts.__getitem__):
            if hasattr(call, "states_at"):
                state = call.states_at(heads, ts[i])
            else:
                state = torch.stack([call.state_at(h, ts[i]) for h in heads], 1)
            if out is None:
                out = state.new_empty(call.batch_size, len(ts), *state.shape[1:])
            out[:, i] = state
        return out

    def final_state(self, layer: int, head: int) -> Float[Tensor, "B d_k d_v"]:
        """The state after the last token (what the HF cache holds after this run)."""
        call = self._call(layer, head)
        return call.state_at(head, call.length - 1)
