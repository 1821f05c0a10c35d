"""The paper's release layout: checkpoints built here in that layout load as writelens SAEs whose encode /
decode equal a small re-implementation of the reference forward (the oracle below)."""

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

from writelens.errors import CheckpointError, ChecksumError
from writelens.sae import SAE
from writelens.sae.reference import load_reference_sae

DK, DV, NF, K = 5, 4, 12, 3


def oracle(sae_type, state, x, k=K, use_batchtopk=False):
    """The reference forward, restated: returns (codes [B, F], reconstruction [B, d_k, d_v])."""
    flat = x.reshape(x.shape[0], -1)
    rank3 = lambda t: t.unsqueeze(1) if t.dim() == 2 else t  # noqa: E731
    if sae_type in ("flat", "rank1"):
        pre = flat @ state["encoder.weight"].T + state["encoder.bias"]
    else:
        v_enc = rank3(state.get("V_enc", state["V_dec"]))
        w_enc = rank3(state.get("W_enc", state["W_dec"]))
        pre = torch.einsum("irk,bkv,irv->bi", v_enc, x, w_enc) + state["b_enc"]
    if sae_type == "bilinear_jumprelu":
        codes = pre * (pre > state["log_threshold"].exp())
    else:
        values, idx = torch.topk(pre, k, dim=-1)
        codes = torch.zeros_like(pre).scatter(-1, idx, F.relu(values))
    if sae_type == "flat":
        recon = (codes @ state["decoder.weight"].T + state["decoder.bias"]).reshape_as(x)
    elif sae_type == "rank1":
        recon = torch.einsum("bi,irk,irv->bkv", codes, rank3(state["V"]), rank3(state["W"])) + state["bias"]
    else:
        recon = torch.einsum("bi,irk,irv->bkv", codes, rank3(state["V_dec"]), rank3(state["W_dec"])) + state["bias"]
    return codes, recon


def reference_state(sae_type, rank=1, legacy_2d=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    factor = lambda d: F.normalize(r(NF, d), dim=-1) if legacy_2d else F.normalize(r(NF, rank, d), dim=-1)  # noqa: E731
    if sae_type == "flat":
        return {"encoder.weight": r(NF, DK * DV), "encoder.bias": r(NF), "decoder.weight": r(DK * DV, NF),
                "decoder.bias": r(DK * DV), "steps_since_active": torch.zeros(NF, dtype=torch.long)}
    if sae_type == "rank1":
        return {"encoder.weight": r(NF, DK * DV), "encoder.bias": r(NF), "V": factor(DK), "W": factor(DV),
                "bias": r(DK, DV), "steps_since_active": torch.zeros(NF, dtype=torch.long)}
    state = {"V_dec": factor(DK), "W_dec": factor(DV), "b_enc": 0.1 * r(NF), "bias": r(DK, DV),
             "steps_since_active": torch.arange(NF)}
    if sae_type != "bilinear_tied":
        state.update(V_enc=factor(DK), W_enc=factor(DV))
    if sae_type == "bilinear_jumprelu":
        state["log_threshold"] = torch.full((NF,), -1.0)
    return state


def write_release(root, cells):
    """cells: {folder: (sae_type, state, extra config)} -> files + manifest.json, as the release."""
    manifest = {}
    for folder, (sae_type, state, extra) in cells.items():
        config = {"sae_type": sae_type, "layer": 9, "head": 4, "n_features": NF, "d_k": DK, "d_v": DV,
                  "d_in": DK * DV, "k": K, "rank": 1, "use_batchtopk": False, "seed": 42, **extra}
        payload = {"model_state_dict": state, "config": config, "epoch": 19, "step": 320, "val_mse": 2.2e-5}
        (root / folder).mkdir(parents=True)
        torch.save(payload, root / folder / "best.pt")
        manifest[folder] = {"sha256": hashlib.sha256((root / folder / "best.pt").read_bytes()).hexdigest(), "kind": "sae"}
    (root / "manifest.json").write_text(json.dumps(manifest))


CASES = [
    ("bilinear", 1, False), ("bilinear", 2, False), ("bilinear", 1, True), ("bilinear_tied", 1, False),
    ("bilinear_jumprelu", 1, False), ("rank1", 1, False), ("rank1", 1, True), ("flat", 1, False),
]


@pytest.mark.parametrize("sae_type,rank,legacy", CASES)
def test_reference_checkpoints_match_the_reference_forward(tmp_path, sae_type, rank, legacy):
    state = reference_state(sae_type, rank, legacy)
    write_release(tmp_path, {"writesae_L9_H4": (sae_type, state, {"rank": rank})})
    sae = load_reference_sae(tmp_path, subfolder="writesae_L9_H4")
    assert sae.cfg.metadata["sha256"] and sae.cfg.metadata["val_mse"] == 2.2e-5
    x = torch.randn(7, DK, DV)
    codes, recon = oracle(sae_type, state, x)
    torch.testing.assert_close(sae.encode(x), codes, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(codes), recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x).recon, recon, rtol=1e-5, atol=1e-5)
    # the same through from_pretrained on a local copy of the release
    again = SAE.from_pretrained(str(tmp_path), subfolder="writesae_L9_H4")
    torch.testing.assert_close(again.encode(x), codes, rtol=1e-5, atol=1e-5)


def test_batchtopk_checkpoints_infer_like_the_reference(tmp_path):
    state = reference_state("bilinear")
    write_release(tmp_path, {"c": ("bilinear", state, {"use_batchtopk": True})})
    sae = load_reference_sae(tmp_path / "c")
    assert sae.cfg.activation == "batchtopk"
    x = torch.randn(6, DK, DV)
    torch.testing.assert_close(sae.encode(x), oracle("bilinear", state, x)[0], rtol=1e-5, atol=1e-5)


def test_tampered_file_fails_the_manifest_check(tmp_path):
    write_release(tmp_path, {"writesae_L9_H4": ("bilinear", reference_state("bilinear"), {})})
    path = tmp_path / "writesae_L9_H4" / "best.pt"
    data = bytearray(path.read_bytes())
    data[-200] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="altered or truncated"):
        load_reference_sae(tmp_path, subfolder="writesae_L9_H4")
    with pytest.raises(CheckpointError) as skipped:  # without the check, torch.load finds the damage itself
        load_reference_sae(tmp_path, subfolder="writesae_L9_H4", verify=False)
    assert not isinstance(skipped.value, ChecksumError)


@pytest.mark.parametrize("how", ["cell folder", "pt file", "from_pretrained cell"])
def test_a_cell_inside_a_release_is_checked_against_the_release_manifest(tmp_path, how):
    release = tmp_path / "release"
    release.mkdir()
    write_release(release, {"writesae_L9_H4": ("bilinear", reference_state("bilinear"), {})})
    cell = release / "writesae_L9_H4"
    load = {"cell folder": lambda: load_reference_sae(cell), "pt file": lambda: load_reference_sae(cell / "best.pt"),
            "from_pretrained cell": lambda: SAE.from_pretrained(str(cell))}[how]
    assert load().cfg.metadata["sha256"] == json.loads((release / "manifest.json").read_text())["writesae_L9_H4"]["sha256"]
    data = bytearray((cell / "best.pt").read_bytes())
    data[-200] ^= 0xFF
    (cell / "best.pt").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="altered or truncated"):
        load()


class NotATensor:
    pass


def test_unsafe_or_foreign_files_are_refused(tmp_path):
    (tmp_path / "evil").mkdir()
    torch.save({"model_state_dict": {}, "config": NotATensor()}, tmp_path / "evil" / "best.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_reference_sae(tmp_path / "evil")
    (tmp_path / "gated").mkdir()
    torch.save({"model_state_dict": {"b_gate": torch.zeros(3), "V_dec": torch.zeros(3, 2)}, "config": {}},
               tmp_path / "gated" / "best.pt")
    with pytest.raises(CheckpointError, match="no writelens class"):
        load_reference_sae(tmp_path / "gated")
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "best.pt").write_bytes(b"PK\x03\x04truncated")
    with pytest.raises(CheckpointError, match="truncated"):
        load_reference_sae(tmp_path / "short")


def test_hub_download_path(tmp_path, monkeypatch):
    write_release(tmp_path, {"writesae_L9_H4": ("bilinear", reference_state("bilinear"), {})})
    import huggingface_hub

    def fake_download(repo_id, filename, **kwargs):
        assert repo_id == "JackYoung27/writesae-ckpts"
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    sae = load_reference_sae(subfolder="writesae_L9_H4")
    assert sae.cfg.metadata["file"] == "writesae_L9_H4/best.pt" and sae.cfg.metadata["sha256"]
