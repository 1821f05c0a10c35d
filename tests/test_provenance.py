"""Provenance (issue: hardening, item 1): an SAE trained on another site, target or model config is refused by the
experiments unless the caller overrides; training from an extraction records where the data came from; the shipped
zoo SAEs carry it."""

from __future__ import annotations

import pytest
import torch
from models import ids, qwen35

import writelens as wl
from writelens import errors
from writelens.experiments import ReplacementOptions, replacement_test
from writelens.experiments.common import single_head_sae
from writelens.provenance import check_sae_provenance, config_sha256
from writelens.sae import BilinearSAE
from writelens.sae.data import StateDataset
from writelens.sae.train import TrainConfig, train_sae


@pytest.fixture(scope="module")
def gdn_tiny():
    model, _ = wl.zoo.load("gdn-tiny")
    return wl.WriteLens(model)


def _sae(d=64, **meta):
    return BilinearSAE(d_k=d, d_v=d, n_features=8, k=2, seed=0, metadata=meta)


def test_zoo_saes_record_their_site_and_model(gdn_tiny):
    sae = wl.zoo.load_sae("gdn-tiny", 4, 1)
    meta = sae.cfg.metadata
    assert (meta["layer"], meta["head"], meta["target"]) == (4, 1, "sampled_positions")
    assert meta["model_config_sha256"] == config_sha256(gdn_tiny.model)
    check_sae_provenance(sae, gdn_tiny.model, 4, 1)  # its own site: accepted
    with pytest.raises(errors.SAEProvenanceError, match=r"head 1 \(used at head 2\)"):
        check_sae_provenance(sae, gdn_tiny.model, 4, 2)


CASES = [
    (dict(layer=4, head=1), (5, 1), "states", r"layer 4 \(used at layer 5\)"),
    (dict(layer=4, head=1), (4, 0), "states", r"head 1 \(used at head 0\)"),
    (dict(layer=4, heads=[0, 1]), (4, 3), "states", r"heads \[0, 1\] \(used at head 3\)"),
    (dict(layer=4, head=1, target="writes"), (4, 1), "states", r"target 'writes' \(used on states\)"),
    (dict(layer=4, head=1, target="sampled_positions"), (4, 1), "writes", "target 'sampled_positions'"),
    (dict(model="other", model_config_sha256="0" * 64), (4, 1), "states", r"model 'other' with config 000000000000"),
]


@pytest.mark.parametrize("meta,site,target,message", CASES)
def test_foreign_saes_are_refused_and_the_override_accepts_them(gdn_tiny, meta, site, target, message):
    sae = _sae(**meta)
    with pytest.raises(errors.SAEProvenanceError, match=message):
        check_sae_provenance(sae, gdn_tiny.model, *site, target=target)
    check_sae_provenance(sae, gdn_tiny.model, *site, target=target, allow_foreign=True)


def test_unrecorded_fields_are_not_checked(gdn_tiny):
    check_sae_provenance(_sae(), gdn_tiny.model, 4, 1)
    check_sae_provenance(_sae(layer=4, head=1, target="sampled_positions"), gdn_tiny.model, 4, 1, target=None)


def test_experiments_refuse_before_running_and_honour_the_override(gdn_tiny):
    sae = _sae(layer=4, head=1, target="sampled_positions")
    x = torch.randint(3, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    with pytest.raises(errors.SAEProvenanceError, match="replacement"):
        replacement_test(gdn_tiny, sae, (4, 2), x, ReplacementOptions(progress=False))
    res = replacement_test(gdn_tiny, sae, (4, 2), x, ReplacementOptions(progress=False, allow_foreign_sae=True,
                                                                        max_firings=4))
    assert res.layer == 4 and res.head == 2
    with pytest.raises(errors.SAEProvenanceError):
        single_head_sae(sae, 2, lens=gdn_tiny, layer=4)


def test_training_from_an_extraction_records_the_provenance(tmp_path):
    lens = wl.WriteLens(qwen35(layers=2, hk=1, hv=2))
    wl.extract(lens, ids(8, 12, seed=2), sites=[(1, 1)], out_dir=tmp_path / "x", positions_per_seq=4, seed=0,
               progress=False)
    s = lens.site(1, 1)
    sae = BilinearSAE(d_k=s.d_k, d_v=s.d_v, n_features=8, k=2, seed=0)
    trained = train_sae(sae, StateDataset.from_shards(tmp_path / "x", 1, 1),
                        TrainConfig(steps=3, batch_size=8, progress=False)).sae
    meta = trained.cfg.metadata
    assert (meta["layer"], meta["head"], meta["target"]) == (1, 1, "sampled_positions")
    assert meta["model_config_sha256"] == config_sha256(lens.model)
    check_sae_provenance(trained, lens.model, 1, 1)
    other = qwen35(layers=3, hk=1, hv=2)  # another model of the same head shape
    with pytest.raises(errors.SAEProvenanceError, match="config"):
        check_sae_provenance(trained, other, 1, 1)


def test_config_hash_ignores_paths_dtypes_and_versions(tmp_path):
    model = qwen35(layers=2, hk=1, hv=2)
    model.save_pretrained(tmp_path / "m")
    loaded = type(model).from_pretrained(tmp_path / "m", dtype=torch.float64)
    assert config_sha256(loaded) == config_sha256(model)
    assert config_sha256(qwen35(layers=3, hk=1, hv=2)) != config_sha256(model)
