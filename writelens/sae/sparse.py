"""Fast SAE compute: dense pre-activations as one contraction, everything else over the k active atoms.

All functions take a leading head dim ``H`` (stacked dictionaries; 1 for a single SAE) and never loop over
features. The dense twins are in :mod:`writelens.sae.naive`; ``tests/sae/test_equivalence.py`` checks
forward values and gradients of every function here against them.

Cost per batch of B states (X = B * F * d_k * d_v):

- ``bilinear_preacts``: X multiply-adds (one matmul against the F encoder forms, built in feature chunks
  of at most ``max_chunk_elements`` entries; no gradient is needed through it).
- ``bilinear_preacts_at``: B * m * r * d_k * d_v, with gradients (m selected features per state).
- ``rank_decode``: B * m * r * d_k * d_v; its backward touches only the m gathered atoms per state (the
  gradient into the full factor tensors is an ``index_add`` of those rows, never a dense F x d_k x d_v).
- ``flat_decode``: ``embedding_bag`` over the m selected rows, sparse forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

DEFAULT_MAX_CHUNK_ELEMENTS = 1 << 25


def _global_rows(indices: Int[Tensor, "H B m"], n_features: int) -> Int[Tensor, " HBm"]:
    """Feature indices into the head-flattened (H*F, ...) view of a parameter."""
    offsets = torch.arange(indices.shape[0], device=indices.device) * n_features
    return (indices + offsets[:, None, None]).reshape(-1)


def gather_factors(
    factors: Float[Tensor, "H F r d"], indices: Int[Tensor, "H B m"]
) -> Float[Tensor, "HB mr d"]:
    """Rows of ``factors`` at ``indices``, flattened to [H*B, m*r, d] for batched matmuls."""
    n_heads, n_features, rank, dim = factors.shape
    rows = factors.reshape(n_heads * n_features, rank, dim).index_select(0, _global_rows(indices, n_features))
    return rows.reshape(n_heads * indices.shape[1], indices.shape[2] * rank, dim)


def gather_features(values: Float[Tensor, "H F"], indices: Int[Tensor, "H B m"]) -> Float[Tensor, "H B m"]:
    """``values[h, indices[h, b, j]]`` (e.g. the encoder bias at the selected features)."""
    n_heads = indices.shape[0]
    return values.gather(1, indices.reshape(n_heads, -1)).reshape(indices.shape)


def encoder_forms(
    enc_k: Float[Tensor, "H F r dk"], enc_v: Float[Tensor, "H F r dv"], out: Tensor | None = None
) -> Float[Tensor, "H F dk dv"]:
    """``E_i = sum_r enc_k[i,r] enc_v[i,r]^T`` for every feature (into ``out`` when given)."""
    n_heads, n_features, rank, d_k = enc_k.shape
    d_v = enc_v.shape[-1]
    if rank == 1:
        keys = enc_k.reshape(n_heads, n_features, d_k, 1)
        values = enc_v.reshape(n_heads, n_features, 1, d_v)
        return torch.mul(keys, values) if out is None else torch.mul(keys, values, out=out)
    keys = enc_k.reshape(n_heads * n_features, rank, d_k).transpose(1, 2)
    values = enc_v.reshape(n_heads * n_features, rank, d_v)
    if out is None:
        return torch.bmm(keys, values).reshape(n_heads, n_features, d_k, d_v)
    torch.bmm(keys, values, out=out.view(n_heads * n_features, d_k, d_v))
    return out


def bilinear_preacts(
    states: Float[Tensor, "H B dk dv"],
    enc_k: Float[Tensor, "H F r dk"],
    enc_v: Float[Tensor, "H F r dv"],
    b_enc: Float[Tensor, "H F"],
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
    workspace: Tensor | None = None,
) -> Float[Tensor, "H B F"]:
    """``pre[h, b, i] = sum_r enc_k[h,i,r]^T S[h,b] enc_v[h,i,r] + b_enc[h,i]`` for every feature.

    One contraction: the encoder forms ``E_i = sum_r enc_k[i,r] enc_v[i,r]^T`` are built for a chunk of
    features (at most ``max_chunk_elements`` entries per head) and applied to vec(S) by one batched matmul.
    ``workspace`` (no gradients only) is a reusable flat buffer for the forms: reusing it avoids
    re-faulting a large fresh allocation every step, which costs more than filling it.
    """
    n_heads, batch, d_k, d_v = states.shape
    n_features = enc_k.shape[1]
    flat_states = states.reshape(n_heads, batch, d_k * d_v)
    chunk = min(n_features, max(1, max_chunk_elements // (d_k * d_v)))
    out = states.new_empty(n_heads, batch, n_features)
    for start in range(0, n_features, chunk):
        stop = min(start + chunk, n_features)
        buffer = None
        if workspace is not None:
            buffer = workspace[: n_heads * (stop - start) * d_k * d_v].view(n_heads, stop - start, d_k, d_v)
        forms = encoder_forms(enc_k[:, start:stop], enc_v[:, start:stop], out=buffer)
        torch.baddbmm(
            b_enc[:, None, start:stop],
            flat_states,
            forms.reshape(n_heads, stop - start, d_k * d_v).transpose(1, 2),
            out=out[:, :, start:stop] if chunk < n_features else out,
        )
    return out


def workspace_size(n_heads: int, n_features: int, d_k: int, d_v: int,
                   max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS) -> int:
    """Number of entries :func:`bilinear_preacts` needs in its ``workspace``."""
    chunk = min(n_features, max(1, max_chunk_elements // (d_k * d_v)))
    return n_heads * chunk * d_k * d_v


def bilinear_preacts_at(
    states: Float[Tensor, "H B dk dv"],
    enc_k: Float[Tensor, "H F r dk"],
    enc_v: Float[Tensor, "H F r dv"],
    b_enc: Float[Tensor, "H F"],
    indices: Int[Tensor, "H B m"],
) -> Float[Tensor, "H B m"]:
    """The bilinear pre-activations at the selected features only (differentiable in every input)."""
    n_heads, batch, d_k, d_v = states.shape
    n_selected = indices.shape[2]
    rank = enc_k.shape[2]
    keys = gather_factors(enc_k, indices)  # [HB, m r, dk]
    values = gather_factors(enc_v, indices)  # [HB, m r, dv]
    key_times_state = torch.bmm(keys, states.reshape(n_heads * batch, d_k, d_v))  # [HB, m r, dv]
    forms = (key_times_state * values).sum(-1)  # [HB, m r]
    pre = forms.reshape(n_heads, batch, n_selected, rank).sum(-1)
    return pre + gather_features(b_enc, indices)


def rank_decode(
    values: Float[Tensor, "H B m"],
    indices: Int[Tensor, "H B m"],
    dec_k: Float[Tensor, "H F r dk"],
    dec_v: Float[Tensor, "H F r dv"],
) -> Float[Tensor, "H B dk dv"]:
    """``sum_j values[h,b,j] sum_r dec_k[h,i_j,r] dec_v[h,i_j,r]^T``: a sum of the m gathered rank-r atoms."""
    n_heads, batch, n_selected = values.shape
    rank, d_k = dec_k.shape[2:]
    keys = gather_factors(dec_k, indices)  # [HB, m r, dk]
    vals = gather_factors(dec_v, indices)  # [HB, m r, dv]
    weights = values.reshape(n_heads * batch, n_selected, 1, 1).expand(-1, -1, rank, 1)
    weighted_keys = keys * weights.reshape(n_heads * batch, n_selected * rank, 1)
    out = torch.bmm(weighted_keys.transpose(1, 2), vals)
    return out.reshape(n_heads, batch, d_k, -1)


def flat_preacts(
    flat_states: Float[Tensor, "H B D"], enc: Float[Tensor, "H F D"], b_enc: Float[Tensor, "H F"]
) -> Float[Tensor, "H B F"]:
    """Dense linear encoder on vec(S): ``enc @ vec(S) + b_enc`` for every feature.

    Computed as ``enc @ S^T`` so the encoder gradient ``g^T S`` comes out in ``enc``'s own layout (a
    transposed F x D gradient would cost a large strided copy every step)."""
    return torch.baddbmm(b_enc[:, :, None], enc, flat_states.transpose(1, 2)).transpose(1, 2)


def flat_decode(
    values: Float[Tensor, "H B m"], indices: Int[Tensor, "H B m"], dec: Float[Tensor, "H F D"]
) -> Float[Tensor, "H B D"]:
    """``sum_j values[h,b,j] dec[h, i_j]`` via ``embedding_bag`` (sparse forward and backward)."""
    n_heads, batch, n_selected = values.shape
    n_features, dim = dec.shape[1:]
    rows = _global_rows(indices, n_features).reshape(n_heads * batch, n_selected)
    out = F.embedding_bag(
        rows,
        dec.reshape(n_heads * n_features, dim),
        per_sample_weights=values.reshape(n_heads * batch, n_selected),
        mode="sum",
    )
    return out.reshape(n_heads, batch, dim)


def check_sparse_codes(codes, n_features: int) -> None:
    """:class:`SAEInputError` unless ``codes`` (:class:`SparseCodes`) has values and indices of one shape and integer
    indices in ``[0, n_features)``."""
    from writelens.errors import SAEInputError

    if tuple(codes.values.shape) != tuple(codes.indices.shape):
        raise SAEInputError(f"SparseCodes values {tuple(codes.values.shape)} and indices {tuple(codes.indices.shape)} "
                            "differ in shape; pass the pair encode_sparse returned.")
    idx = codes.indices
    if idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise SAEInputError(f"SparseCodes indices have dtype {idx.dtype}; feature indices are integers.")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_features):
        raise SAEInputError(f"SparseCodes indices must be in [0, {n_features}) (this SAE's features), got "
                            f"{int(idx.min())}..{int(idx.max())}.")
