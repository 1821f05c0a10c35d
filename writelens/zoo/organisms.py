"""The associative-recall organisms: configs and inits of ``gdn-mqar``, ``mamba2-mqar`` and ``rwkv7-mqar``.

Each is a small model of a real HF class (every layer recurrent: no attention layer could solve the task around
the state) trained on multi-query associative recall (:mod:`writelens.tasks.mqar`) by
:mod:`writelens.zoo.train_mqar`. The task's vocabulary, length and pair counts are fixed here (:data:`TASK`), so
the shipped models and the tests draw passages from the same distribution.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Mamba2Config, PretrainedConfig, Qwen3_5TextConfig

from writelens.tasks.mqar import BOS, EOS, PAD, MQARConfig

TASK = MQARConfig(n_keys=64, n_values=64, n_distractors=16, seq_len=64, query_frac=0.5, max_gap=8)
"""The organisms' task: 64 keys, 64 values, 16 distractors (vocabulary 147), passages of 64 tokens."""

PAIR_COUNTS = (1, 2, 4, 8, 16)
"""N of the training rows (equal shares per step); held-out recall is reported per N."""

_SPECIAL = {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}


def gdn_mqar_config(vocab_size: int = TASK.vocab_size) -> Qwen3_5TextConfig:
    """Qwen3.5 text model with 2 Gated DeltaNet layers (no attention), hidden 128, 2 key / 2 value heads of 64,
    short conv 4, SwiGLU MLP 256, tied embeddings."""
    return Qwen3_5TextConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        layer_types=["linear_attention"] * 2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
        linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=64, linear_value_head_dim=64,
        linear_conv_kernel_dim=4, max_position_embeddings=TASK.seq_len * 4, tie_word_embeddings=True, **_SPECIAL,
    )


def mamba2_mqar_config(vocab_size: int = TASK.vocab_size) -> Mamba2Config:
    """Mamba-2, 2 layers, hidden 128, expand 2 = 4 heads of head_dim 64, d_state 64, 1 group, conv 4, tied."""
    return Mamba2Config(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, expand=2, num_heads=4, head_dim=64,
        state_size=64, n_groups=1, conv_kernel=4, chunk_size=64, initializer_range=0.02, tie_word_embeddings=True,
        **_SPECIAL,
    )


def rwkv7_mqar_config(vocab_size: int = TASK.vocab_size) -> PretrainedConfig:
    """RWKV-7 (``rwkv7_hf``), 2 layers, hidden 128 = 2 heads of 64, channel-mix 256; low-rank widths 16/16/16/32."""
    from rwkv7_hf.configuration_rwkv7 import RWKV7Config

    return RWKV7Config(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, head_dim=64, intermediate_size=256,
        decay_low_rank_dim=16, a_low_rank_dim=16, v_low_rank_dim=16, gate_low_rank_dim=32,
        initializer_range=0.02, tie_word_embeddings=False, **_SPECIAL,
    )


@torch.no_grad()
def gdn_init(model: Any) -> None:
    """The fla / Mamba init of the GDN gates, in place: ``A ~ U(1, 16)``, ``dt ~ logU(1e-3, 1e-1)``,
    ``dt_bias = softplus⁻¹(dt)``. (HF's Qwen3.5 init is meant for loading checkpoints: its decay is ≈ 1e-5 per
    token, and a model started there does not learn to recall.)"""
    for module in model.modules():
        gdn = getattr(module, "linear_attn", None)
        if gdn is None:
            continue
        gdn.A_log.copy_(torch.empty_like(gdn.A_log).uniform_(1.0, 16.0).log())
        dt = torch.exp(torch.empty_like(gdn.dt_bias).uniform_(math.log(1e-3), math.log(1e-1)))
        gdn.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹


def rwkv7_init(model: Any) -> None:
    """RWKV-LM's x070 init of what ``rwkv7_hf`` leaves at zero (as for ``rwkv7-tiny``)."""
    from .rwkv7 import init_rwkv7

    init_rwkv7(model)
