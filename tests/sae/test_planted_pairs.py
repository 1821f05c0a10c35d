"""The trainer finds a planted pair dictionary (the recall organisms' write structure), where the reference
recipe settles in per-value atoms; and the data init of atoms does what it says."""

from __future__ import annotations

import pytest
import torch

from writelens.errors import SAEConfigError
from writelens.sae import BilinearSAE, FlatSAE
from writelens.sae.data import StateDataset
from writelens.sae.resample import init_atoms_from_data
from writelens.sae.synthetic import pair_fit, planted_pairs
from writelens.sae.train import TrainConfig, train_sae

REFERENCE = dict(atom_init="random", resample_target="residual", resample_encoder_share=0.2)


def _train(pairs, recipe: dict, seed: int):
    sae = BilinearSAE(d_k=16, d_v=16, n_features=128, k=1, seed=seed)
    cfg = TrainConfig(lr=3e-3, lr_min=3e-4, warmup_steps=20, batch_size=128, steps=400, seed=seed, val_fraction=0.0,
                      log_every=10**6, resample_every=100, progress=False, **recipe)
    return train_sae(sae, StateDataset.from_tensor(pairs.states), cfg).sae.eval()


@pytest.mark.parametrize("seed", [0, 1])
def test_default_trainer_recovers_planted_pairs_where_the_reference_recipe_does_not(seed):
    pairs = planted_pairs(8000, n_keys=8, n_values=8, dim=16, seed=seed)
    default = pair_fit(_train(pairs, {}, seed), pairs, n=2000)
    reference = pair_fit(_train(pairs, REFERENCE, seed), pairs, n=2000)
    print(f"seed {seed}: default {default.distinct} features, purity {default.purity:.3f}, FVE {default.fve:.3f}, "
          f"pairs matched {default.recovery.fraction:.3f}; reference {reference.distinct}, {reference.purity:.3f}, "
          f"{reference.fve:.3f}, {reference.recovery.fraction:.3f}")
    assert default.n_pairs == 64
    assert default.recovery.fraction >= 0.95 and default.purity >= 0.95 and default.fve >= 0.95
    assert reference.recovery.fraction <= 0.6 and reference.purity <= 0.8  # the failure the default fixes


@pytest.mark.parametrize("cls", [BilinearSAE, FlatSAE])
def test_init_atoms_from_data_points_features_at_distinct_centred_states(cls):
    g = torch.Generator().manual_seed(0)
    states = torch.randn(50, 2, 5, 4, generator=g)  # 50 states of 2 heads
    sae = cls(d_k=5, d_v=4, n_features=30, k=2, n_heads=2, seed=0)
    centre = states.mean(0)
    n = init_atoms_from_data(sae, lambda rows: states[rows], len(states), centre, torch.Generator().manual_seed(1))
    assert n == 30
    with torch.no_grad():
        for head in range(2):
            atoms = sae.atoms(torch.arange(30), head=head).matrix().double().flatten(1)
            atoms = atoms / atoms.norm(dim=1, keepdim=True)
            centred = (states[:, head] - centre[head]).double()
            u, s, vt = torch.linalg.svd(centred)
            top = u[:, :, 0, None] * vt[:, None, 0, :] if cls is BilinearSAE else centred / s.norm(dim=1)[:, None, None]
            match = (atoms @ top.flatten(1).T).abs()  # [30 features, 50 states]
            best = match.max(1)
            assert float(best.values.min()) > 1 - 1e-5  # each feature is one state's direction ...
            assert best.indices.unique().numel() == 30  # ... a distinct one, the same rows for every head
            if head == 0:
                rows0 = best.indices
            else:
                assert torch.equal(torch.sort(best.indices).values, torch.sort(rows0).values)


def test_fewer_states_than_features_leave_the_rest_random_and_bad_choices_are_refused():
    states = torch.randn(10, 5, 4, generator=torch.Generator().manual_seed(0))
    sae = BilinearSAE(d_k=5, d_v=4, n_features=30, k=2, seed=0)
    before = sae.dec_k.detach().clone()
    n = init_atoms_from_data(sae, lambda rows: states[rows], 10, states.mean(0), torch.Generator().manual_seed(1))
    assert n == 10 and int((sae.dec_k.detach() != before).any(-1).any(-1).sum()) == 10
    assert TrainConfig().atoms_from_data and not TrainConfig(read_weight=1.0).atoms_from_data  # "auto"
    assert TrainConfig(atom_init="data", read_weight=1.0).atoms_from_data and not TrainConfig(atom_init="random").atoms_from_data
    for field, value in (("atom_init", "kmeans"), ("resample_target", "state"), ("resample_encoder_share", 0.0)):
        with pytest.raises(SAEConfigError, match=field):
            TrainConfig(**{field: value})


def test_pair_fit_scores_the_planted_dictionary_itself_as_perfect_and_a_per_value_one_as_not():
    pairs = planted_pairs(3000, n_keys=6, n_values=5, dim=12, seed=3)
    u, _, vt = torch.linalg.svd(pairs.atoms.flatten(0, 1).double())  # each pair atom = k̂ v̂ᵀ (rank 1)
    k_hat, v_hat = u[:, :, 0].float(), vt[:, 0, :].float()  # [30, d] each, pair index = K * 5 + V
    sign = torch.sign((v_hat.reshape(6, 5, 12) * v_hat.reshape(6, 5, 12)[:1]).sum(-1)).reshape(30, 1)
    k_hat, v_hat = k_hat * sign, v_hat * sign  # one sign per value token across keys (the atom is unchanged)
    oracle = BilinearSAE(d_k=12, d_v=12, n_features=30, k=1, seed=0)
    with torch.no_grad():
        for p in (oracle.dec_k, oracle.enc_k):
            p.copy_(k_hat[:, None, :])
        for p in (oracle.dec_v, oracle.enc_v):
            p.copy_(v_hat[:, None, :])
    fit = pair_fit(oracle.eval(), pairs, n=2000)
    assert fit.n_pairs == 30
    assert fit.purity > 0.99 and fit.recovery.fraction == 1.0 and fit.fve > 0.95 and fit.distinct == 30
    # one atom per value token (the mean key of that value): the local optimum the reference recipe settles in
    per_value = BilinearSAE(d_k=12, d_v=12, n_features=5, k=1, seed=0)
    mean_key = torch.nn.functional.normalize(k_hat.reshape(6, 5, 12).mean(0), dim=-1)  # [V, d]
    with torch.no_grad():
        for p in (per_value.dec_k, per_value.enc_k):
            p.copy_(mean_key[:, None, :])
        for p in (per_value.dec_v, per_value.enc_v):
            p.copy_(v_hat.reshape(6, 5, 12)[0][:, None, :])
    coarse = pair_fit(per_value.eval(), pairs, n=2000)
    print(f"per-value dictionary: {coarse}")
    assert coarse.distinct <= 5 and coarse.purity < 0.4 and coarse.recovery.fraction == 0.0
