"""Mamba-2 trace points: the ``write_sites`` modules of a ``Mamba2Mixer`` (see :mod:`writelens.sites.points`).

==========  ===============================  ==========================================================
point       value (heads on axis 2)          assigning it
==========  ===============================  ==========================================================
``query``   C [B, T, H, N] (per head)        the read uses the new C
``key``     B [B, T, H, N] (per head)        the write uses the new B
``value``   x [B, T, H, P]                   the write uses the new x (the ``D·x`` skip keeps the native x)
``beta``    dt [B, T, H] (effective)         write strength *and* the decay ``exp(dt·A)``, as in the model
``gate``    dt·A [B, T, H] (log-decay ≤ 0)   the decay only
``write``   (key, value, beta)               same as assigning the three
``read``    y [B, T, H, P] (D skip incl.)    replaces the head outputs before the gated norm
``state``   S_T [B, H, N, P] (role order)    replaces the final state stored in the cache
==========  ===============================  ==========================================================

B and C are shared by the heads of a group in the model; the points give one copy per head, so assigning one head's
copy changes that head alone. Assigned input points make the layer run the float64 per-token recurrence
(:func:`~writelens.sites.mamba2_oracle.naive_ssd`) on the assigned inputs, edits included: exact, not linearised.
"""

from __future__ import annotations

from torch import Tensor

from writelens.sites.points import WriteSites, call_input_points, changed

__all__ = ["Assigned", "input_points", "output_points"]

Assigned = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # x, dt, log_decay, B, C (per head: [B, T, H, N])


def input_points(sites: WriteSites, x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor) -> Assigned | None:
    """Call the input points on x [B,T,H,P], effective dt [B,T,H], A [H], B / C [B,T,G,N]; returns the assigned
    inputs (B and C per head) or None when nothing was assigned."""
    rep = x.shape[2] // Bm.shape[2]
    log_decay = (dt.double() * A.double().to(dt.device)).float()
    given = {
        "query": Cm.float().repeat_interleave(rep, 2),
        "key": Bm.float().repeat_interleave(rep, 2),
        "value": x.float().clone(),
        "beta": dt.float().clone(),
        "gate": log_decay.clone(),
    }
    new, flags = call_input_points(sites, given)
    if not any(flags.values()):
        return None
    gate = new["gate"] if flags["gate"] else new["beta"].double() * A.double().to(dt.device)
    return new["value"].float(), new["beta"].float(), gate.double(), new["key"].float(), new["query"].float()


def output_points(sites: WriteSites, out: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Call ``read`` on y [B, T, H, P] and ``state`` on the final state (HF layout [B, H, P, N], shown in role order
    [B, H, N, P]); returns both, assigned or not (the state back in HF layout)."""
    out = sites.read(out)
    if state is not None:
        role = state.transpose(-1, -2)
        version = role._version
        new = sites.state(role)
        if changed(role, version, new) and new is not role:
            state = new.transpose(-1, -2).contiguous().to(state.dtype)
    return out, state
