"""The MQAR task generator: layout, seeding, counterfactuals, recall scoring, errors."""

from __future__ import annotations

import pytest
import torch

from writelens.errors import TaskConfigError
from writelens.tasks.mqar import (
    BOS,
    IGNORE,
    PAD,
    MQARConfig,
    counterfactual,
    make_batch,
    recall,
    training_batch,
    unused_values,
)

CFG = MQARConfig(n_keys=32, n_values=32, n_distractors=8, seq_len=48, max_gap=6)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n_pairs", [1, 4, 8, CFG.max_pairs()])
def test_layout(n_pairs):
    b = make_batch(CFG, 16, n_pairs, gen(n_pairs))
    B, T = b.ids.shape
    assert (B, T) == (16, CFG.seq_len) and b.keys.shape == (16, n_pairs)
    assert (b.ids[:, 0] == BOS).all()
    rows = torch.arange(B)[:, None]
    assert torch.equal(b.ids[rows, b.key_pos], b.keys) and torch.equal(b.ids[rows, b.value_pos], b.values)
    for r in range(B):  # keys and values distinct within a passage, from disjoint vocabularies
        assert len(set(b.keys[r].tolist())) == n_pairs and len(set(b.values[r].tolist())) == n_pairs
        assert set(b.keys[r].tolist()) <= set(CFG.key_ids) and set(b.values[r].tolist()) <= set(CFG.value_ids)
        assert len(set(b.query_pair[r].tolist())) == b.query_pair.shape[1]  # each queried key once
        gap = b.ids[r, 1 + 2 * n_pairs : int(b.query_pos[r, 0])]
        assert set(gap.tolist()) <= set(CFG.distractor_ids) and len(gap) <= CFG.max_gap
        end = int(b.query_pos[r, -1]) + 2
        assert (b.ids[r, end:] == PAD).all()
    assert torch.equal(b.ids[rows, b.query_pos], b.keys[rows, b.query_pair])  # a query repeats its key
    assert torch.equal(b.ids[rows, b.query_pos + 1], b.answers)
    assert torch.equal(b.answers, b.values[rows, b.query_pair])
    scored = b.labels != IGNORE
    assert scored.sum() == b.query_pos.numel() and torch.equal(b.labels[rows, b.query_pos], b.answers)
    assert b.query_pos.shape[1] == CFG.n_queries(n_pairs)


def test_seeded_and_training_mix():
    a, b = make_batch(CFG, 8, 4, gen(3)), make_batch(CFG, 8, 4, gen(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    ids, labels = training_batch(CFG, 10, (1, 2, 4), gen(1))
    assert ids.shape == (10, CFG.seq_len)
    assert sorted((labels != IGNORE).sum(1).tolist()) == [1] * 4 + [1] * 3 + [2] * 3


def test_counterfactual_changes_only_that_pair():
    b = make_batch(CFG, 12, 6, gen(5))
    pair = b.query_pair[:, 0]
    new = unused_values(CFG, b, gen(6))
    c = counterfactual(b, pair, new)
    rows = torch.arange(12)
    assert torch.equal(c.values[rows, pair], new) and torch.equal(c.answers[:, 0], new)
    changed = (c.ids != b.ids).sum(1)
    n_hits = (b.query_pair == pair[:, None]).sum(1)
    assert torch.equal(changed, 1 + n_hits)  # the value token and the answer to each query of that key
    with pytest.raises(TaskConfigError, match="already occurs"):
        counterfactual(b, pair, b.values[:, 1])


def test_recall_scores_top1_at_query_positions():
    b = make_batch(CFG, 4, 4, gen(2))
    logits = torch.zeros(4, CFG.seq_len, CFG.vocab_size)
    rows = torch.arange(4)[:, None]
    logits[rows, b.query_pos, b.answers] = 1.0
    assert recall(logits, b).all()
    logits[0, b.query_pos[0, 0], b.answers[0, 0]] = -1.0
    hits = recall(logits, b)
    assert not hits[0, 0] and hits.sum() == hits.numel() - 1


def test_errors_name_the_knob():
    with pytest.raises(TaskConfigError, match="n_pairs=30"):
        make_batch(CFG, 2, 30, gen())
    with pytest.raises(TaskConfigError, match="query_frac"):
        MQARConfig(query_frac=0.0)
    with pytest.raises(TaskConfigError, match="max_gap"):
        MQARConfig(n_distractors=0, max_gap=3)
    assert MQARConfig.from_json(CFG.to_json()) == CFG
