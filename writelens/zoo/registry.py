"""What the zoo ships: one :class:`ZooEntry` per model, with the exact HF config that builds it.

The configs are the real ``transformers`` ones (``Qwen3_5TextConfig``, ``Mamba2Config``), so a zoo folder is
loaded by ``AutoModelForCausalLM.from_pretrained`` exactly like a hub checkpoint of the same architecture.
``rwkv7-tiny`` is the pure-PyTorch ``rwkv7_hf`` package's ``RWKV7ForCausalLM`` (optional extra ``rwkv``), which
the Auto classes do not map, so it loads with ``RWKV7ForCausalLM.from_pretrained`` (:meth:`ZooEntry.model_cls`);
this module imports ``rwkv7_hf`` only when that class is asked for.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (imported where a config is built: listing the zoo needs no transformers / torch)
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
    from transformers import Qwen3_5TextConfig

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
    from transformers import Mamba2Config

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


def rwkv7_tiny_config(vocab_size: int = 4096) -> PretrainedConfig:
    """RWKV-7 (``rwkv7_hf.RWKV7Config``), 8 layers, hidden 256 = 4 heads of ``head_dim`` 64, so each WKV state is
    ``[4 heads, 64 (key), 64 (value)]``. Channel-mix width 512 (2 × hidden, to stay near the other zoo models'
    size). Low-rank widths from RWKV-LM's formulas for ``C = 256``: decay 32, in-context rate ``a`` 32, value
    residual 32, gate 64. Untied embeddings (``rwkv7_hf`` does not tie them). Needs ``rwkv7-hf``."""
    from rwkv7_hf.configuration_rwkv7 import RWKV7Config

    return RWKV7Config(
        vocab_size=vocab_size,
        hidden_size=256,
        num_hidden_layers=8,
        head_dim=64,
        intermediate_size=512,
        decay_low_rank_dim=32,
        a_low_rank_dim=32,
        v_low_rank_dim=32,
        gate_low_rank_dim=64,
        initializer_range=0.02,
        tie_word_embeddings=False,
        **_SPECIAL,
    )


def _rwkv7_init(model: Any) -> None:
    from .rwkv7 import init_rwkv7

    init_rwkv7(model)


def _gdn_mqar_init(model: Any) -> None:
    from .organisms import gdn_init

    gdn_init(model)


def _organism_config(name: str) -> Callable[[int], PretrainedConfig]:
    def build(vocab_size: int) -> PretrainedConfig:
        from . import organisms

        return getattr(organisms, f"{name}_mqar_config")(vocab_size)

    build.__name__ = f"{name}_mqar_config"
    return build


def _rwkv7_chunked() -> AbstractContextManager[None]:
    from .rwkv7 import chunked_recurrence

    return chunked_recurrence()


def import_attr(module: str, attr: str, *, needed_by: str, extra: str | None) -> Any:
    """``module.attr``, imported now; an ``ImportError`` naming the writelens extra that installs ``module`` when it
    is missing (``needed_by``: what asked for it, for the message)."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{needed_by} needs the {module!r} package ({attr}); install it with `pip install 'writelens[{extra}]'`"
        ) from e
    return getattr(mod, attr)


@dataclass(frozen=True)
class ZooEntry:
    """One shipped model: its name, a one-line description, its HF class name, its config builder and the
    training hyper-parameters its shipped checkpoint was trained with (``python -m writelens.zoo.train NAME``)."""

    name: str
    description: str
    model_class: str
    build_config: Callable[[int], PretrainedConfig]
    train_defaults: dict[str, Any] = field(default_factory=dict)
    module: str = "transformers"
    """The module that defines ``model_class`` (imported lazily by :meth:`model_cls`)."""
    extra: str | None = None
    """The writelens extra that installs ``module`` when it is not ``transformers``."""
    init: Callable[[Any], None] | None = None
    """Re-initialises a freshly built model for training from scratch (``None``: the HF init as is)."""
    train_kernel: Callable[[], AbstractContextManager[None]] | None = None
    """A context in which training and the long evaluations run on a faster, equivalent kernel."""
    card_note: str = ""
    """Extra paragraph for the model card's Training section (how this entry differs from the others)."""
    task: str = "kjv"
    """What it was trained on: ``"kjv"`` (language modelling, :mod:`writelens.zoo.train`) or ``"mqar"`` (an
    associative-recall organism, :mod:`writelens.zoo.train_mqar`; no tokenizer: token ids are the task's)."""

    def model_cls(self) -> Any:
        """The model class. Raises ``ImportError`` naming the extra to install when its package is missing."""
        return import_attr(self.module, self.model_class, needed_by=f"zoo model {self.name!r}", extra=self.extra)

    def kernel(self) -> AbstractContextManager[None]:
        """:attr:`train_kernel` entered, or a no-op context."""
        return self.train_kernel() if self.train_kernel else contextlib.nullcontext()

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
        ZooEntry(
            "rwkv7-tiny",
            "RWKV-7 (rwkv7_hf RWKV7ForCausalLM), 8 layers, hidden 256, 4 heads of 64, channel-mix 512; "
            "trained on KJV; needs the `rwkv` extra",
            "RWKV7ForCausalLM",
            rwkv7_tiny_config,
            dict(steps=800, batch=8, seq_len=256, lr=2e-3),
            module="rwkv7_hf.modeling_rwkv7",
            extra="rwkv",
            init=_rwkv7_init,
            train_kernel=_rwkv7_chunked,
            card_note=(
                "Initialisation: the HF `normal(0, 0.02)` for linear weights and embeddings, plus RWKV-LM's x070 "
                "init of what `rwkv7_hf` leaves at zero (token-shift mixes, decay bias `w0`, `k_k` = 0.85, "
                "`k_a` = 1, `r_k` = -0.04, value-residual bias 1, output-norm scale); see "
                "`writelens.zoo.rwkv7.init_rwkv7`. Training and the train/held-out losses ran the WKV recurrence "
                "through `writelens.zoo.rwkv7.rwkv7_chunked` (the same equation, chunked; equal to the reference "
                "kernel to float32 rounding) because `rwkv7_hf`'s per-sample, per-token reference kernel takes "
                "about a minute per step on 2 cores; the test snippet and the samples below ran on the reference "
                "kernel, which is what loading the checkpoint gives."
            ),
        ),
        ZooEntry(
            "gdn-mqar",
            "associative-recall organism: Qwen3.5 (Qwen3_5ForCausalLM) with 2 Gated DeltaNet layers and no "
            "attention, hidden 128, 2 heads of 64; trained on multi-query associative recall",
            "Qwen3_5ForCausalLM",
            _organism_config("gdn"),
            dict(steps=2000, batch=64, lr=3e-3),
            init=_gdn_mqar_init,
            task="mqar",
        ),
        ZooEntry(
            "mamba2-mqar",
            "associative-recall organism: Mamba-2 (Mamba2ForCausalLM), 2 layers, hidden 128, 4 heads of 64, "
            "d_state 64; trained on multi-query associative recall",
            "Mamba2ForCausalLM",
            _organism_config("mamba2"),
            dict(steps=2000, batch=64, lr=3e-3),
            task="mqar",
        ),
        ZooEntry(
            "rwkv7-mqar",
            "associative-recall organism: RWKV-7 (rwkv7_hf RWKV7ForCausalLM), 2 layers, hidden 128, 2 heads of "
            "64; trained on multi-query associative recall; needs the `rwkv` extra",
            "RWKV7ForCausalLM",
            _organism_config("rwkv7"),
            dict(steps=2000, batch=64, lr=3e-3),
            module="rwkv7_hf.modeling_rwkv7",
            extra="rwkv",
            init=_rwkv7_init,
            train_kernel=_rwkv7_chunked,
            task="mqar",
        ),
    )
}
