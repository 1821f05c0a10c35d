"""The offline model zoo: small recurrent LMs that writelens trains on the King James Bible and ships.

Every model is a real Hugging Face class saved with ``save_pretrained`` (``model.safetensors`` in float32,
``config.json``, ``tokenizer.json``), so it runs through exactly the code path of a hub checkpoint of that
architecture, offline::

    import writelens as wl
    wl.zoo.list()                                  # {"gdn-tiny": "Qwen3.5 ...", "mamba2-tiny": "Mamba-2 ...",
                                                   #  "rwkv7-tiny": "RWKV-7 ..."}
    model, tok = wl.zoo.load("gdn-tiny")           # Qwen3_5ForCausalLM, PreTrainedTokenizerFast
    ids = wl.zoo.heldout_passages(8, 128)          # torch.long [8, 128], books never trained on
    logits = model(ids).logits                     # [8, 128, 4096]

Each model folder holds a model card (``README.md``) and ``metrics.json`` (losses, the quality bar, the test
snippet's loss bound). ``python -m writelens.zoo.train NAME`` rebuilds a model from scratch.

``rwkv7-tiny`` is ``RWKV7ForCausalLM`` of the pure-PyTorch ``rwkv7-hf`` package (``pip install
'writelens[rwkv]'``); ``wl.zoo.load("rwkv7-tiny")`` raises an ``ImportError`` that says so when it is missing.

Some models also ship small pre-trained WriteSAEs (``saes/L<layer>H<head>/``, each with a card and metrics), so
that examples can run the experiments without training first::

    wl.zoo.saes("gdn-tiny")                        # [(4, 0), (4, 1), (4, 2), (4, 3)]
    sae = wl.zoo.load_sae("gdn-tiny", 4, 1)        # BilinearSAE, 512 features, TopK k=16
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ZooModelNotFoundError
from .corpus import heldout_text, train_sample_text
from .registry import ENTRIES, ZooEntry

if TYPE_CHECKING:  # (torch is imported when a model or passages are loaded: `writelens zoo list` needs none)
    import torch

# `list` is public API (wl.zoo.list()) but kept out of __all__ so a star import cannot shadow the builtin.
__all__ = [
    "path",
    "load",
    "load_tokenizer",
    "task",
    "metrics",
    "entry",
    "saes",
    "sae_path",
    "load_sae",
    "random_init",
    "real_configs",
    "real_config",
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


def heldout_passages(n: int, n_tokens: int, tokenizer: Any = None, seed: int = 0, as_text: bool = False) -> Any:
    """Passages of the held-out books (never trained on): ids ``[n, n_tokens]`` or ``n`` strings (see
    :func:`writelens.zoo.text.heldout_passages`)."""
    from .text import heldout_passages as passages

    return passages(n, n_tokens, tokenizer, seed, as_text)


def train_sample_passages(n: int, n_tokens: int, tokenizer: Any = None, seed: int = 0, as_text: bool = False) -> Any:
    """Passages of the shipped train sample: ids ``[n, n_tokens]`` or ``n`` strings (see
    :func:`writelens.zoo.text.train_sample_passages`)."""
    from .text import train_sample_passages as passages

    return passages(n, n_tokens, tokenizer, seed, as_text)


def load(
    name: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a shipped model, via the real ``AutoModelForCausalLM.from_pretrained`` (for
    ``rwkv7-tiny``, which the Auto classes do not map: ``rwkv7_hf``'s ``RWKV7ForCausalLM.from_pretrained``) and
    ``AutoTokenizer.from_pretrained`` on :func:`path` ``(name)``.

    Args:
        name: a name from :func:`list` (``"gdn-tiny"``: ``Qwen3_5ForCausalLM``; ``"mamba2-tiny"``:
            ``Mamba2ForCausalLM``; ``"rwkv7-tiny"``: ``rwkv7_hf.RWKV7ForCausalLM``, needs ``rwkv7-hf``).
        dtype: parameter dtype (default ``torch.float32``, as the weights are stored).
        device: where to put the model.

    Returns:
        the model in eval mode, and its tokenizer (adds no BOS/EOS; ids ``[B, T]`` → logits ``[B, T, 4096]``);
        for the associative-recall organisms (``*-mqar``) the tokenizer is ``None``: their ids are the task's
        (:func:`task`).

    Raises:
        ZooModelNotFoundError: ``name`` is not a zoo model; the message lists the valid names.
        ImportError: the model's package is not installed (``rwkv7-tiny`` without ``rwkv7-hf``); the message
            names the extra to install.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from ..errors import InputError
    from ..validate import check_device, check_float_dtype

    dtype = torch.float32 if dtype is None else check_float_dtype(dtype, "zoo.load dtype", InputError)
    e = entry(name)
    check_device(device if isinstance(device, str) else str(device), "zoo.load device")
    loader = AutoModelForCausalLM if e.module == "transformers" else e.model_cls()
    folder = path(name)
    model = loader.from_pretrained(str(folder), dtype=dtype).to(device).eval()
    return model, (None if e.task == "mqar" else load_tokenizer(name))


def task(name: str) -> Any:
    """The :class:`~writelens.tasks.mqar.MQARConfig` an associative-recall organism (``gdn-mqar``,
    ``mamba2-mqar``, ``rwkv7-mqar``) was trained on; draw passages with ``writelens.tasks.mqar.make_batch``.
    Raises :class:`~writelens.errors.ZooModelNotFoundError` for a model that is not an organism."""
    from ..tasks.mqar import MQARConfig

    if entry(name).task != "mqar":
        organisms = ", ".join(n for n, x in ENTRIES.items() if x.task == "mqar")
        raise ZooModelNotFoundError(f"{name!r} is a language model, not an associative-recall organism; those "
                                    f"are: {organisms}.")
    return MQARConfig.from_json((path(name) / "task.json").read_text())


def saes(name: str) -> list[tuple[int, int]]:
    """The (layer, head) sites for which ``name`` ships a pre-trained SAE (``[]`` when none), sorted."""
    folder = path(name) / "saes"
    found = []
    for sub in folder.glob("L*H*") if folder.is_dir() else []:
        layer, _, head = sub.name[1:].partition("H")
        if layer.isdigit() and head.isdigit() and (sub / "cfg.json").is_file():
            found.append((int(layer), int(head)))
    return sorted(found)


def sae_path(name: str, layer: int, head: int) -> Path:
    """The folder of the SAE shipped for site (``layer``, ``head``) of ``name`` (``cfg.json``,
    ``sae_weights.safetensors``, ``README.md`` with how it was trained, ``metrics.json``).

    Raises :class:`~writelens.errors.ZooModelNotFoundError` (a ``KeyError``) naming the shipped sites when there
    is none for that site.
    """
    from ..validate import as_int

    layer, head = as_int(layer, "layer", ZooModelNotFoundError), as_int(head, "head", ZooModelNotFoundError)
    folder = path(name) / "saes" / f"L{layer}H{head}"
    if not (folder / "cfg.json").is_file():
        shipped = ", ".join(f"(layer {a}, head {b})" for a, b in saes(name)) or "none"
        raise ZooModelNotFoundError(
            f"zoo model {name!r} ships no SAE for layer {layer}, head {head}; shipped: {shipped}. Train one with "
            f"`python -m writelens.zoo.train_sae {name} --layer {layer} --head {head} --out DIR` and load it with "
            "writelens.load_sae(DIR)."
        )
    return folder


def load_sae(name: str, layer: int, head: int, device: str | torch.device = "cpu") -> Any:
    """The SAE shipped for site (``layer``, ``head``) of zoo model ``name``, in eval mode.

    Example: ``sae = wl.zoo.load_sae("gdn-tiny", 4, 1)`` (a ``BilinearSAE`` with 512 rank-1 atoms of 64 × 64; see
    its ``README.md`` under :func:`sae_path` for data, steps and FVE). Raises
    :class:`~writelens.errors.ZooModelNotFoundError` when none is shipped for that site.
    """
    from ..sae.io import load_sae as _load

    return _load(sae_path(name, layer, head), device=device)


def random_init(name: str, layers: int | None = None, seed: int = 0, dtype: Any = None,
                overrides: dict[str, Any] | None = None) -> Any:
    """A seeded random-init model of a published architecture at its real widths, optionally its first ``layers``
    layers (see :func:`writelens.zoo.random_init.random_init`; names: :func:`real_configs`)."""
    import torch

    from ..errors import InputError
    from ..validate import check_float_dtype
    from .real import random_init as build

    dtype = torch.float32 if dtype is None else check_float_dtype(dtype, "zoo.random_init dtype", InputError)
    return build(name, layers=layers, seed=seed, dtype=dtype, overrides=overrides)


def real_configs() -> dict[str, str]:
    """Names of the shipped real-architecture configs (no weights) → descriptions."""
    from .real import real_configs as names

    return names()


def real_config(name: str) -> Any:
    """The shipped :class:`~writelens.zoo.random_init.RealConfig` ``name`` (values and their sources)."""
    from .real import real_config as get

    return get(name)
