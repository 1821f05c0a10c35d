"""Passages of shipped KJV text, as token ids or strings, for tests, examples and SAE extraction.

Two shipped sources (see :mod:`writelens.zoo.corpus`): the whole held-out split (books never trained on)
and a train sample (four train books). Passages are windows of the token stream that start at the
beginning of a verse, do not overlap, and are drawn with a seeded generator, so the same call always
returns the same tensor.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from . import corpus

Tokenizer = Any  # a transformers tokenizer (PreTrainedTokenizerFast)


@lru_cache(maxsize=1)
def _default_tokenizer() -> Tokenizer:
    from transformers import AutoTokenizer

    from .registry import ENTRIES

    return AutoTokenizer.from_pretrained(str(ENTRIES["gdn-tiny"].folder))


@lru_cache(maxsize=8)
def _stream(source: str, tok: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids ``[N]``, verse-start positions ``[M]``) of a shipped text under ``tok``."""
    from .tokenizer import encode_stream

    text = corpus.heldout_text() if source == "heldout" else corpus.train_sample_text()
    ids = torch.tensor(encode_stream(tok, text), dtype=torch.long)
    # a position starts a verse when it is 0 or follows a token that ends with a newline
    vocab_nl = torch.tensor([s.endswith("\n") for s in tok.batch_decode([[i] for i in range(len(tok))])])
    ends_nl = vocab_nl[ids]
    starts = torch.cat([torch.tensor([True]), ends_nl[:-1]]) & ~ends_nl
    return ids, starts.nonzero().squeeze(1)


def passages(
    source: str,
    n: int,
    n_tokens: int,
    tokenizer: Tokenizer | None = None,
    seed: int = 0,
    as_text: bool = False,
) -> torch.Tensor | list[str]:
    """``n`` non-overlapping windows of ``n_tokens`` token ids from ``source`` (``"heldout"`` or ``"train"``).

    Args:
        source: ``"heldout"`` (the held-out books) or ``"train"`` (the shipped train sample).
        n: number of passages.
        n_tokens: tokens per passage. No BOS is added (the zoo models were trained without one).
        tokenizer: default: the zoo tokenizer (shared by every zoo model).
        seed: seeds the choice of windows; the same arguments always give the same passages.
        as_text: return the decoded strings instead of ids.

    Returns:
        a ``torch.long`` tensor ``[n, n_tokens]`` (each row starts at a verse start), or ``n`` strings.

    Raises:
        InputError (a ``ValueError``): the source holds fewer than ``n`` disjoint windows of ``n_tokens``, or ``n`` /
            ``n_tokens`` is not an integer >= 1.
    """
    from writelens.errors import InputError
    from writelens.validate import check_int

    if source not in ("heldout", "train"):
        raise InputError(f"source must be 'heldout' or 'train', got {source!r}.")
    n, n_tokens = check_int(n, "n", InputError, 1), check_int(n_tokens, "n_tokens", InputError, 1)
    tok = tokenizer if tokenizer is not None else _default_tokenizer()
    ids, starts = _stream(source, tok)
    starts = starts[starts + n_tokens <= len(ids)]
    g = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    taken = torch.zeros(len(ids), dtype=torch.bool)
    for s in starts[torch.randperm(len(starts), generator=g)].tolist():
        if not taken[s : s + n_tokens].any():
            taken[s : s + n_tokens] = True
            chosen.append(s)
            if len(chosen) == n:
                break
    if len(chosen) < n:
        raise InputError(
            f"the {source} text ({len(ids):,} tokens) holds only {len(chosen)} disjoint passages of "
            f"{n_tokens} tokens; ask for fewer or shorter ones"
        )
    out = torch.stack([ids[s : s + n_tokens] for s in chosen])
    return tok.batch_decode(out.tolist()) if as_text else out


def heldout_passages(
    n: int, n_tokens: int, tokenizer: Tokenizer | None = None, seed: int = 0, as_text: bool = False
) -> torch.Tensor | list[str]:
    """Passages of the held-out books (never trained on): ids ``[n, n_tokens]`` or ``n`` strings.

    ~47,700 zoo tokens in all. See :func:`passages` for the arguments.
    """
    return passages("heldout", n, n_tokens, tokenizer, seed, as_text)


def train_sample_passages(
    n: int, n_tokens: int, tokenizer: Tokenizer | None = None, seed: int = 0, as_text: bool = False
) -> torch.Tensor | list[str]:
    """Passages of the shipped train sample (Genesis, Psalms, Matthew, Romans; ~150,000 zoo tokens):
    ids ``[n, n_tokens]`` or ``n`` strings. See :func:`passages` for the arguments."""
    return passages("train", n, n_tokens, tokenizer, seed, as_text)
