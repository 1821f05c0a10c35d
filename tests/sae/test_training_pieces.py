"""Decoder constraints, resampling, dead tracking and the BatchTopK inference threshold."""

import pytest
import torch

from writelens.sae import SAEConfig, build_sae
from writelens.sae.config import Objective
from writelens.sae.data import StateDataset
from writelens.sae.resample import resample_dead_features
from writelens.sae.synthetic import planted_states
from writelens.sae.train import TrainConfig, train_sae


def test_decoder_renorm_and_gradient_projection():
    for arch, n_dims in (("bilinear", 1), ("flat", 2)):
        sae = build_sae(SAEConfig(arch, 5, 4, 16, k=2, rank=1), seed=0)
        with torch.no_grad():
            for p, _ in sae.decoder_factors():
                p.mul_(3.0)
        sae(torch.randn(8, 5, 4)).losses.total.backward()
        sae.project_decoder_grads()
        for p, n in sae.decoder_factors():
            dims = tuple(range(-n, 0))
            assert n == n_dims and (p.grad * p).sum(dims).abs().max() < 1e-5
        sae.normalize_decoder()
        for p, n in sae.decoder_factors():
            torch.testing.assert_close(p.norm(dim=tuple(range(-n, 0))), torch.ones(p.shape[: p.dim() - n]))


def test_dead_counters_stay_on_device_and_reset_on_firing():
    sae = build_sae(SAEConfig("bilinear", 5, 4, 16, k=2), seed=0).train()
    out = sae(torch.randn(6, 5, 4), Objective(dead_window=1))
    fired = torch.zeros(16, dtype=torch.bool)
    fired[out.sparse_codes.indices[out.sparse_codes.values > 0]] = True
    assert torch.equal(sae.steps_since_active == 0, fired) and torch.equal(sae.steps_since_active[~fired], torch.ones(int((~fired).sum()), dtype=torch.long))


@pytest.mark.parametrize("target,share", [("input", None), ("residual", 0.2)])
def test_resampling_points_dead_features_at_their_target_and_clears_adam(target, share):
    sae = build_sae(SAEConfig("bilinear", 6, 5, 24, k=2), seed=0)
    states = planted_states(64, 6, 5, n_atoms=8, seed=1).states
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae.train()
    sae(states).losses.total.backward()
    optimizer.step()
    with torch.no_grad():
        sae.b_enc.fill_(0.5)
        sae.steps_since_active.zero_()
        sae.steps_since_active[[1, 4, 7]] = 100
        sae.eval()
        targets = states - sae.b_dec if target == "input" else states - sae(states).recon
    live = torch.ones(24, dtype=torch.bool)
    live[[1, 4, 7]] = False
    live_scale = (sae.enc_k.norm(dim=-1) * sae.enc_v.norm(dim=-1)).sum(-1)[live].mean()
    n = resample_dead_features(sae, states, optimizer, torch.Generator().manual_seed(0), dead_window=100,
                               target=target, encoder_share=share)
    sae.requires_grad_(False)
    assert n == 3 and int(sae.steps_since_active.sum()) == 0
    left, _, right_t = torch.linalg.svd(targets.double())
    tops = left[:, :, 0, None] * right_t[:, None, 0, :]  # each target's unit top rank-1 matrix
    for f in (1, 4, 7):
        assert float(sae.b_enc[f]) == 0.0
        assert abs(float(sae.dec_k[f].norm()) - 1) < 1e-5 and abs(float(sae.dec_v[f].norm()) - 1) < 1e-5
        atom = (sae.dec_k[f, 0, :, None] * sae.dec_v[f, 0, None, :]).double()
        assert float((tops * atom).sum((1, 2)).abs().max()) > 1 - 1e-5  # the top factors of one target row
        form_norm = sae.enc_k[f].norm() * sae.enc_v[f].norm()
        # unit (the atom's least-squares coefficient), or the share of the live norm (not its square)
        torch.testing.assert_close(form_norm, torch.tensor(1.0) if share is None else share * live_scale)
        assert float(optimizer.state[sae.dec_k]["exp_avg"][f].abs().sum()) == 0.0
    assert float(optimizer.state[sae.dec_k]["exp_avg"][0].abs().sum()) > 0.0
    assert float(optimizer.state[sae.b_enc]["exp_avg_sq"][[1, 4, 7]].sum()) == 0.0


def test_batchtopk_inference_threshold_gives_about_k_features_per_state():
    planted = planted_states(4096, 8, 8, n_atoms=32, active=3, noise=0.01, seed=0)
    sae = build_sae(SAEConfig("bilinear", 8, 8, 64, k=4, activation="batchtopk"), seed=0)
    cfg = TrainConfig(lr=3e-3, warmup_steps=10, batch_size=128, steps=150, seed=0, val_fraction=0.0, progress=False,
                      log_every=50)
    sae = train_sae(sae, StateDataset.from_tensor(planted.states), cfg).sae.eval()
    assert float(sae.activation.threshold) > 0
    with torch.no_grad():
        single_state_l0 = torch.stack([(sae.encode(planted.states[i]) > 0).sum() for i in range(200)]).double().mean()
    print(f"BatchTopK k=4: single-state inference L0 {float(single_state_l0):.2f}")
    assert 2.0 <= float(single_state_l0) <= 8.0  # trained k*B budget is 4 per state on average
