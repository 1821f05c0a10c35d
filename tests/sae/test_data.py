"""Shard format round trip, dataset splitting and seeded ordering."""

import pytest
import torch

from writelens.errors import ExtractionError
from writelens.sae.data import StateDataset
from writelens.sae.shards import ShardMetadata, ShardReader, ShardWriter


def write_extraction(out_dir, n_shards=4, rows=6, heads=(0, 1), target="sampled_positions", d_k=3, d_v=2, planned=None):
    writer = ShardWriter(out_dir)
    writer.write_metadata(ShardMetadata(target, [{"layer": 2, "head": h, "d_k": d_k, "d_v": d_v} for h in heads],
                                        n_shards=planned or n_shards))
    g = torch.Generator().manual_seed(0)
    truth = {h: [] for h in heads}
    for i in range(n_shards):
        seq_ids = torch.arange(i * rows, (i + 1) * rows) // 2  # two rows per sequence
        positions = torch.arange(rows) % 2
        for h in heads:
            if target == "writes":
                t = {"key": torch.randn(rows, d_k, generator=g), "value": torch.randn(rows, d_v, generator=g),
                     "beta": torch.rand(rows, generator=g), "g": -torch.rand(rows, generator=g)}
                truth[h].append(t["beta"][:, None, None] * t["key"][:, :, None] * t["value"][:, None, :])
            else:
                t = {"states": torch.randn(rows, d_k, d_v, generator=g)}
                truth[h].append(t["states"])
            writer.write(2, h, i, target, {**t, "seq_ids": seq_ids, "positions": positions})
    return {h: torch.cat(v) for h, v in truth.items()}


def test_shards_round_trip_and_stacked_heads(tmp_path):
    truth = write_extraction(tmp_path)
    reader = ShardReader(tmp_path)
    assert reader.sites == [(2, 0), (2, 1)] and reader.shard_indices(2, 1) == [0, 1, 2, 3]
    assert reader.n_rows(2, 0, 3) == 6
    single = StateDataset.from_shards(tmp_path, 2, 1)
    torch.testing.assert_close(single.fetch(torch.arange(24)), truth[1])
    stacked = StateDataset.from_shards(tmp_path, 2, [0, 1])
    assert stacked.n_heads == 2 and stacked.state_shape == (2, 3, 2)
    torch.testing.assert_close(stacked.fetch(torch.tensor([5, 17, 0])), torch.stack([truth[0], truth[1]], 1)[[5, 17, 0]])
    assert not list(tmp_path.rglob("*.tmp"))


def test_writes_target_gives_rank_one_states(tmp_path):
    truth = write_extraction(tmp_path, target="writes", heads=(0,))
    data = StateDataset.from_shards(tmp_path, 2, 0)
    torch.testing.assert_close(data.fetch(torch.arange(24)), truth[0])


def test_split_keeps_sequences_together_and_is_seeded(tmp_path):
    write_extraction(tmp_path, n_shards=20)
    data = StateDataset.from_shards(tmp_path, 2, 0)
    train, val = data.split(0.25, seed=7)
    assert len(train) + len(val) == len(data) and 0 < len(val) < len(data)
    train_seqs, val_seqs = set(data.seq_ids[train.rows].tolist()), set(data.seq_ids[val.rows].tolist())
    assert not train_seqs & val_seqs
    again, _ = data.split(0.25, seed=7)
    assert torch.equal(again.rows, train.rows)
    assert not torch.equal(data.split(0.25, seed=8)[0].rows, train.rows)


@pytest.mark.parametrize("window", [None, 1, 3])
def test_epoch_order_is_a_seeded_permutation_across_shards(tmp_path, window):
    write_extraction(tmp_path, n_shards=6)
    data = StateDataset.from_shards(tmp_path, 2, 0, shuffle_window=window, cache_chunks=3)
    order = data.epoch_order(0, seed=1)
    assert sorted(order.tolist()) == list(range(36))
    assert torch.equal(order, data.epoch_order(0, seed=1))
    assert not torch.equal(order, data.epoch_order(1, seed=1))
    batches = [data.batch(step, 6, seed=1) for step in range(6)]
    torch.testing.assert_close(torch.cat(batches), data.fetch(order))
    # two ranks each get half of the same global batch
    halves = [data.batch(3, 6, seed=1, rank=r, world_size=2) for r in range(2)]
    torch.testing.assert_close(torch.cat(halves), batches[3])


def test_in_memory_dataset_and_mean():
    states = torch.randn(50, 4, 3)
    data = StateDataset.from_tensor(states)
    torch.testing.assert_close(data.mean(batch_size=7), states.mean(0))
    train, val = data.split(0.2, seed=0)
    torch.testing.assert_close(torch.cat(list(val.iter_batches(4))), states[torch.sort(val.rows).values])


def test_broken_or_incomplete_extractions_raise(tmp_path):
    write_extraction(tmp_path / "partial", n_shards=2, planned=5)
    with pytest.raises(ExtractionError, match="3 of 5 shards missing"):
        StateDataset.from_shards(tmp_path / "partial", 2, 0)
    assert len(StateDataset.from_shards(tmp_path / "partial", 2, 0, require_complete=False)) == 12
    write_extraction(tmp_path / "bad", n_shards=2)
    path = ShardReader(tmp_path / "bad").path(2, 0, 1)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ExtractionError, match="truncated"):
        StateDataset.from_shards(tmp_path / "bad", 2, 0)
    with pytest.raises(ExtractionError, match="not an extraction folder"):
        ShardReader(tmp_path)
    with pytest.raises(ExtractionError, match="was not extracted"):
        StateDataset.from_shards(tmp_path / "bad", 3, 0)
