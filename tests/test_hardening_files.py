"""Non-finite numbers and damaged files (issue: hardening, items 4 and 5): NaN / inf in training data (the shard and
rows named), in states given to an SAE, in a loaded checkpoint; a training loss turning non-finite (stops, names
the step, keeps the last good checkpoint); flipped bytes in saved weights (SHA256); a damaged shard rewritten on
extraction resume."""

from __future__ import annotations

import warnings

import pytest
import torch
from models import ids, qwen35

import writelens as wl
from writelens import errors
from writelens.sae import BilinearSAE, load_sae
from writelens.sae.checkpoint import latest_checkpoint
from writelens.sae.data import StateDataset
from writelens.sae.files import tensors_sha256
from writelens.sae.train import TrainConfig, train_sae

D = 8


def _sae(**kw) -> BilinearSAE:
    return BilinearSAE(d_k=D, d_v=D, n_features=16, k=2, seed=0, **kw)


def _states(n=64, seed=0) -> torch.Tensor:
    return torch.randn(n, D, D, generator=torch.Generator().manual_seed(seed))


def _flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_nan_row_in_memory_data_is_named():
    x = _states()
    x[37, 2, 3] = float("nan")
    with pytest.raises(errors.NonFiniteError, match=r"in-memory training states.*1 of 64 rows \(first \[37\]"):
        train_sae(_sae(), StateDataset.from_tensor(x), TrainConfig(steps=2, batch_size=16, progress=False))


def test_inf_in_a_shard_names_the_shard(tmp_path):
    lens = wl.WriteLens(qwen35(layers=2, hk=1, hv=2))
    wl.extract(lens, ids(4, 10, seed=3), sites=[(0, 0)], out_dir=tmp_path, positions_per_seq=3, seed=0,
               seqs_per_shard=2, progress=False)
    path = tmp_path / "L0_H0" / "shard_00001.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    tensors["states"][1, 0, 0] = float("inf")
    save_file(tensors, str(path))  # no recorded SHA256: the damage is only found by the finiteness check
    data = StateDataset.from_shards(tmp_path, 0, 0)
    with pytest.raises(errors.NonFiniteError, match=r"shard 1 of L0 H0 .*shard_00001.*first \[1\]"):
        data.fetch(torch.arange(len(data)))


def test_non_finite_states_given_to_encode():
    x = _states(4)
    x[2] = float("nan")
    with pytest.raises(errors.NonFiniteError, match=r"states given to this SAE.*first \[2\]"):
        _sae().encode(x)


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    sae = _sae()
    with torch.no_grad():
        sae.dec_k[3] = float("nan")
    sae.save(tmp_path)
    with pytest.raises(errors.NonFiniteError, match="dec_k"):
        load_sae(tmp_path)


def test_flipped_bytes_in_saved_weights_fail_the_checksum(tmp_path):
    sae = _sae()
    sae.save(tmp_path)
    assert load_sae(tmp_path).cfg == sae.cfg  # intact: loads
    _flip_last_byte(tmp_path / "sae_weights.safetensors")
    with pytest.raises(errors.ChecksumError, match="SHA256"):
        load_sae(tmp_path)


def test_sha256_covers_names_dtypes_shapes_and_values():
    a = {"x": torch.zeros(2, 3), "y": torch.ones(4)}
    assert tensors_sha256(a) == tensors_sha256({"y": torch.ones(4), "x": torch.zeros(2, 3)})
    for other in ({"x": torch.zeros(3, 2), "y": torch.ones(4)}, {"x": torch.zeros(2, 3).double(), "y": torch.ones(4)},
                  {"z": torch.zeros(2, 3), "y": torch.ones(4)}, {"x": torch.zeros(2, 3), "y": torch.ones(4) * 2}):
        assert tensors_sha256(other) != tensors_sha256(a)


def test_diverging_training_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(trainer):
        if trainer.step == 7:
            with torch.no_grad():
                trainer.sae.dec_k.fill_(float("inf"))

    cfg = TrainConfig(steps=20, batch_size=16, checkpoint_every=5, eval_every=5, progress=False)
    with pytest.raises(errors.NonFiniteError, match=r"at step 7 .*step_00000005"):
        train_sae(_sae(), StateDataset.from_tensor(_states()), cfg, out_dir=tmp_path, callbacks=[poison])
    kept = latest_checkpoint(tmp_path / "checkpoints")
    assert kept.name == "step_00000005"
    assert all(torch.isfinite(p).all() for p in load_sae(kept).parameters())


def test_extraction_resume_rewrites_a_damaged_shard(tmp_path):
    lens = wl.WriteLens(qwen35(layers=2, hk=1, hv=2))
    x = ids(6, 10, seed=4)
    kw = dict(sites=[(0, 0), (1, 1)], positions_per_seq=3, seed=0, seqs_per_shard=2, progress=False)
    wl.extract(lens, x, out_dir=tmp_path / "clean", **kw)
    wl.extract(lens, x, out_dir=tmp_path / "damaged", **kw)
    bad = tmp_path / "damaged" / "L1_H1" / "shard_00002.safetensors"
    _flip_last_byte(bad)
    with pytest.warns(UserWarning, match="shard_00002.safetensors is bad and will be rewritten"):
        res = wl.extract(lens, x, out_dir=tmp_path / "damaged", **kw)
    assert res.written == [2]
    from safetensors.torch import load_file

    clean = load_file(str(tmp_path / "clean" / "L1_H1" / "shard_00002.safetensors"))
    assert tensors_sha256(load_file(str(bad))) == tensors_sha256(clean)  # rewritten exactly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wl.extract(lens, x, out_dir=tmp_path / "damaged", **kw).written == []


def test_resume_on_other_data_is_refused(tmp_path):
    from writelens.sae.train import Trainer

    resumed = TrainConfig(steps=10, batch_size=16, checkpoint_every=5, eval_every=5, progress=False)
    Trainer(_sae(), StateDataset.from_tensor(_states(seed=1)), resumed, out_dir=tmp_path).run(until_step=5)
    with pytest.raises(errors.CheckpointError, match="trained on other data"):
        train_sae(_sae(), StateDataset.from_tensor(_states(seed=2)), resumed, out_dir=tmp_path)
    assert train_sae(_sae(), StateDataset.from_tensor(_states(seed=1)), resumed, out_dir=tmp_path).steps == 10


def test_shard_fingerprint_follows_the_shards(tmp_path):
    lens = wl.WriteLens(qwen35(layers=2, hk=1, hv=2))
    kw = dict(sites=[(0, 0)], positions_per_seq=3, seed=0, seqs_per_shard=2, progress=False)
    wl.extract(lens, ids(4, 10, seed=3), out_dir=tmp_path / "a", **kw)
    wl.extract(lens, ids(4, 10, seed=3), out_dir=tmp_path / "b", **kw)
    wl.extract(lens, ids(4, 10, seed=5), out_dir=tmp_path / "c", **kw)
    fp = {k: StateDataset.from_shards(tmp_path / k, 0, 0).fingerprint() for k in "abc"}
    assert fp["a"] == fp["b"] != fp["c"]
    data = StateDataset.from_shards(tmp_path / "a", 0, 0)
    assert data.subset(torch.arange(3)).fingerprint() != fp["a"]
