"""Constant features: data with a large shared mean grows them under the reference recipe (zero biases, dead-only
resampling) and not under the default one; the health metrics and the end-of-training warning report them."""

import warnings

import pytest
import torch

from writelens.errors import FeatureHealthWarning
from writelens.sae import BilinearSAE, FlatSAE, MatrixSAE
from writelens.sae.data import StateDataset
from writelens.sae.health import feature_health, init_biases_from_data
from writelens.sae.metrics import evaluate_sae
from writelens.sae.resample import resample_dead_features
from writelens.sae.synthetic import planted_states
from writelens.sae.train import TrainConfig, train_sae

RECIPE = dict(lr=3e-3, lr_min=3e-4, warmup_steps=20, batch_size=128, steps=300, resample_every=100, dead_window=50,
              progress=False)
OLD = dict(init_from_data=False, dense_threshold=None)  # the reference's recipe: zero biases, dead-only resampling


def _shifted_states(seed: int, n: int = 1536, mean_norm: float = 3.0) -> StateDataset:
    """Sparse sums of 2 of 24 planted rank-1 atoms (coefficients 0.5-1.5) plus one shared mean state of norm 3."""
    planted = planted_states(n, 8, 8, n_atoms=24, active=2, noise=0.01, seed=seed)
    mean = torch.randn(8, 8, generator=torch.Generator().manual_seed(seed + 1))
    return StateDataset.from_tensor(planted.states + mean_norm * mean / mean.norm(), seq_ids=torch.arange(n) // 4)


def _train(seed: int, **recipe):
    sae = BilinearSAE(d_k=8, d_v=8, n_features=48, k=4, seed=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_sae(sae, _shifted_states(seed), TrainConfig(seed=seed, **{**RECIPE, **recipe}))
    return result, [w for w in caught if issubclass(w.category, FeatureHealthWarning)]


@pytest.mark.parametrize("seed", [0, 1])
def test_default_recipe_grows_no_constant_feature_where_the_reference_recipe_does(seed):
    old, old_warned = _train(seed, **OLD)
    new, new_warned = _train(seed)
    # the data provokes it: the old recipe ends with features firing on nearly every state, activation = bias
    assert old.final_val.n_dense >= 1 and old.final_val.n_bias_dominated >= 1
    assert float(old.health.fire_rate.max()) > 0.9 and old_warned and old.warnings
    # the default recipe: none, no warning, and a much better reconstruction
    assert new.final_val.n_dense == 0 and new.final_val.n_bias_dominated == 0
    assert float(new.health.fire_rate.max()) < 0.5
    assert not new_warned and not new.warnings and "warning" not in new.history[-1]
    assert new.final_val.fve > old.final_val.fve + 0.15


def test_forced_constant_feature_is_reported_logged_and_warned():
    def force(trainer):  # feature 5 wins every TopK on its bias alone
        with torch.no_grad():
            trainer.sae.b_enc[5] = 50.0

    data = _shifted_states(0)
    sae = BilinearSAE(d_k=8, d_v=8, n_features=48, k=4, seed=0)
    cfg = TrainConfig(seed=0, **{**RECIPE, "steps": 40, "resample_every": None, "eval_every": 40})
    with pytest.warns(FeatureHealthWarning, match=r"dense feature\(s\): 5 \(fires 100.0%"):
        result = train_sae(sae, data, cfg, callbacks=[force])
    assert result.final_val.n_dense == 1 and result.final_val.n_bias_dominated >= 1
    assert bool(result.health.dense[0, 5]) and bool(result.health.bias_dominated[0, 5])
    assert result.warnings and "bias-dominated" in result.warnings[0]
    assert result.history[-1]["warning"].startswith(result.warnings[0])  # (then its FVE warning: it is broken)
    assert result.history[-1]["val_n_dense"] == 1 and result.history[-1]["n_dense"] >= 1


def test_dense_features_are_resampled_like_dead_ones():
    data = _shifted_states(0)
    states = data.batch(0, 256, 0)
    sae = BilinearSAE(d_k=8, d_v=8, n_features=48, k=4, seed=0)
    init_biases_from_data(sae, data.mean())
    with torch.no_grad():
        sae.b_enc[7] = 50.0
    before = sae.dec_k[7].clone()
    gen = torch.Generator().manual_seed(0)
    assert resample_dead_features(sae, states, None, gen, dead_window=100) == 0  # not dead: left alone
    assert torch.equal(sae.dec_k[7], before)
    assert resample_dead_features(sae, states, None, gen, dead_window=100, dense_threshold=0.5,
                                  centre_biases=True) == 1
    assert not torch.equal(sae.dec_k[7], before)
    assert float(feature_health(sae, states).fire_rate[0, 7]) < 0.5
    with torch.no_grad():
        pre_at_mean = sae._preacts(states.mean(0)[None, None])[0, 0]
    assert abs(float(pre_at_mean[7])) < 1e-5  # re-centred: pre-activation 0 at the batch mean


@pytest.mark.parametrize("cls", [BilinearSAE, MatrixSAE, FlatSAE])
@pytest.mark.parametrize("center", [False, True])
def test_init_biases_from_data_centres_every_preactivation(cls, center):
    data = _shifted_states(1, n=256)
    mean = data.mean()
    sae = cls(d_k=8, d_v=8, n_features=16, k=4, center=center, seed=0)
    init_biases_from_data(sae, mean, encoder_bias=-0.01)
    if center:
        torch.testing.assert_close(sae.mean, mean)
        assert not bool(sae.b_dec.abs().sum() > 0)
    else:
        torch.testing.assert_close(sae.b_dec.detach(), mean)
    with torch.no_grad():
        pre = sae._preacts(sae._to_heads(mean[None])[1] - (sae.mean if center else 0))[0, 0]
    torch.testing.assert_close(pre, torch.full_like(pre, -0.01), atol=1e-5, rtol=0)


def test_health_statistics_match_a_naive_computation():
    data = _shifted_states(2, n=300)
    states = data.batch(0, 300, 0)
    sae = BilinearSAE(d_k=8, d_v=8, n_features=16, k=4, seed=3)
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-0.5, 2.0, 16))
    health = feature_health(sae, states, batch_size=64)  # several batches
    with torch.no_grad():
        out = sae.eval()(states)
    fired = out.codes > 0
    for f in range(16):
        pre = out.pre_acts[:, f].double()
        assert float(health.fire_rate[0, f]) == pytest.approx(float(fired[:, f].double().mean()))
        assert float(health.preact_mean[0, f]) == pytest.approx(float(pre.mean()), abs=1e-6)
        assert float(health.preact_std[0, f]) == pytest.approx(float(pre.std(unbiased=False)), abs=1e-5)
        if fired[:, f].any():
            share = pre.mean() / pre[fired[:, f]].mean()
            assert float(health.bias_share[0, f]) == pytest.approx(float(share), rel=1e-4)
    metrics = evaluate_sae(sae, StateDataset.from_tensor(states), batch_size=64)
    assert metrics.n_dense == health.n_dense == int((fired.double().mean(0) > 0.5).sum())
    assert metrics.n_bias_dominated == health.n_bias_dominated


def test_low_fve_and_short_budget_are_warned():
    """A final FVE below 0.3 and a budget below 20 states per feature each give a TrainingQualityWarning, a line in
    TrainResult.warnings and the last log record; a good run gives neither."""
    from writelens.errors import TrainingQualityWarning

    data = _shifted_states(0)
    sae = BilinearSAE(d_k=8, d_v=8, n_features=480, k=4, seed=0)
    cfg = TrainConfig(seed=0, **{**RECIPE, "steps": 2, "resample_every": None, "lr": 1e-6})
    with pytest.warns(TrainingQualityWarning) as caught:
        result = train_sae(sae, data, cfg)
    text = " ".join(str(w.message) for w in caught if issubclass(w.category, TrainingQualityWarning))
    assert "ends training at FVE" in text and "256 states (2 steps x 128) for 480 features" in text
    assert sum("FVE" in line or "budget" in line for line in result.warnings) == 2
    assert "budget" in result.history[-1]["warning"]
    good, _ = _train(0)
    assert good.final_val.fve > 0.3 and not good.warnings
