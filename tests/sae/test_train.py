"""Trainer: exact resumption, stacked heads == separate heads, metrics, config persistence."""

import json

import pytest
import torch

from writelens.errors import CheckpointError
from writelens.sae import SAE, SAEConfig, build_sae
from writelens.sae.data import StateDataset
from writelens.sae.metrics import evaluate_sae
from writelens.sae.train import TrainConfig, Trainer, lr_at, train_sae


def _data(n=240, heads=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, *(() if heads is None else (heads,)), 6, 5)
    atoms = torch.randn(12, 6, 5, generator=g)
    codes = torch.rand(n, *(() if heads is None else (heads,)), 12, generator=g) * (torch.rand(n, *(() if heads is None else (heads,)), 12, generator=g) < 0.2)
    states = torch.einsum("...f,fkv->...kv", codes, atoms) + 0.05 * torch.randn(shape, generator=g)
    return StateDataset.from_tensor(states, seq_ids=torch.arange(n) // 3)


CFG = dict(lr=3e-3, lr_min=3e-4, warmup_steps=5, batch_size=32, steps=30, seed=3, log_every=5, eval_every=10,
           checkpoint_every=10, dead_window=4, k_aux=8, resample_every=7, progress=False)


class Interrupt(Exception):
    pass


def _stop_at(step):
    def callback(trainer):
        if trainer.step == step:
            raise Interrupt

    return callback


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, activation):
    sae_cfg = SAEConfig("bilinear", 6, 5, 24, k=3, activation=activation, center=True)
    # random atoms under TopK leave features dead, so resampling takes part; BatchTopK runs the data init
    cfg = TrainConfig(**CFG, atom_init="random" if activation == "topk" else "data")
    full = train_sae(build_sae(sae_cfg, seed=1), _data(), cfg, out_dir=tmp_path / "full")

    with pytest.raises(Interrupt):  # killed after the step-20 checkpoint, mid-way to the next one
        train_sae(build_sae(sae_cfg, seed=1), _data(), cfg, out_dir=tmp_path / "cut", callbacks=[_stop_at(25)])
    resumed = train_sae(build_sae(sae_cfg, seed=99), _data(), cfg, out_dir=tmp_path / "cut")

    assert resumed.steps == full.steps == 30
    if activation == "topk":  # the dead-feature machinery (AuxK, resampling) took part
        assert any(r["resampled"] for r in full.history) and any(r["aux"] > 0 for r in full.history)
    full_state, resumed_state = full.sae.state_dict(), resumed.sae.state_dict()
    for name, tensor in full_state.items():
        torch.testing.assert_close(resumed_state[name], tensor, rtol=0, atol=1e-7, msg=name)
    full_log = (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()
    cut_log = (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()
    drop = ("states_per_s",)
    strip = lambda lines: [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]  # noqa: E731
    assert strip(cut_log) == strip(full_log)
    assert (tmp_path / "cut" / "final" / "cfg.json").is_file() and (tmp_path / "cut" / "best" / "cfg.json").is_file()
    assert len(list((tmp_path / "cut" / "checkpoints").glob("step_*"))) == 2


def test_resume_refuses_another_config(tmp_path):
    sae_cfg = SAEConfig("bilinear", 6, 5, 24, k=3)
    train_sae(build_sae(sae_cfg, seed=1), _data(), TrainConfig(**{**CFG, "steps": 10}), out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="another TrainConfig"):
        Trainer(build_sae(sae_cfg, seed=1), _data(), TrainConfig(**{**CFG, "steps": 10, "lr": 1.0}), out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="another SAE config"):
        Trainer(build_sae(sae_cfg.replace(k=4), seed=1), _data(), TrainConfig(**{**CFG, "steps": 10}), out_dir=tmp_path)
    fresh = Trainer(build_sae(sae_cfg, seed=1), _data(), TrainConfig(**{**CFG, "steps": 10, "lr": 1.0}),
                    out_dir=tmp_path, resume=False)
    assert fresh.step == 0
    saved = json.loads((tmp_path / "train_cfg.json").read_text())
    assert TrainConfig.from_dict(saved).lr == 1.0


@pytest.mark.parametrize("arch", ["bilinear", "flat"])
def test_stacked_heads_train_like_separate_dictionaries(arch):
    heads = 3
    data = _data(heads=heads)
    cfg = TrainConfig(**{**CFG, "resample_every": None, "val_fraction": 0.0, "steps": 12})
    singles = [build_sae(SAEConfig(arch, 6, 5, 24, k=3), seed=10 + h) for h in range(heads)]
    stacked = SAE.stack(singles)
    trained = train_sae(stacked, data, cfg).sae
    states = data.fetch(torch.arange(len(data)))
    for h in range(heads):
        alone = train_sae(singles[h], StateDataset.from_tensor(states[:, h], data.seq_ids), cfg).sae
        for name, tensor in alone.state_dict().items():
            torch.testing.assert_close(trained.head(h).state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_eval_metrics_use_per_element_variance():
    data = _data()
    sae = build_sae(SAEConfig("matrix", 6, 5, 24, k=3), seed=0).eval()
    metrics = evaluate_sae(sae, data, batch_size=50)
    x = data.fetch(torch.arange(len(data))).double()
    with torch.no_grad():
        recon = sae(x.float()).recon.double()
    err = (recon - x).pow(2).sum()
    assert metrics.mse == pytest.approx(float(err / x.numel()), rel=1e-6)
    assert metrics.fve == pytest.approx(float(1 - err / (x - x.mean(0)).pow(2).sum()), rel=1e-6)
    assert metrics.nmse == pytest.approx(float(err / x.pow(2).sum()), rel=1e-6)
    assert metrics.l0 <= 3 and metrics.n_states == len(data)


def test_schedule_warms_up_then_decays_to_lr_min():
    cfg = TrainConfig(lr=1.0, lr_min=0.1, warmup_steps=4)
    assert [lr_at(s, cfg, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(19, cfg, 20) == pytest.approx(0.1)
    assert lr_at(10, cfg, 20) < 1.0
