"""What the zoo ships: one :class:`ZooEntry` per model, with the exact HF config that builds it.

The configs are the real ``transformers`` ones (``Qwen3_5TextConfig``, ``Mamba2Config``), so a zoo folder is
loaded by ``AutoModelForCausalLM.from_pretrained`` exactly like a hub checkpoint of the same architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import Mamba2Config, PretrainedConfig, Qwen3_5TextConfig

MODELS_DIR = Path(__file__).parent / "models"

# Token ids of the zoo tokenizer's special tokens (see writelens.zoo.tokenizer).
_SPECIAL = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}


def gdn_tiny_config(vocab_size: int = 4096) -> Qwen3_5TextConfig:
    """Qwen3.5 text model, 8 layers ``[lin, lin, lin, full] × 2``, hidden 256.

    GDN layers: 2 key heads, 4 value heads (value heads 2j, 2j+1 share key head j, as in Qwen3.5-4B),
    ``d_k = d_v = 64``, so each GDN state is ``[4 heads, 64, 64]``. Full attention: 4 query heads of 64 over
    2 KV heads. SwiGLU MLP of width 256. Tied embeddings (vocabulary 4,096).
    """
    return Qwen3_5TextConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=8,
        layer_types=["linear_attention"] * 3
        + ["full_attention"]
        + ["linear_attention"] * 3
        + ["full_attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=64,
        linear_value_head_dim=64,
        linear_conv_kernel_dim=4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        **_SPECIAL,
    )


def mamba2_tiny_config(vocab_size: int = 4096) -> Mamba2Config:
    """Mamba-2, 8 layers, hidden 256, expand 2 (inner 512) = 8 heads of ``head_dim`` 64, ``d_state`` 64,
    one B/C group. Each SSM state is ``[8 heads, 64 (headdim), 64 (d_state)]`` in HF layout. Tied embeddings.
    """
    return Mamba2Config(
        vocab_size=vocab_size,
        hidden_size=256,
        num_hidden_layers=8,
        expand=2,
        num_heads=8,
        head_dim=64,
        state_size=64,
        n_groups=1,
        conv_kernel=4,
        chunk_size=64,
        initializer_range=0.02,
        tie_word_embeddings=True,
        **_SPECIAL,
    )


@dataclass(frozen=True)
class ZooEntry:
    """One shipped model: its name, a one-line description, its HF class name, its config builder and the
    training hyper-parameters its shipped checkpoint was trained with (``python -m writelens.zoo.train NAME``)."""

    name: str
    description: str
    model_class: str
    build_config: Callable[[int], PretrainedConfig]
    train_defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """The shipped folder (``writelens/zoo/models/<name>``)."""
        return MODELS_DIR / self.name


ENTRIES: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            "gdn-tiny",
            "Qwen3.5 (Qwen3_5ForCausalLM), 8 layers [3x Gated DeltaNet + 1 full attention] x2, hidden 256, "
            "GDN 2 key / 4 value heads of 64; trained on KJV",
            "Qwen3_5ForCausalLM",
            gdn_tiny_config,
            dict(steps=750, batch=8, seq_len=256, lr=2e-3),
        ),
        ZooEntry(
            "mamba2-tiny",
            "Mamba-2 (Mamba2ForCausalLM), 8 layers, hidden 256, 8 heads of 64, d_state 64; trained on KJV",
            "Mamba2ForCausalLM",
            mamba2_tiny_config,
            dict(steps=800, batch=8, seq_len=256, lr=2e-3),
        ),
    )
}
