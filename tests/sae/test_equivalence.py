"""Every fast path equals its dense naive twin (float64), values and gradients."""

import copy

import pytest
import torch

from writelens.sae import SAEConfig, build_sae
from writelens.sae.config import Objective
from writelens.sae.naive import (
    naive_bilinear_preacts,
    naive_flat_decode,
    naive_flat_preacts,
    naive_forward,
    naive_rank_decode,
)
from writelens.sae.sparse import bilinear_preacts, bilinear_preacts_at, flat_decode, flat_preacts, rank_decode

torch.set_default_dtype(torch.float32)


def _random_sparse(n_heads, batch, n_features, m, generator):
    indices = torch.stack(
        [torch.stack([torch.randperm(n_features, generator=generator)[:m] for _ in range(batch)]) for _ in range(n_heads)]
    )
    return torch.rand(n_heads, batch, m, dtype=torch.float64, generator=generator), indices


@pytest.mark.parametrize("chunk", [1 << 25, 100])
def test_bilinear_preacts_one_contraction_matches_einsum(chunk):
    g = torch.Generator().manual_seed(1)
    S = torch.randn(2, 5, 6, 7, dtype=torch.float64, generator=g)
    ek, ev = torch.randn(2, 9, 3, 6, dtype=torch.float64, generator=g), torch.randn(2, 9, 3, 7, dtype=torch.float64, generator=g)
    b = torch.randn(2, 9, dtype=torch.float64, generator=g)
    torch.testing.assert_close(bilinear_preacts(S, ek, ev, b, max_chunk_elements=chunk), naive_bilinear_preacts(S, ek, ev, b))


def test_selected_preacts_and_sparse_decodes_match_dense_with_gradients():
    g = torch.Generator().manual_seed(2)
    H, B, F, r, dk, dv, m = 2, 4, 11, 2, 5, 3, 4
    S = torch.randn(H, B, dk, dv, dtype=torch.float64, generator=g, requires_grad=True)
    params = [torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True)
              for shape in [(H, F, r, dk), (H, F, r, dv), (H, F)]]
    values, indices = _random_sparse(H, B, F, m, g)
    values.requires_grad_(True)
    fast = bilinear_preacts_at(S, *params, indices)
    dense = naive_bilinear_preacts(S, *params).gather(-1, indices)
    torch.testing.assert_close(fast, dense)
    weights = torch.randn_like(fast)
    grads_fast = torch.autograd.grad((fast * weights).sum(), [S, *params])
    grads_dense = torch.autograd.grad((dense * weights).sum(), [S, *params])
    for a, b in zip(grads_fast, grads_dense, strict=True):
        torch.testing.assert_close(a, b)

    def dense_codes():
        return torch.zeros(H, B, F, dtype=torch.float64).scatter(-1, indices, values)

    out_fast = rank_decode(values, indices, params[0], params[1])
    out_dense = naive_rank_decode(dense_codes(), params[0], params[1])
    torch.testing.assert_close(out_fast, out_dense)
    w = torch.randn_like(out_fast)
    for a, b in zip(torch.autograd.grad((out_fast * w).sum(), [values, params[0], params[1]]),
                    torch.autograd.grad((out_dense * w).sum(), [values, params[0], params[1]]), strict=True):
        torch.testing.assert_close(a, b)

    dec = torch.randn(H, F, dk * dv, dtype=torch.float64, generator=g, requires_grad=True)
    flat_fast = flat_decode(values, indices, dec)
    flat_dense = naive_flat_decode(dense_codes(), dec.reshape(H, F, dk, dv)).reshape(H, B, -1)
    torch.testing.assert_close(flat_fast, flat_dense)
    w = torch.randn_like(flat_fast)
    for a, b in zip(torch.autograd.grad((flat_fast * w).sum(), [values, dec]),
                    torch.autograd.grad((flat_dense * w).sum(), [values, dec]), strict=True):
        torch.testing.assert_close(a, b)
    enc = dec.detach().reshape(H, F, dk, dv)
    torch.testing.assert_close(
        flat_preacts(S.detach().reshape(H, B, -1), enc.reshape(H, F, -1), params[2].detach()),
        naive_flat_preacts(S.detach(), enc, params[2].detach()),
    )


CASES = [
    (arch, act, heads)
    for arch in ("bilinear", "matrix", "flat")
    for act in ("topk", "batchtopk", "jumprelu")
    for heads in (None, 2)
]


def _make(arch, act, heads, center=False, tied=False):
    cfg = SAEConfig(arch, 6, 5, 24, rank=1 if arch == "flat" else 2, k=3, activation=act, n_heads=heads,
                    center=center, tied=tied, jumprelu_bandwidth=0.5, jumprelu_init_threshold=0.3)
    sae = build_sae(cfg, seed=3).double()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in sae.parameters():  # move off the symmetric init so every path is exercised
            p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype, generator=g))
        sae.steps_since_active.copy_(torch.randint(0, 200, sae.steps_since_active.shape, generator=g))
        if center:
            sae.set_mean(torch.randn(sae.mean.shape, dtype=torch.float64, generator=g))
    return sae


def _states(sae, batch=7, seed=5):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *sae.head_shape, sae.cfg.d_k, sae.cfg.d_v)
    return torch.randn(shape, dtype=torch.float64, generator=g)


def _train_forward_both(sae, objective):
    """Training-mode forward of two copies of ``sae`` on the same states: the fast path and the naive form."""
    fast, naive = copy.deepcopy(sae).train(), copy.deepcopy(sae).train()
    x1 = _states(sae).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    return fast, naive, x1, x2, fast(x1, objective), naive_forward(naive, x2, objective)


def _assert_same_gradients(fast, naive, x1, x2, out, ref):
    """The total losses' gradients agree, for the states and for every parameter."""
    out.losses.total.backward()
    ref.total.backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    for (name, p), q in zip(fast.named_parameters(), naive.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=f"gradient of {name}")


@pytest.mark.parametrize("arch,act,heads", CASES)
def test_training_forward_and_gradients_match_naive(arch, act, heads):
    sae = _make(arch, act, heads, center=(arch == "bilinear"))
    objective = Objective(lambda_aux=0.5, k_aux=5, dead_window=100, lambda_sparsity=0.1)
    fast, naive, x1, x2, out, ref = _train_forward_both(sae, objective)
    if act != "jumprelu":  # (JumpReLU fires nearly every feature on these random states)
        assert float(ref.aux.detach().sum()) > 0  # the AuxK path is exercised
    torch.testing.assert_close(out.recon, naive._from_heads(torch.Size([7]), ref.recon))
    torch.testing.assert_close(out.codes, naive._from_heads(torch.Size([7]), ref.codes))
    torch.testing.assert_close(out.losses.total, ref.total)
    torch.testing.assert_close(out.losses.aux.reshape(-1), ref.aux)
    torch.testing.assert_close(out.losses.sparsity.reshape(-1), ref.sparsity)
    _assert_same_gradients(fast, naive, x1, x2, out, ref)


@pytest.mark.parametrize("arch,act,heads", CASES)
def test_eval_encode_decode_match_naive(arch, act, heads):
    sae = _make(arch, act, heads, tied=(arch == "bilinear" and act == "topk"))
    if act == "batchtopk":
        sae.train()
        for seed in range(3):
            sae(_states(sae, seed=10 + seed))
    sae.eval()
    x = _states(sae)
    ref = naive_forward(sae, x, training=False)
    codes = sae.encode(x)
    torch.testing.assert_close(codes, sae._from_heads(torch.Size([7]), ref.codes))
    torch.testing.assert_close(sae.decode(codes), sae._from_heads(torch.Size([7]), ref.recon))
    torch.testing.assert_close(sae(x).recon, sae._from_heads(torch.Size([7]), ref.recon))


def test_float32_fast_path_close_to_float64_naive():
    sae = _make("bilinear", "topk", None)
    x = _states(sae)
    ref = naive_forward(sae, x, training=False)
    fast32 = copy.deepcopy(sae).float().eval()
    torch.testing.assert_close(fast32(x.float()).recon.double(), ref.recon[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,heads", [("bilinear", None), ("bilinear", 2), ("matrix", None), ("flat", 2)])
def test_aux_with_fewer_dead_features_than_k_aux_matches_naive(arch, heads):
    """On CPU the AuxK pass decodes only as many features as are dead (here 2 or 3 of k_aux = 20): loss and gradients
    equal the naive form, which decodes all k_aux (the rest enter with value 0)."""
    sae = _make(arch, "topk", heads)
    with torch.no_grad():
        sae.steps_since_active.zero_()
        flat = sae.steps_since_active.view(-1, sae.cfg.n_features)
        flat[:, [2, 9]] = 500
        flat[-1, 17] = 500  # one head has a third dead feature
    objective = Objective(lambda_aux=0.5, k_aux=20, dead_window=100, lambda_sparsity=0.0)
    fast, naive, x1, x2, out, ref = _train_forward_both(sae, objective)
    assert float(ref.aux.detach().sum()) > 0
    torch.testing.assert_close(out.losses.aux.reshape(-1), ref.aux)
    _assert_same_gradients(fast, naive, x1, x2, out, ref)
