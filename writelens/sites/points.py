"""Write sites as ordinary modules, so nnsight (or any module hook) can read and assign them.

writelens adds a parameter-free child ``write_sites`` to every recurrent mixer (e.g.
``model.model.layers[0].linear_attn.write_sites``). Its points are identity modules that the kernel interceptor
calls, in this order, inside the layer's forward:

==========  ============================  =============================================================
point       value (heads on axis 2)       assigning it
==========  ============================  =============================================================
``query``   q̂ [B, T, H, d_k] (unit)       the read uses the new query
``key``     k̂ [B, T, H, d_k] (unit)       write *and* erase use the new key (as the model would)
``value``   v [B, T, H, d_v]              the write uses the new value
``beta``    β [B, T, H]                   write strength (and erase strength)
``gate``    g [B, T, H] (log-decay ≤ 0)   the decay α = exp(g)
``write``   (key, value, beta) tuple      same as assigning the three
``read``    o [B, T, H, d_v]              replaces the head outputs (the reads) before the gated norm
``state``   S_T [B, H, d_k, d_v]          replaces the final state stored in the cache (when there is one)
==========  ============================  =============================================================

The table is Gated DeltaNet's; Mamba-2 (:mod:`writelens.sites.mamba2_points`) and RWKV-7
(:mod:`writelens.sites.rwkv7_points`) give the same points their family's meaning.
The head output point is named ``read`` (o_t = scale · S_tᵀ q̂_t) because ``.output`` is nnsight's own attribute.
Input points (query … write) that were assigned make the layer re-run its own kernel on the modified, already
normalised inputs — exact, not linearised. Heads are value heads (keys/queries are expanded when key heads are
shared). Points are only called while armed (``lens.trace`` arms them; ``lens.arm_trace_points(False)``
disarms), so ordinary runs pay nothing.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

POINTS = ("query", "key", "value", "beta", "gate", "write", "read", "state")


class TracePoint(nn.Module):
    """An identity module: its input is the value at this point; hooks may replace its output."""

    def forward(self, value: Any) -> Any:
        return value


class WriteSites(nn.Module):
    """The trace points of one recurrent layer (see the module docstring). Holds no parameters."""

    def __init__(self, layer: int, num_heads: int, d_k: int, d_v: int):
        super().__init__()
        self.layer, self.num_heads, self.d_k, self.d_v = layer, num_heads, d_k, d_v
        self.armed = False
        for name in POINTS:
            self.add_module(name, TracePoint())

    def extra_repr(self) -> str:
        return f"layer={self.layer}, heads={self.num_heads}, d_k={self.d_k}, d_v={self.d_v}, armed={self.armed}"


def changed(before: Tensor, version: int, after: Any) -> bool:
    """Whether a point's value was replaced or modified in place."""
    return after is not before or getattr(after, "_version", version) != version


def call_input_points(sites: WriteSites, given: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, bool]]:
    """Call the input points in firing order on ``given`` (``query, key, value, beta, gate``; each its own tensor),
    then ``write`` on ``(key, value, beta)``. Returns the values after any assignment and, per name, whether it was
    replaced or modified in place (an assigned ``write`` marks ``key``, ``value`` and ``beta``)."""
    new, flags = {}, {}
    for name in ("query", "key", "value", "beta", "gate"):
        value = given[name]
        version = value._version
        new[name] = getattr(sites, name)(value)
        flags[name] = changed(value, version, new[name])
    write = (new["key"], new["value"], new["beta"])
    versions = [t._version for t in write]
    written = sites.write(write)
    if written is not write or any(t._version != v for t, v in zip(written, versions, strict=True)):
        new["key"], new["value"], new["beta"] = written
        flags.update(key=True, value=True, beta=True)
    return new, flags


def armed_sites(module: Any) -> WriteSites | None:
    """The armed ``write_sites`` of ``module`` (the running mixer), or None."""
    sites = getattr(module, "write_sites", None)
    return sites if isinstance(sites, WriteSites) and sites.armed else None


def attach(mixer: nn.Module, layer: int, num_heads: int, d_k: int, d_v: int) -> WriteSites:
    """Add (once) the ``write_sites`` child to a recurrent mixer module."""
    sites = getattr(mixer, "write_sites", None)
    if not isinstance(sites, WriteSites):
        sites = WriteSites(layer, num_heads, d_k, d_v)
        mixer.add_module("write_sites", sites)
    return sites
