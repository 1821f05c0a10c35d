"""The read-aligned objective (writelens.sae.objectives): its gradient equals autograd of the loss written from its
definition (a plain loop over queries, no moment matrix), w = 0 is the plain MSE, the trainer wires and persists
the metric, and training with it explains more of what the reads see."""

import copy

import pytest
import torch

from writelens.errors import CheckpointError, SAEConfigError, SAEInputError
from writelens.sae import SAEConfig, build_sae
from writelens.sae.config import Objective
from writelens.sae.data import StateDataset
from writelens.sae.naive import naive_forward, naive_read_loss
from writelens.sae.objectives import READ_METRIC_FILE, ReadMetric, read_fve, weighted_squared_error
from writelens.sae.train import TrainConfig, train_sae


def _queries(n_heads, n, d_k, seed=0):
    """Anisotropic queries: most power on the first two key dimensions."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([3.0, 2.0] + [0.3] * (d_k - 2), dtype=torch.float64)
    return torch.randn(n_heads, n, d_k, dtype=torch.float64, generator=g) * scales


@pytest.mark.parametrize("arch,heads", [("bilinear", None), ("bilinear", 2), ("matrix", None), ("flat", 2)])
@pytest.mark.parametrize("weight", [0.0, 0.6, 1.0])
def test_read_loss_gradient_matches_autograd_of_the_definition(arch, heads, weight):
    cfg = SAEConfig(arch, 6, 5, 24, rank=1 if arch == "flat" else 2, k=3, n_heads=heads)
    sae = build_sae(cfg, seed=3).double().eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype, generator=g))
    n_heads = heads or 1
    queries = _queries(n_heads, 9, 6)
    metric = ReadMetric.from_queries(queries)
    states = torch.randn(7, *sae.head_shape, 6, 5, dtype=torch.float64, generator=g)
    fast, naive = copy.deepcopy(sae), copy.deepcopy(sae)
    out = fast(states, Objective(lambda_aux=0, read_weighting=metric.weighting(weight).double()))
    ref_recon = naive_forward(naive, states, training=False).recon
    _, heads_states = naive._to_heads(states)
    ref = naive_read_loss(ref_recon - heads_states, queries, weight).sum()
    torch.testing.assert_close(out.losses.total, ref)
    out.losses.total.backward()
    ref.backward()
    for (name, p), q in zip(fast.named_parameters(), naive.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=f"gradient of {name}")


def test_identity_weighting_is_the_plain_mse_and_the_metric_is_normalised():
    g = torch.Generator().manual_seed(0)
    error = torch.randn(2, 5, 4, 3, dtype=torch.float64, generator=g)
    eye = torch.eye(4, dtype=torch.float64).expand(2, 4, 4)
    torch.testing.assert_close(weighted_squared_error(error, eye), error.pow(2).mean((1, 2, 3)))
    metric = ReadMetric.from_queries(_queries(2, 50, 4))
    torch.testing.assert_close(torch.diagonal(metric.moment, dim1=-2, dim2=-1).sum(-1), torch.full((2,), 4.0))
    torch.testing.assert_close(metric.weighting(0.0), torch.eye(4).expand(2, 4, 4))
    assert metric.moment.shape == (2, 4, 4) and metric.n_queries == 50


@pytest.mark.parametrize("bad", [torch.zeros(3, 4), torch.full((3, 4), float("nan")), torch.ones(4)])
def test_bad_queries_are_named_errors(bad):
    with pytest.raises(SAEInputError):
        ReadMetric.from_queries(bad)


def test_weight_outside_0_1_is_refused():
    with pytest.raises(SAEConfigError, match=r"read_weight must be in \[0, 1\]"):
        ReadMetric.from_queries(_queries(1, 10, 4)).weighting(1.5)


def _read_data(n=600, seed=0):
    """States whose first two key rows are what the reads see; the other rows carry larger, unread structure."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(16, 6, 5, generator=g)
    atoms[:8, 2:] = 0  # atoms 0-7 live on the read rows, atoms 8-15 (3x larger) on the unread ones
    atoms[8:, :2] = 0
    atoms[8:] *= 3
    codes = torch.rand(n, 16, generator=g) * (torch.rand(n, 16, generator=g) < 0.25)
    states = torch.einsum("nf,fkv->nkv", codes, atoms)
    return StateDataset.from_tensor(states, seq_ids=torch.arange(n) // 4), states


def test_training_with_the_read_metric_explains_more_of_what_the_reads_see(tmp_path):
    data, states = _read_data()
    q = torch.zeros(1, 400, 6, dtype=torch.float64)
    q[..., :2] = torch.randn(1, 400, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q[..., 2:] = 0.01 * torch.randn(1, 400, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    metric = ReadMetric.from_queries(q)
    base = dict(lr=1e-2, lr_min=1e-3, warmup_steps=5, batch_size=64, steps=150, seed=0, val_fraction=0,
                progress=False, resample_every=50)
    fve = {}
    for w in (0.0, 1.0):
        sae = build_sae(SAEConfig("bilinear", 6, 5, 8, k=2), seed=0)
        res = train_sae(sae, data, TrainConfig(**base, read_weight=w), read_metric=metric if w else None,
                        out_dir=tmp_path / f"w{w}")
        with torch.no_grad():
            fve[w] = read_fve(states, res.sae.eval()(states).recon, metric)
    assert fve[1.0] > fve[0.0] + 0.1, fve


def test_trainer_saves_checks_and_reuses_the_metric(tmp_path):
    data, _ = _read_data(200)
    metric = ReadMetric.from_queries(_queries(1, 40, 6))
    cfg = TrainConfig(lr=3e-3, warmup_steps=2, batch_size=32, steps=6, checkpoint_every=3, val_fraction=0,
                      progress=False, read_weight=1.0)

    def sae():
        return build_sae(SAEConfig("bilinear", 6, 5, 8, k=2), seed=0)

    with pytest.raises(SAEConfigError, match="needs read_metric="):
        train_sae(sae(), data, cfg)
    with pytest.raises(SAEConfigError, match="read_weight is 0"):
        train_sae(sae(), data, TrainConfig(steps=2, batch_size=32, progress=False), read_metric=metric)
    with pytest.raises(SAEConfigError, match=r"the SAE needs \[1, 6, 6\]"):
        train_sae(sae(), data, cfg, read_metric=ReadMetric.from_queries(_queries(1, 40, 4)))

    class Stop(Exception):
        pass

    def stop_at_3(trainer):
        if trainer.step == 3:
            raise Stop

    with pytest.raises(Stop):
        train_sae(sae(), data, cfg, read_metric=metric, out_dir=tmp_path / "run", callbacks=[stop_at_3])
    assert ReadMetric.load(tmp_path / "run" / READ_METRIC_FILE).fingerprint() == metric.fingerprint()
    with pytest.raises(CheckpointError, match="another read metric"):
        train_sae(sae(), data, cfg, read_metric=ReadMetric.from_queries(_queries(1, 40, 6, seed=9)),
                  out_dir=tmp_path / "run")
    resumed = train_sae(sae(), data, cfg, out_dir=tmp_path / "run")  # the saved metric is found
    straight = train_sae(sae(), data, cfg, read_metric=metric, out_dir=tmp_path / "straight")
    for a, b in zip(resumed.sae.parameters(), straight.sae.parameters(), strict=True):
        torch.testing.assert_close(a, b)
