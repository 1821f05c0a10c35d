"""The offline model zoo: small recurrent LMs that writelens trains on the King James Bible and ships.

Every model is a real Hugging Face class saved with ``save_pretrained`` (``model.safetensors`` in float32,
``config.json``, ``tokenizer.json``), so it runs through exactly the code path of a hub checkpoint of that
architecture, offline::

    import writelens as wl
    wl.zoo.list()                                  # {"gdn-tiny": "Qwen3.5 ...", "mamba2-tiny": "Mamba-2 ..."}
    model, tok = wl.zoo.load("gdn-tiny")           # Qwen3_5ForCausalLM, PreTrainedTokenizerFast
    ids = wl.zoo.heldout_passages(8, 128)          # torch.long [8, 128], books never trained on
    logits = model(ids).logits                     # [8, 128, 4096]

Each model folder holds a model card (``README.md``) and ``metrics.json`` (losses, the quality bar, the test
snippet's loss bound). ``python -m writelens.zoo.train NAME`` rebuilds a model from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ZooModelNotFoundError
from .corpus import heldout_text, train_sample_text
from .registry import ENTRIES, ZooEntry
from .text import heldout_passages, train_sample_passages

# `list` is public API (wl.zoo.list()) but kept out of __all__ so a star import cannot shadow the builtin.
__all__ = [
    "path",
    "load",
    "load_tokenizer",
    "metrics",
    "entry",
    "heldout_text",
    "train_sample_text",
    "heldout_passages",
    "train_sample_passages",
]


def list() -> dict[str, str]:  # noqa: A001 - the issue's public name
    """Names of the shipped models → one-line descriptions, in a stable order."""
    return {name: e.description for name, e in ENTRIES.items()}


def entry(name: str) -> ZooEntry:
    """The registry entry of ``name``. Raises :class:`~writelens.errors.ZooModelNotFoundError` if unknown."""
    try:
        return ENTRIES[name]
    except (KeyError, TypeError):
        valid = ", ".join(repr(n) for n in ENTRIES)
        raise ZooModelNotFoundError(
            f"{name!r} is not a writelens zoo model; valid names: {valid} (see writelens.zoo.list())"
        ) from None


def path(name: str) -> Path:
    """The shipped folder of ``name`` (``config.json``, ``model.safetensors``, tokenizer files, card, metrics).

    Pass it to any ``from_pretrained``. Raises :class:`~writelens.errors.ZooModelNotFoundError` if ``name`` is
    unknown, and ``FileNotFoundError`` if the package was installed without its model files.
    """
    folder = entry(name).folder
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"zoo model {name!r} is registered but its files are missing from {folder}; reinstall writelens "
            f"with its package data, or rebuild it with `python -m writelens.zoo.train {name}`"
        )
    return folder


def metrics(name: str) -> dict[str, Any]:
    """The recorded ``metrics.json`` of ``name``: losses (nats/token), quality bar, test snippet bound, ..."""
    return json.loads((path(name) / "metrics.json").read_text())


def load_tokenizer(name: str = "gdn-tiny") -> Any:
    """The tokenizer of ``name`` via ``AutoTokenizer.from_pretrained`` (all zoo models share one tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path(name)))


def load(
    name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a shipped model, via the real ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained`` on :func:`path` ``(name)``.

    Args:
        name: a name from :func:`list` (``"gdn-tiny"``: ``Qwen3_5ForCausalLM``; ``"mamba2-tiny"``:
            ``Mamba2ForCausalLM``).
        dtype: parameter dtype (stored weights are float32).
        device: where to put the model.

    Returns:
        the model in eval mode, and its tokenizer (adds no BOS/EOS; ids ``[B, T]`` → logits ``[B, T, 4096]``).

    Raises:
        ZooModelNotFoundError: ``name`` is not a zoo model; the message lists the valid names.
    """
    from transformers import AutoModelForCausalLM

    folder = path(name)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device).eval()
    return model, load_tokenizer(name)
