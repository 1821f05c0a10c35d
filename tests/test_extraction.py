"""wl.extract on a tiny random-init Qwen3.5: exact rows, every target, ranks, resumption after a kill."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "sae"))
import extraction_worker as worker  # noqa: E402

import writelens as wl  # noqa: E402
from writelens.errors import ExtractionError  # noqa: E402
from writelens.sae.data import StateDataset  # noqa: E402
from writelens.sae.shards import ShardReader  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lens():
    return worker.tiny_lens()


def _rows(out_dir, layer, head):
    reader = ShardReader(out_dir)
    shards = [reader.read(layer, head, i) for i in reader.shard_indices(layer, head)]
    return {name: torch.cat([s[name] for s in shards]) for name in shards[0]}


def test_sampled_positions_are_the_exact_states(lens, tmp_path):
    seqs = worker.corpus(6)
    result = wl.extract(lens, seqs, out_dir=tmp_path, **{**worker.ARGS, "seqs_per_shard": 4})
    assert result.n_shards == 2 and result.written == [0, 1]
    meta = ShardReader(tmp_path).metadata
    assert meta.extra["n_sequences"] == 6 and meta.dtype == "float32" and meta.extra["model_class"] == "Qwen3_5ForCausalLM"
    for layer, head in worker.ARGS["sites"]:
        rows = _rows(tmp_path, layer, head)
        assert rows["states"].dtype == torch.float32 and len(rows["seq_ids"]) == 6 * 4
        for n in (0, 5, 13, 23):
            seq, pos = int(rows["seq_ids"][n]), int(rows["positions"][n])
            alone = lens.run(torch.tensor([seqs[seq]]), cache=True).cache.state(layer, head, pos)[0]
            torch.testing.assert_close(rows["states"][n], alone, rtol=1e-4, atol=1e-5)
    again = wl.extract(lens, seqs, out_dir=tmp_path, **{**worker.ARGS, "seqs_per_shard": 4})
    assert again.written == [] and again.skipped == [0, 1]


@pytest.mark.parametrize("target", ["final_state", "all_positions", "writes"])
def test_other_targets(lens, tmp_path, target):
    seqs = worker.corpus(3)
    wl.extract(lens, seqs, sites=[(1, 0)], target=target, out_dir=tmp_path, batch_size=2, progress=False)
    rows = _rows(tmp_path, 1, 0)
    run = lens.run(torch.tensor([seqs[2]]), cache=True).cache
    last = len(seqs[2]) - 1
    if target == "final_state":
        assert rows["positions"].tolist() == [len(s) - 1 for s in seqs]
        torch.testing.assert_close(rows["states"][2], run.final_state(1, 0)[0], rtol=1e-4, atol=1e-5)
    else:
        assert len(rows["positions"]) == sum(map(len, seqs))
        n = len(rows["positions"]) - 1
        assert (int(rows["seq_ids"][n]), int(rows["positions"][n])) == (2, last)
        if target == "all_positions":
            torch.testing.assert_close(rows["states"][n], run.state(1, 0, last)[0], rtol=1e-4, atol=1e-5)
        else:
            factors = run.write(1, 0)
            torch.testing.assert_close(rows["key"][n], factors.key[0, last])
            torch.testing.assert_close(rows["beta"][n], factors.beta[0, last])
            data = StateDataset.from_shards(tmp_path, 1, 0)  # writes become beta * key value^T
            expected = factors.beta[0, last] * torch.outer(factors.key[0, last], factors.value[0, last])
            torch.testing.assert_close(data.fetch(torch.tensor([n]))[0], expected)


def test_ranks_split_the_shards(lens, tmp_path):
    seqs = worker.corpus(8)
    args = {**worker.ARGS, "seqs_per_shard": 2}
    wl.extract(lens, seqs, out_dir=tmp_path / "one", **args)
    first = wl.extract(lens, seqs, out_dir=tmp_path / "two", rank=0, world_size=2, **args)
    second = wl.extract(lens, seqs, out_dir=tmp_path / "two", rank=1, world_size=2, **args)
    assert first.written == [0, 2] and second.written == [1, 3]
    one, two = _rows(tmp_path / "one", 2, 1), _rows(tmp_path / "two", 2, 1)
    for name in one:
        torch.testing.assert_close(one[name], two[name])


def test_killed_run_resumes_without_missing_or_duplicated_rows(lens, tmp_path):
    seqs = worker.corpus()
    total = len(seqs) // worker.ARGS["seqs_per_shard"] * len(worker.ARGS["sites"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(Path(worker.__file__)), str(tmp_path / "cut"), "0.3"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if len(list((tmp_path / "cut").rglob("shard_*.safetensors"))) >= 4:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    written_at_kill = len(list((tmp_path / "cut").rglob("shard_*.safetensors")))
    assert 0 < written_at_kill < total, err.decode()[-2000:]

    resumed = wl.extract(lens, seqs, out_dir=tmp_path / "cut", **worker.ARGS)
    assert resumed.skipped and resumed.written
    wl.extract(lens, seqs, out_dir=tmp_path / "fresh", **worker.ARGS)
    for layer, head in worker.ARGS["sites"]:
        cut, fresh = _rows(tmp_path / "cut", layer, head), _rows(tmp_path / "fresh", layer, head)
        keys = list(zip(cut["seq_ids"].tolist(), cut["positions"].tolist(), strict=True))
        assert len(keys) == len(set(keys)) == len(fresh["seq_ids"])
        for name in fresh:
            torch.testing.assert_close(cut[name], fresh[name], rtol=1e-5, atol=1e-6)


def test_refuses_to_resume_other_arguments_and_overwrites_on_request(lens, tmp_path):
    seqs = worker.corpus(4)
    wl.extract(lens, seqs, out_dir=tmp_path, **worker.ARGS)
    with pytest.raises(ExtractionError, match="another extraction"):
        wl.extract(lens, seqs, out_dir=tmp_path, **{**worker.ARGS, "seed": 6})
    result = wl.extract(lens, seqs, out_dir=tmp_path, overwrite=True, **{**worker.ARGS, "seed": 6})
    assert result.skipped == [] and ShardReader(tmp_path).metadata.extra["seed"] == 6


def test_texts_budget_and_training_on_the_shards(lens, tmp_path):
    class ByteTokenizer:
        name_or_path = "bytes"

        def encode(self, text, add_special_tokens=False):
            return [3 + b % 250 for b in text.encode()]

    lens.tokenizer = ByteTokenizer()
    try:
        texts = [f"passage {i}: " + "in the beginning " * (i + 2) for i in range(12)]
        result = wl.extract(lens, texts, sites=[0], out_dir=tmp_path, n_tokens=300, positions_per_seq=6,
                            batch_size=4, progress=False)
    finally:
        lens.tokenizer = None
    meta = result.metadata
    assert meta.extra["n_tokens"] == 300 and meta.extra["tokenizer"] == "bytes"
    assert [s["head"] for s in meta.sites] == [0, 1]
    data = StateDataset.from_shards(tmp_path, 0, [0, 1])
    sae = wl.sae.BilinearSAE(d_k=16, d_v=16, n_features=32, k=4, n_heads=2)
    out = wl.sae.train_sae(sae, data, wl.sae.TrainConfig(steps=5, batch_size=8, progress=False, val_fraction=0.5))
    assert out.steps == 5 and out.final_val is not None


def test_bad_arguments(lens, tmp_path):
    with pytest.raises(ExtractionError, match="unknown target"):
        wl.extract(lens, worker.corpus(2), target="everything", out_dir=tmp_path)
    with pytest.raises(ExtractionError, match="need a tokenizer"):
        wl.extract(lens, ["some text"], out_dir=tmp_path)
    with pytest.raises(wl.errors.NotRecurrentLayerError):
        wl.extract(lens, worker.corpus(2), sites=[(3, 0)], out_dir=tmp_path)
