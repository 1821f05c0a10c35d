"""The pieces of the logit attribution that follow a state perturbation to the logits, for every family.

- :func:`native_point`: one native run recording the site's factors, every head's kernel output o, the readout's
  other inputs (gates), the residual entering the final norm, and the recorded kernel call;
- :func:`propagate_delta`: the exact in-layer effect δo of perturbations added to ``S_{t0}`` (the family's own
  exact propagation, :meth:`RecurrentCall.propagate`, which the tests hold against the float64 oracles);
- :func:`direct_path`: δo through the readout (gated norm, out projection) and the final norm, linearised at the
  native point (forward-mode JVP of the real modules), skipping the same layer's MLP and later layers;
- :func:`downstream_gradients`: ∂ℓ_t[tok]/∂o_s through the whole network, by backpropagation to o made a leaf
  at the kernel interceptor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from writelens.sites.base import Injection, RecurrentCall, RunSession, WriteFactors, session_scope

__all__ = ["NativePoint", "native_point", "propagate_delta", "direct_path", "downstream_gradients"]


@dataclass
class NativePoint:
    """Native quantities of one site along passages, [B, T, ...] each.

    ``factors``: the site's write factors (key, query, beta, alpha, scale, output); ``key_decay`` [B, T, d_k]: the
    diagonal of the transition at each position (GDN and Mamba-2: the scalar α on every channel; RWKV-7: its
    per-channel decay w; the erase / rank-1 term left out); ``outputs`` [B, T, H, d_v]: every head's kernel output;
    ``readout_inputs``: the readout's other inputs (see ``FamilyAdapter.readout``); ``residual`` [B, T, d_model]:
    the residual stream entering the final norm; ``call``: the recorded kernel call of the layer.
    """

    head: int
    logits: Float[Tensor, "B T V"]
    factors: WriteFactors
    key_decay: Float[Tensor, "B T d_k"]
    outputs: Float[Tensor, "B T H d_v"]
    readout_inputs: dict[str, Tensor]
    residual: Float[Tensor, "B T d_model"]
    write_norm: Float[Tensor, "B T"]
    call: RecurrentCall

    @property
    def output(self) -> Float[Tensor, "B T d_v"]:
        """The site's own kernel output o."""
        return self.factors.output

    @property
    def query(self) -> Float[Tensor, "B T d_k"]:
        return self.factors.query

    @property
    def scale(self) -> float:
        return self.factors.scale


@torch.no_grad()
def native_point(lens, layer: int, head: int, ids: Tensor) -> NativePoint:
    """One native run over ``ids`` [B, T] recording what the attribution linearises around (see NativePoint)."""
    seen: dict[str, Tensor] = {}

    def grab_final(mod, args):
        seen["h"] = args[0].detach()

    handle = lens.adapter.final_norm.register_forward_pre_hook(grab_final)
    try:
        with lens.adapter.readout_inputs(layer) as inputs:
            out = lens.run(ids, cache=True, sites=[(layer, head)])
    finally:
        handle.remove()
    f = out.cache.write(layer, head)
    call = out.cache.recurrent_call(layer)
    transition = getattr(call, "transition", None)
    if transition is not None:  # RWKV-7: a per-channel decay (plus a rank-1 term, left out here)
        decay = transition(head)[0].float()
    else:
        decay = f.alpha[..., None].expand(*f.alpha.shape, f.key.shape[-1])
    return NativePoint(
        head=head, logits=out.logits.float(), factors=f, key_decay=decay, outputs=out.cache.outputs(layer),
        readout_inputs={k: v.float() for k, v in inputs.items()}, residual=seen["h"].float(),
        write_norm=f.beta.abs() * f.key.norm(dim=-1) * f.value.norm(dim=-1), call=call,
    )


def propagate_delta(point: NativePoint, row: int, t0: int, delta: Float[Tensor, "A d_k d_v"], t_max: int,
                    with_read: bool = True) -> Float[Tensor, "A L d_v"]:
    """Exact δo_t, t = t0 … t_max, of each perturbation ``delta[a]`` added to S_{t0} of passage ``row`` alone, by the
    family's exact propagation through the recorded transitions; [A, t_max − t0 + 1, d_v] float64."""
    call, rows = point.call, torch.tensor([row])
    out = []
    for a in range(delta.shape[0]):
        inj = Injection(call.offset + t0, point.head, rows, delta[a : a + 1].float(), with_read)
        d_o, _ = call.propagate([inj], [point.head])
        out.append(d_o[row, t0 : t_max + 1, 0].double().cpu())
    return torch.stack(out)


def direct_path(lens, layer: int, point: NativePoint, row: int, ts: list[int], d_o: Float[Tensor, "A n d_v"]
                ) -> Float[Tensor, "A n d_model"]:
    """δ of the final norm's output for head outputs changed by ``d_o`` at positions ``ts`` of passage ``row``,
    through the readout and the final norm linearised at the native point (the same layer's MLP and later layers
    skipped)."""
    a, n, dv = d_o.shape
    heads = point.outputs.shape[2]
    # .contiguous(): with one position the expand is a stride-0 view, which forward-mode AD refuses
    base = point.outputs[row, ts].to(lens.device).expand(a, n, heads, dv).reshape(a * n, heads, dv).contiguous()
    tangent = torch.zeros_like(base)
    tangent[:, point.head] = d_o.reshape(a * n, dv).to(base)
    inputs = {k: v[row, ts].to(lens.device).expand(a, n, *v.shape[2:]).reshape(a * n, *v.shape[2:]).contiguous()
              for k, v in point.readout_inputs.items()}
    _, dh = torch.func.jvp(lambda o: lens.adapter.readout(layer, o, inputs), (base,), (tangent,))
    h = point.residual[row, ts].to(lens.device).expand(a, n, -1).reshape(a * n, -1).contiguous()
    _, dhf = torch.func.jvp(lens.adapter.final_norm, (h,), (dh,))
    return dhf.reshape(a, n, -1).float().cpu()


def downstream_gradients(lens, layer: int, head: int, ids: Tensor, targets: list[tuple[int, int]]
                         ) -> Float[Tensor, "n T d_v"]:
    """∂ℓ_t[tok]/∂o_s for each (t, tok) of ``targets`` and every position s, where o is head ``head``'s kernel output
    at ``layer`` of the one passage ``ids`` [T]: one batched forward + backward at the native point (rows =
    targets), o made a leaf where the kernel returns it."""
    n = len(targets)
    store: dict[str, Tensor] = {}

    def leaf(at: int, out: Tensor) -> Tensor:
        if at != layer:
            return out
        store["o"] = out.detach().requires_grad_(True)
        return store["o"]

    session = RunSession(output_hook=leaf)
    ts = torch.tensor([t for t, _ in targets])
    toks = torch.tensor([tok for _, tok in targets])
    kept, where = torch.unique(ts, return_inverse=True)  # unembed only the target positions: [n, |kept|, V]
    with torch.enable_grad(), session_scope(session, lens.adapter.layer_modules):
        logits = lens.adapter.forward(ids.reshape(1, -1).expand(n, -1).to(lens.device), logits_to_keep=kept).logits
        (grad,) = torch.autograd.grad(logits[torch.arange(n), where, toks].sum(), store["o"])
    return grad[:, :, head].float().cpu()
