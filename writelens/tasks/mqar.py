"""Multi-query associative recall (MQAR, as in the Zoology work on linear attention): a seeded task with a known
answer for every write.

A passage is ``BOS k_1 v_1 k_2 v_2 … k_N v_N  [gap of distractors]  q_1 a_1 q_2 a_2 …  PAD…`` where the keys and
values are drawn without replacement from disjoint vocabularies, each query ``q_j`` is one of the passage's keys
(a random subset of them, in random order) and ``a_j`` is the value it was paired with. The model is scored only on
the answers: the logits at the query's position must put ``a_j`` first. Which key–value pair a write holds is known
by construction, which is what the organisms (``writelens.zoo``: ``gdn-mqar``, ``mamba2-mqar``, ``rwkv7-mqar``) and
the known-answer experiments (:mod:`writelens.experiments.known_answers`) build on.

Token layout of the vocabulary (:class:`MQARConfig`): ``0`` PAD, ``1`` BOS, ``2`` EOS, then ``n_keys`` key tokens,
``n_values`` value tokens and ``n_distractors`` distractor tokens.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from writelens.errors import TaskConfigError
from writelens.validate import check_int

PAD, BOS, EOS = 0, 1, 2
N_SPECIAL = 3
IGNORE = -100  # label of positions that are not scored (torch's cross-entropy ignore_index)


@dataclass(frozen=True)
class MQARConfig:
    """Vocabulary and length of an MQAR task.

    Args:
        n_keys: key vocabulary size (keys of a passage are drawn from it without replacement).
        n_values: value vocabulary size (values of a passage are drawn without replacement).
        n_distractors: distractor vocabulary size (tokens of the gap between pairs and queries; 0: no gap tokens).
        seq_len: passage length T (shorter passages are padded with PAD at the end).
        query_frac: fraction of a passage's keys that are queried (at least one). Querying every key lets a model
            answer the last query by elimination, a shortcut that stalls training.
        max_gap: largest number of distractor tokens between the last pair and the first query (uniform in
            ``[0, max_gap]``, capped by what fits in ``seq_len``).
    """

    n_keys: int = 64
    n_values: int = 64
    n_distractors: int = 16
    seq_len: int = 64
    query_frac: float = 0.5
    max_gap: int = 8

    def __post_init__(self) -> None:
        for name in ("n_keys", "n_values", "n_distractors", "seq_len", "max_gap"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TaskConfigError(f"MQARConfig.{name} must be an int, got {value!r}.")
        q = self.query_frac
        if isinstance(q, bool) or not isinstance(q, (int, float)):
            raise TaskConfigError(f"MQARConfig.query_frac must be a number in (0, 1], got {q!r}.")
        if min(self.n_keys, self.n_values) < 2 or self.n_distractors < 0:
            raise TaskConfigError(f"MQARConfig needs n_keys, n_values ≥ 2 and n_distractors ≥ 0 (got {self}).")
        if not 0 < self.query_frac <= 1:
            raise TaskConfigError(f"query_frac must lie in (0, 1] (got {self.query_frac}).")
        if self.max_gap < 0 or (self.max_gap > 0 and self.n_distractors == 0):
            raise TaskConfigError("max_gap must be ≥ 0, and > 0 only with n_distractors > 0.")
        if self.seq_len < self.length_needed(1):
            raise TaskConfigError(f"seq_len={self.seq_len} cannot hold one key–value pair and its query (BOS + pair + "
                                  f"query + answer = {self.length_needed(1)} tokens); raise seq_len.")

    @property
    def vocab_size(self) -> int:
        return N_SPECIAL + self.n_keys + self.n_values + self.n_distractors

    @property
    def key_ids(self) -> range:
        return range(N_SPECIAL, N_SPECIAL + self.n_keys)

    @property
    def value_ids(self) -> range:
        return range(N_SPECIAL + self.n_keys, N_SPECIAL + self.n_keys + self.n_values)

    @property
    def distractor_ids(self) -> range:
        start = N_SPECIAL + self.n_keys + self.n_values
        return range(start, start + self.n_distractors)

    def n_queries(self, n_pairs: int) -> int:
        return max(1, int(round(self.query_frac * n_pairs)))

    def length_needed(self, n_pairs: int) -> int:
        """Tokens a passage with ``n_pairs`` pairs needs without a gap: BOS + pairs + queries with answers."""
        return 1 + 2 * n_pairs + 2 * self.n_queries(n_pairs)

    def max_pairs(self) -> int:
        """The largest N whose passages fit in ``seq_len``."""
        n = 1
        while n + 1 <= min(self.n_keys, self.n_values) and self.length_needed(n + 1) <= self.seq_len:
            n += 1
        return n

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MQARConfig:
        """Rebuild from :meth:`to_json`; text that is not such an object raises :class:`TaskConfigError`."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as err:
            raise TaskConfigError(f"not an MQARConfig JSON object ({err}); pass the text MQARConfig.to_json() wrote.") from None
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            extra = sorted(set(data) - known) if isinstance(data, dict) else type(data).__name__
            raise TaskConfigError(f"not an MQARConfig JSON object (unexpected {extra}); its fields are {sorted(known)}.")
        return cls(**data)


class MQARBatch(NamedTuple):
    """A batch of B passages with N pairs and Q queries each (every row has the same N and Q).

    ``ids[b, key_pos[b, i]] == keys[b, i]`` and ``ids[b, key_pos[b, i] + 1] == values[b, i]``; query j of row b is
    key ``query_pair[b, j]`` at position ``query_pos[b, j]``, and the model must predict ``answers[b, j]`` there
    (``labels[b, query_pos[b, j]] == answers[b, j]``; every other label is ``IGNORE``)."""

    ids: Int[Tensor, "B T"]
    labels: Int[Tensor, "B T"]
    keys: Int[Tensor, "B N"]
    values: Int[Tensor, "B N"]
    key_pos: Int[Tensor, "B N"]
    query_pos: Int[Tensor, "B Q"]
    query_pair: Int[Tensor, "B Q"]
    answers: Int[Tensor, "B Q"]

    @property
    def value_pos(self) -> Int[Tensor, "B N"]:
        return self.key_pos + 1

    @property
    def n_pairs(self) -> int:
        return int(self.keys.shape[1])

    @property
    def attention_mask(self) -> Bool[Tensor, "B T"]:
        return self.ids != PAD

    def rows(self, index: Tensor | slice | list[int]) -> MQARBatch:
        """The sub-batch of the given rows."""
        return MQARBatch(*(t[index] for t in self))


def make_batch(cfg: MQARConfig, batch: int, n_pairs: int, generator: torch.Generator) -> MQARBatch:
    """``batch`` seeded passages with ``n_pairs`` pairs each (see the module docstring for the layout)."""
    batch = check_int(batch, "make_batch batch", TaskConfigError, 0)
    n_pairs = check_int(n_pairs, "n_pairs", TaskConfigError)
    if not 1 <= n_pairs <= cfg.max_pairs():
        raise TaskConfigError(
            f"n_pairs={n_pairs} does not fit: this MQARConfig allows 1..{cfg.max_pairs()} pairs "
            f"(seq_len {cfg.seq_len}, {cfg.n_keys} keys, {cfg.n_values} values); raise seq_len or lower n_pairs."
        )
    B, N, T = batch, n_pairs, cfg.seq_len
    Q = cfg.n_queries(N)
    keys = torch.rand(B, cfg.n_keys, generator=generator).argsort(1)[:, :N] + cfg.key_ids.start
    values = torch.rand(B, cfg.n_values, generator=generator).argsort(1)[:, :N] + cfg.value_ids.start
    ids = torch.full((B, T), PAD, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    ids[:, 0] = BOS
    key_pos = (1 + 2 * torch.arange(N)).expand(B, N).clone()
    ids[:, 1 : 1 + 2 * N : 2] = keys
    ids[:, 2 : 2 + 2 * N : 2] = values
    room = T - cfg.length_needed(N)
    gap = torch.randint(0, min(cfg.max_gap, room) + 1, (B,), generator=generator)
    query_pair = torch.rand(B, N, generator=generator).argsort(1)[:, :Q]
    query_pos = torch.empty(B, Q, dtype=torch.long)
    rows = torch.arange(B)
    for b in range(B):
        g = int(gap[b])
        if g:
            d = torch.randint(0, cfg.n_distractors, (g,), generator=generator) + cfg.distractor_ids.start
            ids[b, 1 + 2 * N : 1 + 2 * N + g] = d
        query_pos[b] = 1 + 2 * N + g + 2 * torch.arange(Q)
    answers = values[rows[:, None], query_pair]
    ids[rows[:, None], query_pos] = keys[rows[:, None], query_pair]
    ids[rows[:, None], query_pos + 1] = answers
    labels[rows[:, None], query_pos] = answers
    return MQARBatch(ids, labels, keys, values, key_pos, query_pos, query_pair, answers)


def training_batch(cfg: MQARConfig, batch: int, pair_counts: tuple[int, ...], generator: torch.Generator
                   ) -> tuple[Int[Tensor, "B T"], Int[Tensor, "B T"]]:
    """Ids and labels of a training step whose rows mix the pair counts ``pair_counts`` (equal shares)."""
    if not pair_counts or check_int(batch, "training_batch batch", TaskConfigError, 1) < 1:
        raise TaskConfigError(f"training_batch needs at least one pair count, got pair_counts={pair_counts!r}.")
    per = [batch // len(pair_counts) + (i < batch % len(pair_counts)) for i in range(len(pair_counts))]
    parts = [make_batch(cfg, m, n, generator) for m, n in zip(per, pair_counts, strict=True) if m]
    return torch.cat([p.ids for p in parts]), torch.cat([p.labels for p in parts])


def counterfactual(b: MQARBatch, pair: int | Int[Tensor, " B"], new_values: Int[Tensor, " B"],
                   cfg: MQARConfig | None = None) -> MQARBatch:
    """The same passages with pair ``pair`` (one index, or one per row) re-paired: its key now holds ``new_values``
    (the value token and every answer to that key change; nothing else does). ``new_values`` must be values that
    do not occur in their passage (:func:`unused_values`). With ``cfg`` (the batch's task) each must also be one of
    its value tokens; without it only special tokens and the passage's own keys are refused (a batch does not
    carry its vocabulary), so pass ``cfg`` whenever new values come from anywhere but :func:`unused_values`."""
    rows = torch.arange(len(b.ids))
    pair_t = torch.as_tensor(pair).expand(len(rows)) if torch.as_tensor(pair).ndim == 0 else torch.as_tensor(pair)
    new_values = torch.as_tensor(new_values)
    if pair_t.shape != rows.shape or pair_t.dtype.is_floating_point or not bool(
            ((pair_t >= 0) & (pair_t < b.n_pairs)).all()):
        raise TaskConfigError(f"counterfactual: pair must be one index in 0..{b.n_pairs - 1} or one per row "
                              f"({len(rows)}), got {pair!r}.")
    if new_values.shape != rows.shape:
        raise TaskConfigError(f"counterfactual: new_values must hold one value token per row ({len(rows)}), got shape "
                              f"{tuple(new_values.shape)}; draw them with unused_values.")
    if bool((new_values < N_SPECIAL).any()) or bool((b.keys == new_values[:, None]).any()):
        raise TaskConfigError(f"counterfactual: new_values {new_values.tolist()} holds a special token or a key of its "
                              "passage; pass value tokens (cfg.value_ids), e.g. from unused_values.")
    if cfg is not None and not bool(((new_values >= cfg.value_ids.start) & (new_values < cfg.value_ids.stop)).all()):
        raise TaskConfigError(f"counterfactual: new_values {new_values.tolist()} are not all value tokens of this task "
                              f"({cfg.value_ids.start}..{cfg.value_ids.stop - 1}); draw them with unused_values.")
    values = b.values.clone()
    if bool((values == new_values[:, None]).any()):
        raise TaskConfigError("counterfactual: a new value already occurs in its passage; pick an unused value.")
    values[rows, pair_t] = new_values
    ids, labels, answers = b.ids.clone(), b.labels.clone(), b.answers.clone()
    ids[rows, b.value_pos[rows, pair_t]] = new_values
    hit = b.query_pair == pair_t[:, None]
    answers[hit] = new_values[:, None].expand_as(answers)[hit]
    ids[rows[:, None], b.query_pos + 1] = answers
    labels[rows[:, None], b.query_pos] = answers
    return b._replace(ids=ids, labels=labels, values=values, answers=answers)


def unused_values(cfg: MQARConfig, b: MQARBatch, generator: torch.Generator) -> Int[Tensor, " B"]:
    """One value token per row that does not occur in that row's passage (seeded)."""
    out = torch.empty(len(b.ids), dtype=torch.long)
    for r in range(len(b.ids)):
        used = set(b.values[r].tolist())
        free = [v for v in cfg.value_ids if v not in used]
        out[r] = free[int(torch.randint(0, len(free), (1,), generator=generator))]
    return out


def recall(logits: Tensor, b: MQARBatch) -> Bool[Tensor, "B Q"]:
    """Per query, whether the model's top token at the query position is the answer (``logits`` [B, T, V])."""
    rows = torch.arange(len(b.ids))[:, None]
    return logits[rows, b.query_pos].argmax(-1) == b.answers
