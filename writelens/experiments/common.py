"""Helpers shared by the experiments: sites and SAEs, the unembedding and out_proj slices, KL from logits, the
per-position scan of a site (native logits, states encoded by an SAE, write norms), and batched edited runs with
one firing per row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from writelens.edits import Edit
from writelens.errors import ExperimentError, SAEInputError
from writelens.experiments.base import progress
from writelens.experiments.options import KLDirection, KLPosition
from writelens.fastpath import NativePass
from writelens.provenance import check_sae_provenance

__all__ = ["site_tuple", "single_head_sae", "unembedding", "out_proj_slice", "as_passages", "kl_from_logits",
           "kl_positions", "unreachable", "Scan", "scan_site", "run_rows", "token_direction"]


def site_tuple(site: Any) -> tuple[int, int]:
    """(layer, head) from a ``Site`` or a (layer, head) pair."""
    if hasattr(site, "layer") and hasattr(site, "head"):
        return int(site.layer), int(site.head)
    layer, head = site
    return int(layer), int(head)


def single_head_sae(sae: Any, head: int, *, lens: Any = None, layer: int | None = None, target: str | None = "states",
                    allow_foreign: bool = False, what: str = "this experiment") -> Any:
    """The SAE of one head: ``sae`` itself, or ``sae.head(i)`` of a stacked SAE, where ``i`` is the position of
    ``head`` in ``sae.cfg.metadata['heads']`` when recorded (else ``head``). With ``lens`` and ``layer``, first
    :func:`~writelens.provenance.check_sae_provenance` (refuses an SAE recorded for another site / target / model
    unless ``allow_foreign``)."""
    if lens is not None and layer is not None:
        site = lens.site(layer, head)  # a named error for a layer / head that is not a write site
        cfg = getattr(sae, "cfg", None)
        if cfg is not None and (cfg.d_k, cfg.d_v) != (site.d_k, site.d_v):
            raise SAEInputError(f"{what}: the SAE encodes {cfg.d_k}x{cfg.d_v} states but site L{layer}H{head} holds "
                                f"{site.d_k}x{site.d_v} states; pass the SAE trained for this site.")
        check_sae_provenance(sae, lens.model, layer, head, target=target, allow_foreign=allow_foreign, what=what)
    if sae is None or not getattr(sae, "stacked", False):
        return sae
    heads = list(sae.cfg.metadata.get("heads", range(sae.cfg.n_heads)))
    if head not in heads:
        raise SAEInputError(f"this stacked SAE holds heads {heads}; head {head} is not among them.")
    return sae.head(heads.index(head))


def unembedding(lens) -> Float[Tensor, "V d_model"]:
    """W_U, the rows of the output embedding (``lm_head.weight`` or the tied embeddings)."""
    return lens.model.get_output_embeddings().weight.detach().float()


def out_proj_slice(lens, layer: int, head: int) -> Float[Tensor, "d_model d_v"]:
    """W_O^h [d_model, d_v]: the out_proj columns that read head ``head`` of ``layer``."""
    return lens.adapter.out_proj_slice(layer, head).detach().float()


def token_direction(lens, layer: int, head: int, tokens: Int[Tensor, " n"]) -> Float[Tensor, "n d_v"]:
    """``W_O^hᵀ W_U[tok]`` for each token [n, d_v] (not normalised): the value-side direction whose read raises the
    token's logit along the direct path (gated norm, later layers and the final norm ignored)."""
    return unembedding(lens)[torch.as_tensor(tokens).long()] @ out_proj_slice(lens, layer, head)


def as_passages(passages: Any) -> Int[Tensor, "N T"]:
    """Token ids as a LongTensor [N, T] (a 1-D tensor is one passage; lists of equal-length lists are stacked)."""
    try:
        ids = torch.as_tensor(passages)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ExperimentError(f"passages must be token ids [N, T], got {type(passages).__name__} ({err}).") from None
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or 0 in ids.shape:
        raise ExperimentError(f"passages must be token ids [N, T] with N, T >= 1, got shape {tuple(ids.shape)}.")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ExperimentError(f"passages must be integer token ids, got dtype {ids.dtype}; tokenise the text or pass "
                              "ids.long() (floats are never truncated to ids).")
    return ids.long()


#: elements of one float64 chunk of :func:`kl_from_logits` (32 MB): a 248k-token vocabulary takes 16 positions at once
KL_CHUNK_ELEMENTS = 1 << 22


def kl_from_logits(native: Float[Tensor, "... V"], edited: Float[Tensor, "... V"],
                   direction: KLDirection = "native_edited") -> Float[Tensor, "..."]:
    """KL between the softmaxes of two logit tensors, in float64: ``KL(p_native ‖ p_edited)`` by default,
    ``KL(p_edited ‖ p_native)`` for ``direction='edited_native'``. Clamped at 0 (rounding). Computed over chunks of
    positions (:data:`KL_CHUNK_ELEMENTS`), so its float64 temporaries stay small at any vocabulary size."""
    if direction == "edited_native":
        native, edited = edited, native
    shape = torch.broadcast_shapes(native.shape, edited.shape)
    a_all = native.expand(shape).reshape(-1, shape[-1])
    b_all = edited.expand(shape).reshape(-1, shape[-1])
    step = max(1, KL_CHUNK_ELEMENTS // max(1, shape[-1]))
    out = torch.empty(a_all.shape[0], dtype=torch.float64, device=native.device)
    for i in range(0, a_all.shape[0], step):
        a = torch.log_softmax(a_all[i : i + step].double(), -1)
        b = torch.log_softmax(b_all[i : i + step].double(), -1)
        out[i : i + step] = (a.exp() * (a - b)).sum(-1)
    return out.clamp_min(0.0).reshape(shape[:-1])


def kl_positions(t: int, length: int, mode: KLPosition, timing: str = "with_read") -> list[int]:
    """The positions whose next-token distribution the KL is taken at, for an edit at ``t`` of a passage of
    ``length`` tokens: ``last`` → [T−1]; ``next`` → the first affected distribution (t with ``with_read``, t+1
    with ``after_read``); ``mean_from_t`` → every position from that one to T−1 (the KL is their mean)."""
    first = t if timing == "with_read" else t + 1
    if mode == "last":
        return [length - 1]
    if mode == "next":
        return [first] if first < length else []
    return list(range(first, length))


def unreachable(positions: Sequence[int], length: int, mode: KLPosition, timing: str = "with_read") -> list[bool]:
    """Per firing position t: True when every position the KL is taken at precedes the first one an edit at t
    reaches (t with ``with_read``, t+1 with ``after_read``): ``after_read`` at the final position with ``last``."""
    first = 0 if timing == "with_read" else 1
    out = []
    for t in positions:
        pos = kl_positions(int(t), length, mode, timing)
        out.append(not pos or max(pos) < int(t) + first)
    return out


@dataclass
class Scan:
    """What one native pass over the passages gives at a site (positions < ``min_position`` are masked).

    logits: [N, T, V] native logits (float32; [N, k, V], the last k positions, when the scan kept only those);
    values / indices: [N, T, m] the SAE's sparse codes of the state
    after each position's write (values 0 where masked or inactive); write_norm: [N, T] ‖β_t k̂_t v_tᵀ‖_F;
    value_norm: [N, T] ‖v_t‖ (the β-free write norm with unit k̂); flat_svd: optional (key [N,T,d_k],
    value [N,T,d_v]) top-1 singular factors of a second (flat) SAE's reconstruction; write: the native write's
    factors (key [N,T,d_k], value [N,T,d_v], beta [N,T]) as ``cache.write`` gives them (for null edits).
    """

    logits: Float[Tensor, "N T V"]
    values: Float[Tensor, "N T m"]
    indices: Int[Tensor, "N T m"]
    write_norm: Float[Tensor, "N T"]
    value_norm: Float[Tensor, "N T"]
    min_position: int
    flat_svd: tuple[Tensor, Tensor] | None = None
    write: tuple[Tensor, Tensor, Tensor] | None = None

    def dense_codes(self, n_features: int) -> Float[Tensor, "N T F"]:
        dense = self.values.new_zeros(*self.values.shape[:2], n_features)
        return dense.scatter_add(-1, self.indices, self.values)


@torch.no_grad()
def scan_site(lens, sae: Any, site: Any, passages: Int[Tensor, "N T"], *, min_position: int = 0,
              batch_size: int = 8, keep_logits: bool | int = True, flat_sae: Any = None, desc: str = "scan",
              show: bool = True) -> Scan:
    """Run the passages natively once, encode the state after every position's write at ``site`` with ``sae``
    (per-position states from ``cache.states``), and record write norms (and a flat SAE's top-1 SVD if given).
    ``keep_logits``: keep the native logits (True), none (False), or those of the last k positions only (an int k:
    with a 248k-token vocabulary a passage's logits are 1 MB per position)."""
    layer, head = site_tuple(site)
    sae = single_head_sae(sae, head)
    flat_sae = single_head_sae(flat_sae, head)
    ids = as_passages(passages)
    n, length = ids.shape
    positions = list(range(length))
    logits, values, indices, wnorm, vnorm, fk, fv = [], [], [], [], [], [], []
    wk, wv, wb = [], [], []
    for start in progress(range(0, n, batch_size), total=-(-n // batch_size), desc=desc, enabled=show):
        out = lens.run(ids[start : start + batch_size], cache=True, sites=[(layer, head)])
        if keep_logits is True:
            logits.append(out.logits.float().cpu())
        elif keep_logits:
            logits.append(out.logits[:, -int(keep_logits):].float().cpu())
        w = out.cache.write(layer, head)
        wnorm.append((w.beta.abs() * w.key.norm(dim=-1) * w.value.norm(dim=-1)).cpu())
        vnorm.append((w.key.norm(dim=-1) * w.value.norm(dim=-1)).cpu())
        wk.append(w.key.detach().float().cpu())
        wv.append(w.value.detach().float().cpu())
        wb.append(w.beta.detach().float().cpu())
        vs, ix, ks, vvs = [], [], [], []
        for p0 in range(0, length, 64):
            states = out.cache.states(layer, head, positions[p0 : p0 + 64])  # [B, P, d_k, d_v]
            if sae is not None:
                codes = sae.encode_sparse(states.to(sae.b_dec.dtype))
                vs.append(codes.values.float().cpu())
                ix.append(codes.indices.cpu())
            if flat_sae is not None:
                recon = flat_sae.decode(flat_sae.encode(states.to(flat_sae.b_dec.dtype))).float()
                u, _, vh = torch.linalg.svd(recon, full_matrices=False)
                ks.append(u[..., :, 0].cpu())
                vvs.append(vh[..., 0, :].cpu())
        if sae is not None:
            values.append(torch.cat(vs, 1))
            indices.append(torch.cat(ix, 1))
        if flat_sae is not None:
            fk.append(torch.cat(ks, 1))
            fv.append(torch.cat(vvs, 1))
    if sae is not None:
        vals = torch.cat(values)
        vals[:, :min_position] = 0.0
        idx = torch.cat(indices)
    else:
        vals, idx = torch.zeros(n, length, 1), torch.zeros(n, length, 1, dtype=torch.long)
    return Scan(
        logits=torch.cat(logits) if keep_logits else torch.empty(0),
        values=vals,
        indices=idx,
        write_norm=torch.cat(wnorm),
        value_norm=torch.cat(vnorm),
        min_position=min_position,
        flat_svd=(torch.cat(fk), torch.cat(fv)) if flat_sae is not None else None,
        write=(torch.cat(wk), torch.cat(wv), torch.cat(wb)),
    )


def run_rows(lens, passages: Int[Tensor, "N T"], rows: Sequence[tuple[int, Sequence[Edit]]],
             reduce: Callable[[int, Float[Tensor, "T V"]], Any], *, batch_rows: int = 48, desc: str = "edited runs",
             show: bool = True, tail: int | None = None, span: int | None = None) -> list[Any]:
    """Run each row (passage index, edits of that row) with the exact edit engine and return
    ``reduce(i, logits_i)`` per row in order (logits [T, V]; with ``tail`` the last ``tail`` positions [tail, V],
    the unembedding run on those alone; with ``span`` positions [0, first edit + span), the forward stopping
    there). The passages run natively once per chunk of ``batch_rows`` distinct passages (a
    :class:`writelens.fastpath.NativePass`); every row then costs only the layers and positions its
    edits change (``writelens.fastpath``)."""
    out: list[Any] = [None] * len(rows)
    if not lens.adapter.supports_prefix_reuse:
        return _run_rows_full(lens, passages, rows, reduce, batch_rows=batch_rows, desc=desc, show=show, tail=tail)
    by_passage: dict[int, list[int]] = {}
    for i, (p, _) in enumerate(rows):
        by_passage.setdefault(int(p), []).append(i)
    order = list(by_passage)
    chunks = [order[c : c + max(1, batch_rows)] for c in range(0, len(order), max(1, batch_rows))]
    for chunk in progress(chunks, total=len(chunks), desc=desc, enabled=show):
        local = {p: j for j, p in enumerate(chunk)}
        mine = [i for p in chunk for i in by_passage[p]]
        layers = {min(e.layer for e in rows[i][1]) for i in mine if rows[i][1]} or {lens.recurrent_layers[0]}
        native = NativePass(lens, passages[torch.tensor(chunk)], layers, tail=tail)
        results = native.run([(local[int(rows[i][0])], rows[i][1]) for i in mine],
                             lambda j, logits, mine=mine: reduce(mine[j], logits), tail=tail, span=span)
        for i, r in zip(mine, results, strict=True):
            out[i] = r
        del native
    return out


def _run_rows_full(lens, passages, rows, reduce, *, batch_rows: int, desc: str, show: bool,
                   tail: int | None) -> list[Any]:
    """:func:`run_rows` for a family without native-pass continuation: full edited forwards, one row per firing."""
    import dataclasses

    out: list[Any] = [None] * len(rows)
    for start in progress(range(0, len(rows), batch_rows), total=-(-len(rows) // batch_rows), desc=desc,
                          enabled=show):
        chunk = rows[start : start + batch_rows]
        ids = passages[torch.tensor([p for p, _ in chunk])]
        edits = [dataclasses.replace(e, batch=i) for i, (_, es) in enumerate(chunk) for e in es]
        logits = lens.run(ids, edits=edits).logits
        for i in range(len(chunk)):
            out[start + i] = reduce(start + i, logits[i] if tail is None else logits[i, -tail:])
    return out
