"""Save / load / hub round trips and the errors for broken folders."""

import json

import pytest
import torch

import writelens as wl
from writelens.errors import CheckpointError, SAEConfigError
from writelens.sae import SAE, BilinearSAE, SAEConfig, build_sae
from writelens.sae.io import CONFIG_FILE, WEIGHTS_FILE


def _trained_like(cfg):
    sae = build_sae(cfg, seed=0)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sae.train()
    sae(torch.randn(6, *sae.head_shape, cfg.d_k, cfg.d_v))  # touch buffers (dead counters, thresholds)
    return sae.eval()


@pytest.mark.parametrize(
    "cfg",
    [
        SAEConfig("bilinear", 4, 3, 16, k=2),
        SAEConfig("bilinear", 4, 3, 16, k=2, tied=True, rank=2, activation="batchtopk", center=True),
        SAEConfig("matrix", 4, 3, 16, k=2, rank=2, activation="jumprelu", n_heads=2),
        SAEConfig("flat", 4, 3, 16, k=2, n_heads=3, metadata={"layer": 9, "heads": [0, 1, 2]}),
    ],
)
def test_save_load_round_trip(tmp_path, cfg):
    sae = _trained_like(cfg)
    sae.save(tmp_path / "sae")
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    loaded = wl.load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae) and loaded.cfg == cfg
    x = torch.randn(5, *sae.head_shape, cfg.d_k, cfg.d_v)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    torch.testing.assert_close(loaded(x).recon, sae(x).recon)
    assert SAE.from_pretrained(str(tmp_path), subfolder="sae").cfg == cfg


def test_stacked_heads_split_and_stack():
    sae = _trained_like(SAEConfig("bilinear", 4, 3, 16, k=2, n_heads=3))
    x = torch.randn(5, 3, 4, 3)
    for h in range(3):
        torch.testing.assert_close(sae.head(h).encode(x[:, h]), sae.encode(x)[:, h])
    restacked = SAE.stack([sae.head(h) for h in range(3)])
    torch.testing.assert_close(restacked(x).recon, sae(x).recon)


def test_hub_paths_use_huggingface_hub(tmp_path, monkeypatch):
    sae = _trained_like(SAEConfig("bilinear", 4, 3, 16, k=2))
    sae.save(tmp_path / "snap" / "writesae_L0_H1")
    calls = {}

    def fake_snapshot_download(repo_id, **kwargs):
        calls["download"] = (repo_id, kwargs["allow_patterns"])
        return str(tmp_path / "snap")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = SAE.from_pretrained("someone/saes", subfolder="writesae_L0_H1")
    assert calls["download"][0] == "someone/saes" and "writesae_L0_H1/*" in calls["download"][1]
    torch.testing.assert_close(loaded.dec_k, sae.dec_k)

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["create"] = repo_id

        def upload_folder(self, repo_id, folder_path, path_in_repo, commit_message, revision):
            calls["upload"] = (repo_id, sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir()), path_in_repo)
            return "commit"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert sae.push_to_hub("me/saes", subfolder="L0_H1") == "commit"
    assert calls["upload"] == ("me/saes", [CONFIG_FILE, WEIGHTS_FILE], "L0_H1")


def test_broken_folders_raise_checkpoint_errors(tmp_path):
    sae = _trained_like(SAEConfig("bilinear", 4, 3, 16, k=2))
    good = sae.save(tmp_path / "good")

    with pytest.raises(CheckpointError, match="no cfg.json"):
        wl.load_sae(tmp_path)

    truncated = tmp_path / "truncated"
    sae.save(truncated)
    data = (truncated / WEIGHTS_FILE).read_bytes()
    (truncated / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        wl.load_sae(truncated)

    foreign = tmp_path / "foreign"
    sae.save(foreign)
    (foreign / CONFIG_FILE).write_text(json.dumps({"sae_type": "bilinear", "n_features": 16}))
    with pytest.raises(CheckpointError, match="not a writelens SAE config"):
        wl.load_sae(foreign)

    mismatched = tmp_path / "mismatched"
    sae.save(mismatched)
    cfg = json.loads((good / CONFIG_FILE).read_text())
    cfg["n_features"] = 32
    (mismatched / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match its config"):
        wl.load_sae(mismatched)

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "best.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="release layout"):
        wl.load_sae(legacy)


def test_config_errors_are_explicit():
    with pytest.raises(SAEConfigError, match="k=64 exceeds n_features"):
        SAEConfig("bilinear", 4, 4, 32, k=64)
    with pytest.raises(SAEConfigError, match="unknown SAE architecture"):
        build_sae(SAEConfig("nope", 4, 4, 32, k=2))
    with pytest.raises(SAEConfigError, match="architecture 'bilinear'"):
        BilinearSAE(SAEConfig("flat", 4, 4, 32, k=2))
    assert BilinearSAE(d_k=4, d_v=4, n_features=8, k=2).cfg.architecture == "bilinear"


def test_atoms_are_unit_norm_factors():
    sae = _trained_like(SAEConfig("bilinear", 5, 4, 16, k=2, rank=2))
    atoms = sae.atoms([0, 3])
    torch.testing.assert_close(atoms.key.norm(dim=-1), torch.ones(2, 2))
    torch.testing.assert_close(atoms.matrix(), torch.einsum("nrk,nrv->nkv", sae.dec_k[[0, 3]], sae.dec_v[[0, 3]]))
    flat = _trained_like(SAEConfig("flat", 5, 4, 16, k=2))
    torch.testing.assert_close(flat.atoms([1]).matrix(), flat.dec[[1]], rtol=1e-4, atol=1e-5)
