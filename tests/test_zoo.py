"""The offline model zoo: shipped files, real HF classes, recorded losses, tokenizer, text helpers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
import transformers

import writelens as wl
from writelens.errors import ZooModelNotFoundError

NAMES = ("gdn-tiny", "mamba2-tiny", "rwkv7-tiny")
HAS_RWKV7 = importlib.util.find_spec("rwkv7_hf") is not None
needs_rwkv7 = pytest.mark.skipif(not HAS_RWKV7, reason="rwkv7-hf not installed (extra `rwkv`)")
MAX_CHECKPOINT_BYTES = {"rwkv7-tiny": 28 * 2**20}  # untied embeddings; the others ≤ 20 MiB


def model_class(name):
    """The HF class of ``name`` (``rwkv7_hf``'s imported only when asked for)."""
    if name == "rwkv7-tiny":
        from rwkv7_hf.modeling_rwkv7 import RWKV7ForCausalLM

        return RWKV7ForCausalLM
    return {"gdn-tiny": transformers.Qwen3_5ForCausalLM, "mamba2-tiny": transformers.Mamba2ForCausalLM}[name]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: under ``pytest -n 2`` on 2 cores, two-thread OpenMP forwards spin-wait on each other
    and an 8x128 forward takes seconds instead of 0.3 s. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(
    scope="module", params=[pytest.param(n, marks=needs_rwkv7) if n == "rwkv7-tiny" else n for n in NAMES]
)
def loaded(request):
    model, tok = wl.zoo.load(request.param)
    return request.param, model, tok


def test_list_and_path():
    listed = wl.zoo.list()
    assert tuple(n for n in listed if not n.endswith("-mqar")) == NAMES
    for name, desc in listed.items():
        assert isinstance(desc, str) and desc and "\n" not in desc
        folder = wl.zoo.path(name)
        organism = wl.zoo.entry(name).task == "mqar"  # token ids are the task's: no tokenizer files
        for f in (
            "config.json",
            "model.safetensors",
            *(("task.json", "known_answers.json") if organism else ("tokenizer.json", "tokenizer_config.json")),
            "README.md",
            "metrics.json",
        ):
            assert (folder / f).is_file(), f"{name}: {f} missing"
        assert (folder / "model.safetensors").stat().st_size <= MAX_CHECKPOINT_BYTES.get(name, 20 * 2**20)


@pytest.mark.parametrize("call", [wl.zoo.path, wl.zoo.load, wl.zoo.metrics])
def test_unknown_name_raises_named_error(call):
    with pytest.raises(ZooModelNotFoundError) as err:
        call("gpt-5")
    msg = str(err.value)
    assert "gpt-5" in msg and all(n in msg for n in NAMES)
    assert isinstance(err.value, KeyError)  # ZooModelNotFoundError is also a KeyError


def test_models_are_real_hf_classes_and_recorded_metrics(loaded):
    name, model, tok = loaded
    assert type(model) is model_class(name)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    m = wl.zoo.metrics(name)
    assert m["name"] == name and m["model_class"] == model_class(name).__name__
    assert m["n_params"] == sum(p.numel() for p in model.parameters())
    assert m["heldout_loss"] <= 0.7 * m["heldout_unigram_entropy"]
    assert m["passes_quality_bar"] is True


def test_heldout_snippet_loss_stays_under_recorded_bound(loaded):
    name, model, tok = loaded
    snip = wl.zoo.metrics(name)["snippet"]
    ids = wl.zoo.heldout_passages(snip["n"], snip["n_tokens"], tok, seed=snip["seed"])
    assert ids.shape == (snip["n"], snip["n_tokens"]) and ids.dtype == torch.long
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (*ids.shape, model.config.vocab_size)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:]).item()
    assert loss <= snip["bound"], f"{name}: snippet loss {loss:.4f} above the recorded bound {snip['bound']}"
    # a loss far *below* the record also means the code path changed
    assert abs(loss - snip["loss"]) <= snip["bound"] - snip["loss"]


def test_gdn_tiny_has_qwen35_layout():
    cfg = transformers.AutoConfig.from_pretrained(wl.zoo.path("gdn-tiny"))
    assert cfg.model_type == "qwen3_5_text"
    assert cfg.layer_types[:4] == ["linear_attention"] * 3 + ["full_attention"]
    assert cfg.linear_num_value_heads == 2 * cfg.linear_num_key_heads
    assert cfg.linear_key_head_dim == cfg.linear_value_head_dim == 64


def test_mamba2_tiny_config():
    cfg = transformers.AutoConfig.from_pretrained(wl.zoo.path("mamba2-tiny"))
    assert cfg.model_type == "mamba2"
    assert cfg.num_heads * cfg.head_dim == cfg.expand * cfg.hidden_size
    assert (cfg.head_dim, cfg.state_size, cfg.n_groups) == (64, 64, 1)


@needs_rwkv7
def test_rwkv7_tiny_config_and_plain_folder():
    from rwkv7_hf.configuration_rwkv7 import RWKV7Config

    folder = wl.zoo.path("rwkv7-tiny")
    cfg = RWKV7Config.from_pretrained(folder)
    assert cfg.model_type == "rwkv7"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_heads, cfg.head_dim) == (8, 256, 4, 64)
    assert (cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (4096, 0, 1, 2)
    # no copied remote code and no auto_map: the folder loads with the installed package's class
    assert not list(folder.glob("*.py")) and "auto_map" not in (folder / "config.json").read_text()


@needs_rwkv7
def test_rwkv7_tiny_generates_and_passes_the_self_check():
    model, tok = wl.zoo.load("rwkv7-tiny")
    ids = tok("And God said", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 8) and torch.equal(out[:, : ids.shape[1]], ids)
    assert tok.decode(out[0]).startswith("And God said")
    lens = wl.WriteLens(model, tokenizer=tok)  # runs the load-time self-check
    assert lens is not None


@needs_rwkv7
def test_rwkv7_chunked_training_kernel_matches_the_reference():
    from rwkv7_hf.ops_rwkv7 import rwkv7_recurrent

    from writelens.zoo.rwkv7 import rwkv7_chunked

    g = torch.Generator().manual_seed(0)
    B, T, H, K = 2, 37, 3, 16  # T not a multiple of the chunk
    r, k, v = (torch.randn(B, T, H, K, generator=g) for _ in range(3))
    w = torch.exp(-0.6065 * torch.rand(B, T, H, K, generator=g))
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
    a, b = -kk, kk * torch.rand(B, T, H, K, generator=g)
    s0 = torch.randn(B, H, K, K, generator=g)
    o1, s1 = rwkv7_recurrent(r, w, k, v, a, b, s0)
    o2, s2 = rwkv7_chunked(r, w, k, v, a, b, s0)
    torch.testing.assert_close(o2, o1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s2, s1, rtol=1e-4, atol=1e-4)


def test_registry_imports_without_rwkv7_hf_and_load_says_how_to_fix():
    code = (
        "import sys; sys.modules['rwkv7_hf'] = None\n"
        "import writelens as wl\n"
        "assert 'rwkv7-tiny' in wl.zoo.list()\n"
        "try:\n    wl.zoo.load('rwkv7-tiny')\n"
        "except ImportError as e:\n    print(e)\nelse:\n    raise SystemExit('no ImportError')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "rwkv7_hf" in res.stdout and "writelens[rwkv]" in res.stdout


def test_tokenizer_round_trips_and_is_shared():
    tok = wl.zoo.load_tokenizer("gdn-tiny")
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    assert len(tok) == 4096
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    for text in (
        wl.zoo.heldout_text()[:3000],
        "Ünïcödé ✓ and\ttabs\n\n  spaces  ",
        "The LORD is my shepherd",
    ):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert tok("And God said")["input_ids"] == tok("And God said", add_special_tokens=False)["input_ids"]
    other = wl.zoo.load_tokenizer("mamba2-tiny")
    assert other.get_vocab() == tok.get_vocab()


def test_text_helpers():
    held = wl.zoo.heldout_text()
    assert held.startswith("Now it came to pass in the days when the judges ruled")  # Ruth 1:1
    assert "In the beginning God created" not in held  # Genesis is train
    assert "In the beginning God created" in wl.zoo.train_sample_text()
    a = wl.zoo.heldout_passages(4, 64, seed=1)
    assert a.shape == (4, 64) and torch.equal(a, wl.zoo.heldout_passages(4, 64, seed=1))
    assert not torch.equal(a, wl.zoo.heldout_passages(4, 64, seed=2))
    texts = wl.zoo.heldout_passages(4, 64, seed=1, as_text=True)
    assert len(texts) == 4 and all(t in held for t in texts)
    t = wl.zoo.train_sample_passages(3, 32, seed=0)
    assert t.shape == (3, 32)
    with pytest.raises(ValueError, match="disjoint passages"):
        wl.zoo.heldout_passages(1000, 1024)


MAX_SAE_BYTES = 2 * 2**20


def test_shipped_saes_load_and_fit_their_site():
    from writelens.sae import BilinearSAE

    sites = wl.zoo.saes("gdn-tiny")
    assert (4, 1) in sites and wl.zoo.saes("mamba2-tiny") == []
    for layer, head in sites:
        folder = wl.zoo.sae_path("gdn-tiny", layer, head)
        for f in ("cfg.json", "sae_weights.safetensors", "README.md", "metrics.json"):
            assert (folder / f).is_file(), f"L{layer}H{head}: {f} missing"
        assert (folder / "sae_weights.safetensors").stat().st_size <= MAX_SAE_BYTES
    sae = wl.zoo.load_sae("gdn-tiny", 4, 1)
    assert type(sae) is BilinearSAE and not sae.training
    assert (sae.cfg.d_k, sae.cfg.d_v, sae.cfg.n_features, sae.cfg.k) == (64, 64, 512, 16)
    assert sae.cfg.metadata["layer"] == 4 and sae.cfg.metadata["head"] == 1
    recorded = wl.zoo.sae_path("gdn-tiny", 4, 1) / "metrics.json"
    import json

    fve = json.loads(recorded.read_text())["heldout"]["fve"]
    # states of held-out passages at the site: the shipped SAE explains about what its card says
    model, tok = wl.zoo.load("gdn-tiny")
    lens = wl.WriteLens(model, tokenizer=tok, self_check=False)
    out = lens.run(wl.zoo.heldout_passages(4, 64, seed=3), cache=True, sites=[(4, 1)])
    states = out.cache.states(4, 1, list(range(1, 64, 3))).flatten(0, 1)  # [4 * 21, 64, 64]
    with torch.no_grad():
        recon = sae(states).recon
    err = (recon - states).double().pow(2).sum()
    var = (states.double() - states.double().mean(0)).pow(2).sum()
    assert 1 - err / var > fve - 0.15


def test_missing_sae_raises_named_error():
    with pytest.raises(ZooModelNotFoundError, match=r"ships no SAE for layer 0, head 0; shipped: .*\(layer 4, head 1\)"):
        wl.zoo.load_sae("gdn-tiny", 0, 0)
    with pytest.raises(ZooModelNotFoundError, match="shipped: none"):
        wl.zoo.sae_path("mamba2-tiny", 0, 0)
    with pytest.raises(ZooModelNotFoundError):
        wl.zoo.load_sae("gpt-5", 4, 1)
