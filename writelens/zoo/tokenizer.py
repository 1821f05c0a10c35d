"""The zoo's tokenizer: byte-level BPE (HF ``tokenizers``), 4,096 ids, trained on the KJV train split.

Ids 0, 1, 2 are ``<|bos|>``, ``<|eos|>``, ``<|pad|>``. Encoding adds **no** special tokens (the zoo models
were trained on raw windows of the token stream, which carry none), so
``tok(text)["input_ids"]`` is exactly the BPE of ``text`` and ``tok.decode(ids) == text`` for any text.
Saved with :class:`transformers.PreTrainedTokenizerFast`, so ``AutoTokenizer.from_pretrained(folder)`` loads it.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD)
VOCAB_SIZE = 4096
MODEL_MAX_LENGTH = 1_000_000  # recurrent models: no hard limit; only silences the length warning


def train_tokenizer(text: str, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``text`` (one verse per line) and wrap it as a fast HF tokenizer.

    Deterministic for a given text and ``vocab_size``. The 256 byte symbols are always in the vocabulary,
    so every string round-trips.
    """
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = text.splitlines(keepends=True)
    chunks = ["".join(lines[i : i + 64]) for i in range(0, len(lines), 64)]
    tk.train_from_iterator(chunks, trainer=trainer)
    return wrap(tk)


def wrap(tk: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a raw ``tokenizers.Tokenizer`` with the zoo's special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )


def encode_stream(tok: PreTrainedTokenizerFast, text: str, lines_per_chunk: int = 256) -> list[int]:
    """Token ids of a long ``text`` as one stream, without special tokens.

    The text is cut into chunks at line ends before encoding (fast, and identical to encoding it whole:
    the byte-level pre-tokenizer splits ``"\\n"`` runs into their own pieces, so no BPE merge crosses a line
    end). Returns a flat list of ``len ≈ len(text) / 3.8`` ids.
    """
    lines = text.splitlines(keepends=True)
    chunks = ["".join(lines[i : i + lines_per_chunk]) for i in range(0, len(lines), lines_per_chunk)]
    ids: list[int] = []
    for enc in tok(chunks, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
    return ids


def save_tokenizer(tok: PreTrainedTokenizerFast, folder: str | Path) -> None:
    """Save ``tokenizer.json`` + ``tokenizer_config.json`` (+ special tokens map) into ``folder``."""
    tok.save_pretrained(str(folder))
