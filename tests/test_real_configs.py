"""Published architectures at real widths (no weights): the shipped configs, their sources, random_init slices of the
real classes, and writelens's exact edits on them."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from models import rel

import writelens as wl
from writelens import errors

TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_torch_thread")
HAS_RWKV7 = importlib.util.find_spec("rwkv7_hf") is not None


@pytest.mark.parametrize("name", sorted(wl.zoo.real_configs()))
def test_every_config_value_has_a_source_and_builds(name):
    real = wl.zoo.real_config(name)
    if real.model_class.startswith("rwkv7_hf") and not HAS_RWKV7:
        pytest.skip("rwkv7-hf not installed")
    assert "*" in real.sources or set(real.config) <= set(real.sources), f"{name}: values without a source"
    assert all(isinstance(v, str) and v for v in real.sources.values())
    full = real.build_config()
    sliced = real.build_config(layers=4)
    assert sliced.num_hidden_layers == 4 and sliced.hidden_size == full.hidden_size
    if real.full_attention_interval:
        assert sliced.layer_types == ["linear_attention"] * 3 + ["full_attention"]
        assert full.layer_types.count("full_attention") == full.num_hidden_layers // 4


def test_the_published_facts():
    q = wl.zoo.real_config("qwen3.5-0.8b").build_config()
    assert (q.num_hidden_layers, q.hidden_size, q.linear_num_value_heads, q.linear_key_head_dim, q.vocab_size) == (
        24, 1024, 16, 128, 248320)
    q4 = wl.zoo.real_config("qwen3.5-4b").build_config()
    assert (q4.num_hidden_layers, q4.hidden_size, q4.linear_num_value_heads, q4.linear_num_key_heads) == (32, 2560, 32, 16)
    d = wl.zoo.real_config("qwen3.5-text-default").build_config()
    assert (d.hidden_size, d.num_hidden_layers, d.linear_num_value_heads, d.linear_num_key_heads) == (4096, 32, 32, 16)
    n = wl.zoo.real_config("qwen3-next-80b-a3b").build_config()
    assert (n.hidden_size, n.num_hidden_layers, n.linear_num_value_heads, n.num_experts) == (2048, 48, 32, 512)
    m = wl.zoo.real_config("mamba2-default").build_config()
    assert (m.hidden_size, m.num_hidden_layers, m.num_heads, m.head_dim, m.state_size, m.n_groups) == (
        4096, 64, 128, 64, 128, 8)


def test_qwen35_slice_at_real_widths_edits_match_the_oracle():
    model = wl.zoo.random_init("qwen3.5-0.8b", layers=4, overrides={"vocab_size": 512})
    assert type(model).__name__ == "Qwen3_5ForCausalLM"
    assert [type(layer.linear_attn).__name__ if hasattr(layer, "linear_attn") else "attn"
            for layer in model.model.layers][-1] == "attn"
    lens = wl.WriteLens(model)
    assert lens.recurrent_layers == [0, 1, 2] and lens.site(2, 15) == wl.Site(2, 15, 128, 128, "gdn")
    x = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(0))
    edits = [wl.Delete(1, 7, 4, batch=0), wl.Delete(2, 15, 2, batch=1)]
    fast = lens.run(x, edits=edits).logits
    assert rel(fast, lens.run(x, edits=edits, oracle=True).logits) < TOL


def test_mamba2_default_one_layer_at_real_widths():
    model = wl.zoo.random_init("mamba2-default", layers=1, overrides={"vocab_size": 256})
    lens = wl.WriteLens(model)
    assert lens.site(0, 127) == wl.Site(0, 127, 128, 64, "mamba2")
    x = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(1))
    edits = [wl.Delete(0, 100, 2)]
    assert rel(lens.run(x, edits=edits).logits, lens.run(x, edits=edits, oracle=True).logits) < TOL


@pytest.mark.skipif(not HAS_RWKV7, reason="rwkv7-hf not installed (extra `rwkv`)")
def test_rwkv7_seeded_and_sliced():
    a = wl.zoo.random_init("rwkv7-0.1b", layers=2, seed=3, overrides={"vocab_size": 128})
    state = torch.get_rng_state()
    b = wl.zoo.random_init("rwkv7-0.1b", layers=2, seed=3, overrides={"vocab_size": 128})
    assert torch.equal(state, torch.get_rng_state())  # the global generator is left as it was
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    c = wl.zoo.random_init("rwkv7-0.1b", layers=2, seed=4, overrides={"vocab_size": 128})
    assert not torch.equal(next(iter(a.parameters())), next(iter(c.parameters())))
    assert wl.WriteLens(a).site(1, 11) == wl.Site(1, 11, 64, 64, "rwkv7")


def test_bad_names_and_slices():
    with pytest.raises(errors.ZooModelNotFoundError, match="qwen3.5-0.8b"):
        wl.zoo.random_init("qwen9")
    with pytest.raises(errors.InputError, match="has 24 layers"):
        wl.zoo.real_config("qwen3.5-0.8b").build_config(layers=25)
    with pytest.raises(errors.InputError):
        wl.zoo.real_config("qwen3.5-0.8b").build_config(layers=0)
