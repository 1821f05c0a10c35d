"""The CLI, through typer's runner: help, zoo, training from extracted shards, bad arguments."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from writelens.cli import app

runner = CliRunner()


def test_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for name in ("train", "zoo"):
        assert name in res.output
    res = runner.invoke(app, ["train", "--help"])
    assert res.exit_code == 0 and "--n-features" in res.output and "--lr" in res.output


def test_zoo_unknown_name_exits_2():
    res = runner.invoke(app, ["zoo", "path", "no-such-model"])
    assert res.exit_code == 2
    assert "valid names" in res.output


def test_train_from_shards(tmp_path):
    from writelens.sae.shards import ShardWriter

    g = torch.Generator().manual_seed(0)
    states = torch.randn(256, 8, 8, generator=g) * 0.1
    writer_cls = ShardWriter
    _write_shards(writer_cls, tmp_path / "data", states)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--data", str(tmp_path / "data"), "--layer", "0", "--head", "0",
                              "--out", str(out), "--architecture", "bilinear", "--n-features", "32", "--k", "4",
                              "--steps", "20", "--batch-size", "32", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["site"] == [0, 0]
    assert (out / "sae" / "cfg.json").exists()


def test_train_bad_arguments_exit_2(tmp_path):
    res = runner.invoke(app, ["train", "--data", str(tmp_path), "--layer", "0", "--head", "0", "--out",
                              str(tmp_path / "o"), "--architecture", "bilinear", "--n-features", "8"])
    assert res.exit_code == 2 and "metadata.json" in res.output


def _write_shards(writer_cls, root, states):
    from writelens.sae.shards import ShardMetadata

    writer = writer_cls(root)
    writer.write_metadata(ShardMetadata(target="sampled_positions", sites=[{"layer": 0, "head": 0, "d_k": 8, "d_v": 8}],
                                        n_shards=2))
    for i in range(2):
        rows = states[i * 128 : (i + 1) * 128]
        writer.write(0, 0, i, "sampled_positions", {"states": rows, "seq_ids": torch.arange(i * 128, (i + 1) * 128),
                                                     "positions": torch.zeros(128, dtype=torch.long)})


def test_extract_then_train_end_to_end(tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from models import qwen35, word_tokenizer

    folder = tmp_path / "model"
    qwen35(layers=4, hk=1, hv=2).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    text = tmp_path / "corpus.txt"
    g = torch.Generator().manual_seed(0)
    text.write_text(" ".join(f"w{int(i)}" for i in torch.randint(3, 128, (3000,), generator=g)))
    data = tmp_path / "data"
    res = runner.invoke(app, ["extract", "--model", str(folder), "--out", str(data), "--sites", "1:0",
                              "--corpus", str(text), "--n-sequences", "24", "--seq-len", "64", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    summary = json.loads((data / "summary.json").read_text())
    assert summary["n_shards"] >= 1 and summary["target"] == "sampled_positions"
    res = runner.invoke(app, ["train", "--data", str(data), "--layer", "1", "--head", "0", "--out",
                              str(tmp_path / "run"), "--architecture", "bilinear", "--n-features", "16", "--k", "4",
                              "--steps", "5", "--batch-size", "16", "--no-progress"])
    assert res.exit_code == 0, res.output
