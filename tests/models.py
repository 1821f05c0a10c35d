"""Tiny random-init models of the real HF classes, shared by the tests."""

from __future__ import annotations

import functools

import pytest
import torch

from writelens.zoo.gates import spread_gates


@functools.cache
def _qwen35(layers: int, hk: int, hv: int, d: int, seed: int, all_linear: bool = False):
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    types = {"layer_types": ["linear_attention"] * layers} if all_linear else {}
    cfg = Qwen3_5TextConfig(**types,
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, linear_num_key_heads=hk, linear_num_value_heads=hv,
        linear_key_head_dim=d, linear_value_head_dim=d, linear_conv_kernel_dim=4, pad_token_id=0, eos_token_id=1,
        bos_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return spread_gates(Qwen3_5ForCausalLM(cfg).eval())


def qwen35(layers: int = 4, hk: int = 2, hv: int = 2, d: int = 16, seed: int = 0, all_linear: bool = False):
    """Qwen3_5ForCausalLM, hidden 64, layer pattern [lin, lin, lin, full]* (``all_linear``: every layer Gated
    DeltaNet, as the associative-recall organisms); hv > hk shares key heads."""
    return _qwen35(layers, hk, hv, d, seed, all_linear)


@functools.cache
def qwen3_next(seed: int = 0):
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    cfg = Qwen3NextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, linear_num_key_heads=1, linear_num_value_heads=2,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32, pad_token_id=0,
        eos_token_id=1, bos_token_id=2,
    )
    torch.manual_seed(seed)
    return spread_gates(Qwen3NextForCausalLM(cfg).eval())


def ids(batch: int = 2, length: int = 40, vocab: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g)


@functools.cache
def qwen35_vlm(seed: int = 0):
    """Qwen3_5ForConditionalGeneration (vision tower + text model); writelens uses its text part."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    text = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, linear_num_key_heads=1, linear_num_value_heads=2,
                linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4)
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
                  temporal_patch_size=1, spatial_merge_size=1)
    torch.manual_seed(seed)
    model = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text, vision_config=vision)).eval()
    return spread_gates(model)


def word_tokenizer(vocab: int = 128):
    """An offline word-level tokenizer over ``w3 … w{vocab-1}`` (ids = the number), for nnsight's LanguageModel."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tk = Tokenizer(models.WordLevel(vocab=words, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<pad>")


@functools.cache
def mamba2(groups: int, d_state: int, seed: int = 0):
    """3 layers, 8 heads × headdim 16, HF chunk 16; gates spread so decays matter over tens of tokens."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    cfg = Mamba2Config(vocab_size=128, hidden_size=64, num_hidden_layers=3, state_size=d_state, expand=2,
                       head_dim=16, num_heads=8, n_groups=groups, conv_kernel=4, chunk_size=16,
                       tie_word_embeddings=False)
    torch.manual_seed(seed)
    return spread_gates(Mamba2ForCausalLM(cfg).eval())


@functools.cache
def rwkv7(seed: int = 0):
    """3 layers × 4 heads × 16. Random init leaves k_k = k_a = 0 (no rank-1 term) and tiny projections; spread
    them so that decay, the erase term and the writes all matter."""
    from rwkv7_hf.configuration_rwkv7 import RWKV7Config
    from rwkv7_hf.modeling_rwkv7 import RWKV7ForCausalLM

    cfg = RWKV7Config(vocab_size=128, hidden_size=64, num_hidden_layers=3, head_dim=16, intermediate_size=128,
                      decay_low_rank_dim=8, gate_low_rank_dim=8, a_low_rank_dim=8, v_low_rank_dim=8,
                      initializer_range=0.2)
    torch.manual_seed(seed)
    return spread_gates(RWKV7ForCausalLM(cfg).eval())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| (in float32)."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module's tests (xdist runs two workers on two cores), restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def assert_cli_refused(res, needles, out_dir) -> None:
    """The CLI contract (docs/cli.md) for a bad argument: exit 2 with a message holding every needle (whitespace
    folded), no traceback, and no ``summary.json`` written under ``out_dir``."""
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    text = " ".join(res.output.split())
    assert "Traceback" not in text
    missing = [n for n in needles if n not in text]
    assert not missing, (missing, res.output)
    assert not (out_dir / "summary.json").exists()
