"""The torch chunk kernel of the gated delta rule, as transformers writes it, that also returns its chunk-boundary
states.

Exact states anywhere in a captured call start from the nearest chunk-boundary state (``RecurrentCall``); without
them writelens re-runs the recurrence of the whole call once to find them. transformers' CPU kernel
(``torch_chunk_gated_delta_rule`` of the Qwen3.5 / Qwen3-Next modeling files) computes exactly those states in its
scan over chunks and drops them. :func:`chunk_rule_with_boundaries` is the same computation, op for op, keeping
them: a captured prefill call runs it instead of the model's kernel, so the boundaries cost nothing. It also keeps
each chunk's ``v_new`` and cumulative decays (:class:`ChunkInterior`), from which the state after *any* position
is one small contraction (``BoundaryStates.interior_states``) instead of a kernel run over the chunk.
``tests/test_gdn_chunk.py`` holds its outputs **bitwise** equal to transformers' kernel (and its boundary states to
the float64 oracle); if a transformers release changes its kernel, that test says so.

Only the ``solve_triangular`` path of the reference kernel is reproduced (the one it takes outside torch.export).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from writelens.sites.gdn_oracle import l2norm

__all__ = ["chunk_rule_with_boundaries", "ChunkInterior", "CHUNK", "STEP_TOKENS", "BoundaryStates"]

CHUNK = 64  # transformers' default chunk_size, and RecurrentCall.STATE_CHUNK

#: segments of at most this many tokens run the per-token (recurrent) kernel: on CPU the torch chunk kernel costs
#: about as much for 4 tokens as for 64 (it pads to its chunk), the recurrent one grows with the length (crossover ~40)
STEP_TOKENS = 32


class ChunkInterior(NamedTuple):
    """What the chunk kernel computed inside each chunk, enough for the exact state after any position: with ``S_b``
    the state entering chunk c (a recorded boundary, or the call's initial state) and γ the cumulative log decay,
    ``S_t = exp(γ_j) S_b + Σ_{i≤j} exp(γ_j − γ_i) k_i u_iᵀ`` for t = 64 c + j (the delta rule's WY form; ``u_i``
    depends only on positions ≤ i of its chunk, the UT solve being lower-triangular).

    ``written`` [B, Hv, n, 64, d_v] (``u``) and ``cum_decay`` [B, Hv, n, 64] (γ, per chunk), float32, ``n`` chunks
    including a padded last one; the keys k_i are the call's own (normalised on use), not kept twice."""

    written: Tensor
    cum_decay: Tensor


def chunk_rule_with_boundaries(
    query: Float[Tensor, "B T Hk d_k"],
    key: Float[Tensor, "B T Hk d_k"],
    value: Float[Tensor, "B T Hv d_v"],
    g: Float[Tensor, "B T Hv"],
    beta: Float[Tensor, "B T Hv"],
    initial_state: Float[Tensor, "B Hv d_k d_v"] | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[Float[Tensor, "B T Hv d_v"], Tensor | None, Float[Tensor, "n B Hv d_k d_v"], ChunkInterior]:
    """(output, final state or None, boundaries, interior): ``boundaries[i]`` is the float32 state after local
    position ``64 (i + 1) − 1`` for every full chunk of the call (``n = T // 64``); ``interior`` the per-chunk
    quantities that give the state after any other position (:class:`ChunkInterior`). Output and final state are
    those of transformers' ``torch_chunk_gated_delta_rule`` with ``chunk_size=64``, bit for bit."""
    chunk_size = CHUNK
    initial_dtype = query.dtype
    batch_size, sequence_length, num_k_heads, k_head_dim = key.shape
    num_v_heads, v_head_dim = value.shape[-2:]
    recurrent_state_shape = (batch_size, num_v_heads, k_head_dim, v_head_dim)
    padded_output_shape = (batch_size, num_v_heads, -1, v_head_dim)
    decay = g
    if num_k_heads != num_v_heads:
        query = query.repeat_interleave(num_v_heads // num_k_heads, dim=2)
        key = key.repeat_interleave(num_v_heads // num_k_heads, dim=2)
    query, key, value, beta, decay = [
        x.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        for x in (query, key, value, beta, decay)
    ]
    if use_qk_l2norm_in_kernel:
        query = l2norm(query, dim=-1, eps=1e-6)
        key = l2norm(key, dim=-1, eps=1e-6)
    scaling = query.shape[-1] ** -0.5
    query = query * scaling
    pad_size = (chunk_size - sequence_length % chunk_size) % chunk_size
    query, key, value = (F.pad(x, (0, 0, 0, pad_size)) for x in (query, key, value))
    beta, decay = (F.pad(x, (0, pad_size)) for x in (beta, decay))
    total_sequence_length = sequence_length + pad_size
    num_chunks = total_sequence_length // chunk_size
    v_beta = value * beta.unsqueeze(-1)
    k_beta = key * beta.unsqueeze(-1)
    query, key, k_beta, v_beta = [
        x.reshape(x.shape[0], x.shape[1], -1, chunk_size, x.shape[-1]) for x in (query, key, k_beta, v_beta)
    ]
    decay = decay.reshape(decay.shape[0], decay.shape[1], -1, chunk_size)
    strictly_upper_mask = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=query.device).triu(1)
    cum_decay = decay.cumsum(dim=3)
    pairwise_decay = cum_decay.unsqueeze(4) - cum_decay.unsqueeze(3)
    pairwise_decay = pairwise_decay.masked_fill(strictly_upper_mask, float("-inf"))
    pairwise_decay = pairwise_decay.exp()
    ut_system = (k_beta @ key.transpose(-1, -2)) * pairwise_decay
    intra_chunk_attn = (query @ key.transpose(-1, -2)) * pairwise_decay
    decayed_k_beta = k_beta * cum_decay.exp().unsqueeze(-1)
    new_values = torch.linalg.solve_triangular(ut_system, v_beta, upper=False, unitriangular=True)
    k_cumdecay = torch.linalg.solve_triangular(ut_system, decayed_k_beta, upper=False, unitriangular=True)
    if initial_state is None:
        last_recurrent_state = torch.zeros(recurrent_state_shape, dtype=new_values.dtype, device=new_values.device)
    else:
        last_recurrent_state = initial_state.to(new_values)
    core_attn_out = torch.zeros_like(new_values)
    written = torch.empty_like(new_values)  # each chunk's v_new: what its positions write, given its start state
    query = query * cum_decay.exp().unsqueeze(-1)
    key = key * (cum_decay[..., -1:] - cum_decay).exp().unsqueeze(-1)
    chunk_decay = cum_decay[..., -1].exp()[..., None, None]
    boundaries = []
    for i in range(num_chunks):
        v_new = new_values[:, :, i] - k_cumdecay[:, :, i] @ last_recurrent_state
        written[:, :, i] = v_new
        inter_chunk_attn = query[:, :, i] @ last_recurrent_state
        core_attn_out[:, :, i] = inter_chunk_attn + intra_chunk_attn[:, :, i] @ v_new
        last_recurrent_state = last_recurrent_state * chunk_decay[:, :, i] + key[:, :, i].transpose(-1, -2) @ v_new
        if (i + 1) * chunk_size <= sequence_length:  # a full chunk: the state after its last real token
            boundaries.append(last_recurrent_state)
    core_attn_out = core_attn_out.reshape(padded_output_shape)[:, :, :sequence_length]
    core_attn_out = core_attn_out.transpose(1, 2).to(initial_dtype, memory_format=torch.contiguous_format)
    bounds = torch.stack(boundaries) if boundaries else last_recurrent_state.new_empty(0, *recurrent_state_shape)
    return (core_attn_out, (last_recurrent_state if output_final_state else None), bounds,
            ChunkInterior(written, cum_decay))


class BoundaryStates:
    """Exact states of a captured GDN call from the boundary states its own kernel call recorded (``GDNCall``
    mixes this in: it supplies ``native_boundaries``, ``injections``, the kernel inputs and the two kernels)."""

    def _swept_state(self, heads: tuple[int, ...], t: int) -> Tensor:
        """As :meth:`RecurrentCall._swept_state`, starting from the kernel's own boundary states when the call
        recorded them (and carries no edit): read from the chunk interior the kernel computed (no kernel run), else
        at most one chunk is recomputed, never the whole call."""
        inside = self.interior_states(heads, [t])
        if inside is not None:
            return inside[:, 0]
        if self.native_boundaries is not None and not self.injections:
            if not hasattr(self, "_boundary"):
                self._boundary, self._last = {}, {}
            cache = self._boundary.setdefault(heads, {})
            if not cache:
                idx = list(heads)
                for i in range(self.native_boundaries.shape[0]):
                    cache[self.STATE_CHUNK * (i + 1) - 1] = self.native_boundaries[i][:, idx]
        return super()._swept_state(heads, t)

    def states_for_rows(self, heads: tuple[int, ...], t: int, rows: Tensor) -> Tensor:
        """As :meth:`RecurrentCall.states_for_rows`, read from the kernel's chunk interior when the call has one."""
        inside = self.interior_states(heads, [t], rows)
        return super().states_for_rows(heads, t, rows) if inside is None else inside[:, 0]

    def interior_states(self, heads: tuple[int, ...], ts: list[int], rows: Tensor | None = None) -> Tensor | None:
        """Exact S of ``heads`` after each local position of ``ts``, [B, P, h, d_k, d_v] (``rows``: those batch rows
        only), from the kernel's own boundary state and chunk interior (:class:`ChunkInterior`): one small
        contraction per position, no kernel run; a position at a chunk boundary is the kernel's boundary state. None when the call recorded no interior or carries edits."""
        inner = getattr(self, "native_interior", None)
        if inner is None or self.native_boundaries is None or self.injections or not ts:
            return None
        chunk, dev, P = self.STATE_CHUNK, inner.written.device, len(ts)
        c = torch.tensor([t // chunk for t in ts], device=dev)
        j = torch.tensor([t % chunk for t in ts], device=dev)
        pick = [slice(None) if rows is None else rows.to(dev)]
        pick.append(slice(None) if list(heads) == list(range(self.num_heads)) else torch.tensor(heads, device=dev))

        def take(x: Tensor) -> Tensor:  # the requested chunks first (the smallest copy), then rows and heads
            x = x[:, :, c]
            x = x if isinstance(pick[0], slice) else x[pick[0]]
            return x if isinstance(pick[1], slice) else x[:, pick[1]]

        written, gamma = take(inner.written), take(inner.cum_decay)  # [b, h, P, 64, d_v], [b, h, P, 64]
        # the chunks' keys, as the kernel normalised them (positions past the call's end are masked out below)
        where = (c[:, None] * chunk + torch.arange(chunk, device=dev)).clamp_max(self.length - 1).reshape(-1)
        key = self.key[pick[0]] if rows is not None else self.key
        key = self.unit(key[:, where][:, :, [self.kh(h) for h in heads]])  # [b, P·64, h, d_k]
        key = key.reshape(key.shape[0], P, chunk, len(heads), self.d_k).permute(0, 3, 1, 2, 4)
        g_end = gamma.gather(-1, j[None, None, :, None].expand(*gamma.shape[:3], 1))  # γ_j  [b, h, P, 1]
        later = torch.arange(chunk, device=dev)[None, :] > j[:, None]  # i > j: not yet written
        weight = (g_end - gamma).masked_fill(later, float("-inf")).exp()  # [b, h, P, 64]
        grown = ((key * weight[..., None]).transpose(-1, -2) @ written).transpose(1, 2)  # [b, P, h, d_k, d_v]
        idx = list(heads)
        start = self._start_state(heads)
        bounds = [start if ci == 0 else self.native_boundaries[ci - 1][:, idx] for ci in c.tolist()]
        base = torch.stack(bounds, 1).float()  # [B, P, h, d_k, d_v]
        if rows is not None:
            base = base[rows.to(base.device)]
        decay = g_end[..., 0].exp().transpose(1, 2)  # [b, P, h]
        out = decay[..., None, None] * base + grown
        for p, t in enumerate(ts):  # at a chunk boundary the kernel's own state, bitwise (never recomputed)
            if (t + 1) % chunk == 0 and (t + 1) // chunk <= self.native_boundaries.shape[0]:
                kept = self.native_boundaries[(t + 1) // chunk - 1][:, idx]
                out[:, p] = (kept if rows is None else kept[rows.to(kept.device)]).to(out)
        return out

    def states_many(self, heads: tuple[int, ...], ts: list[int]) -> Tensor | None:
        """Exact S of ``heads`` after each local position of ``ts``, [B, P, h, d_k, d_v]: read from the chunk
        interior (:meth:`interior_states`) when the call recorded one, else in one kernel call where every
        position advances from its kernel-recorded boundary state, the segments left-padded to one length with
        neutral tokens (g = 0, β = 0, zero q / k / v: the state passes through them unchanged). None when the call
        has no recorded boundaries or carries edits (the caller then sweeps)."""
        inside = self.interior_states(heads, ts)
        if inside is not None:
            return inside
        if self.native_boundaries is None or self.injections or not ts:
            return None
        chunk, B, idx = self.STATE_CHUNK, self.batch_size, list(heads)
        kh = [self.kh(h) for h in heads]
        bases, segs = [], []
        for t in ts:
            b = ((t + 1) // chunk) * chunk - 1  # the last boundary at or before t
            bases.append(self.native_boundaries[(b + 1) // chunk - 1][:, idx] if b >= 0 else self._start_state(heads))
            segs.append((b + 1, t + 1))
        length = max(t1 - t0 for t0, t1 in segs)
        initial = torch.cat(bases)  # [P·B, h, d_k, d_v]
        if length == 0:
            return initial.reshape(len(ts), B, *initial.shape[1:]).transpose(0, 1)

        # token index of each padded slot [P, length] (left padding: slot j of segment i holds t1 − length + j)
        ends = torch.tensor([t1 for _, t1 in segs])
        starts = torch.tensor([t0 for t0, _ in segs])
        where = ends[:, None] - length + torch.arange(length)[None]
        real = where >= starts[:, None]
        where = where.clamp_min(0).to(self.value.device)
        real = real.to(self.value.device)

        def padded(x: Tensor, heads_of: list[int]) -> Tensor:  # [P·B, length, h, ...], left-padded with zeros
            got = x[:, where.reshape(-1)][:, :, heads_of].float()  # [B, P·length, h, ...]
            got = got.reshape(B, len(ts), length, *got.shape[2:]).transpose(0, 1)
            mask = real.reshape(len(ts), 1, length, *([1] * (got.dim() - 3)))
            return (got * mask).reshape(len(ts) * B, length, *got.shape[3:])

        q, k, v = padded(self.query, kh), padded(self.key, kh), padded(self.value, idx)
        g, beta = padded(self.g, idx), padded(self.beta, idx)
        kernel = self.step_kernel if length <= STEP_TOKENS else self.chunk_kernel
        _, state = kernel(q, k, v, g=g, beta=beta, initial_state=initial.float().contiguous(), output_final_state=True,
                          use_qk_l2norm_in_kernel=not self.prenormalized)
        return state.float().reshape(len(ts), B, *state.shape[1:]).transpose(0, 1)
