"""Losses and samples used to train, document and test the zoo models (all in nats/token, fp32, no grad)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

#: Prompts of the model cards' greedy samples.
SAMPLE_PROMPTS: tuple[str, ...] = ("In the beginning", "And Jesus said unto them,", "The LORD is")


@torch.no_grad()
def token_losses(model: torch.nn.Module, ids: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Next-token cross-entropy of each position: ids ``[n, T]`` → losses ``[n, T-1]`` (float32, nats).

    Each row is run from an empty state (no cache, no BOS); loss ``[i, t]`` scores ``ids[i, t+1]`` given
    ``ids[i, :t+1]``.
    """
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, ids.shape[0], batch_size):
        chunk = ids[i : i + batch_size]
        logits = model(input_ids=chunk).logits[:, :-1].float()
        out.append(F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none"))
    model.train(was_training)
    return torch.cat(out)


def mean_loss(model: torch.nn.Module, ids: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats/token) over every target of ids ``[n, T]``."""
    return token_losses(model, ids, batch_size).mean().item()


def stream_windows(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a token stream ``[N]`` into windows ``[N // seq_len, seq_len + 1]`` with stride ``seq_len``, so that
    every token after the first is a target exactly once (the last partial window is dropped)."""
    n = (len(stream) - 1) // seq_len
    idx = torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
    return stream[idx]


def stream_loss(
    model: torch.nn.Module, stream: torch.Tensor, seq_len: int = 256, batch_size: int = 8
) -> float:
    """Mean cross-entropy (nats/token) over a whole token stream ``[N]``, in windows of ``seq_len`` targets,
    each window started from an empty state (as in training)."""
    return mean_loss(model, stream_windows(stream, seq_len), batch_size)


def unigram_entropy(stream: torch.Tensor) -> float:
    """Plug-in entropy (nats/token) of the empirical unigram distribution of a token stream ``[N]``.

    This is the cross-entropy of the *best* unigram model of that very text, so it is a slightly strict
    baseline: a unigram model fitted on the train split scores higher on held-out text.
    """
    counts = torch.bincount(stream).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


@torch.no_grad()
def greedy_samples(
    model: Any, tokenizer: Any, prompts: Sequence[str] = SAMPLE_PROMPTS, max_new_tokens: int = 40
) -> list[str]:
    """Greedy continuations (prompt + new text) of each prompt, one ``generate`` call per prompt."""
    model.eval()
    out = []
    for p in prompts:
        ids = tokenizer(p, return_tensors="pt", add_special_tokens=False)["input_ids"]
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        out.append(tokenizer.decode(gen[0], skip_special_tokens=True))
    return out


def ratio(loss: float, entropy: float) -> float:
    """``loss / entropy``; the zoo's quality bar is ``≤ 0.7`` on the held-out books."""
    return loss / entropy if entropy > 0 else math.inf
