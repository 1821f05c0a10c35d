"""The CLI contract (docs/cli.md): a bad argument exits 2 with a message naming the option and what it expects, never
a traceback. One line per case; the Python API's cases are in test_hardening.py."""

from __future__ import annotations

import json
import os

import pytest
import torch
from models import assert_cli_refused
from typer.testing import CliRunner

from writelens.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny Qwen3.5 (GDN layers 0-2, 2 value heads of 16 x 16) with a word tokenizer and a corpus."""
    from models import qwen35, word_tokenizer

    root = tmp_path_factory.mktemp("hardening_cli")
    qwen35(layers=4, hk=1, hv=2).save_pretrained(root / "model")
    word_tokenizer().save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    (root / "corpus.txt").write_text(" ".join(f"w{int(i)}" for i in torch.randint(3, 128, (600,), generator=g)))
    (root / "a_file").write_text("not a folder")
    return root


def _invoke(tiny, tmp_path, command, *rest):
    out = str(tmp_path / "o")
    if command == "extract":
        args = ["extract", "--model", str(tiny / "model"), "--corpus", str(tiny / "corpus.txt"), "--out", out,
                "--n-sequences", "2", "--seq-len", "16", "--no-progress"]
    elif command == "train":
        args = ["train", "--data", str(tmp_path), "--layer", "0", "--head", "0", "--out", out,
                "--architecture", "bilinear", "--n-features", "8", "--no-progress"]
    elif command == "steer":
        args = ["steer", "--model", str(tiny / "model"), "--site", "1:0", "--out", out, "--prompts-from",
                str(tiny / "corpus.txt"), "--prompt-len", "8", "--n-prompts", "1", "--no-progress"]
    else:  # replace-test / attribute: option checks come before the SAE is read
        args = [command, "--model", str(tiny / "model"), "--sae", str(tmp_path / "no-sae"), "--site", "1:0",
                "--out", out, "--no-progress"]
    rest = [str(tiny / "a_file") if a == "FILE" else a for a in rest]
    if "--out" in rest:  # the case replaces the default --out
        i = args.index("--out")
        del args[i:i + 2]
    return runner.invoke(app, args + rest)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without CUDA")
CASES = [
    (("extract", "--batch-size", "0"), ["'--batch-size'", "expected an integer >= 1, got 0"]),
    (("extract", "--n-sequences", "0"), ["'--n-sequences'", ">= 1"]),
    (("extract", "--positions-per-seq", "-2"), ["'--positions-per-seq'", "got -2"]),
    (("extract", "--min-position", "-1"), ["'--min-position'", "an integer >= 0"]),
    (("extract", "--seq-len", "ten"), ["'--seq-len'", "expected an integer >= 1, got 'ten'"]),
    (("extract", "--sites", "1-0"), ["'--sites'", "L:H", "'1:0,4:2'", "got '1-0'"]),
    (("extract", "--sites", "a:b"), ["'--sites'", "L:H", "'a:b'"]),
    (("extract", "--sites", "1:0:2"), ["'--sites'", "L:H"]),
    (("extract", "--sites", "1:0,"), ["'--sites'", "the part '' is not L:H or L"]),
    (("extract", "--sites", "3:0"), ["'--sites'", "not a recurrent layer"]),
    (("extract", "--sites", "1:5"), ["'--sites'", "value heads"]),
    (("extract", "--out", "FILE"), ["'--out'", "is a file, not a folder"]),
    (("extract", "--out", "/proc/writelens-out"), ["'--out'", "not writable"]),
    (("train", "--steps", "-3"), ["'--steps'", "expected an integer >= 1 or 'none', got -3"]),
    (("train", "--steps", "0"), ["'--steps'", "got 0"]),
    (("train", "--batch-size", "0"), ["'--batch-size'", ">= 1"]),
    (("train", "--lr", "0"), ["'--lr'", "a number > 0"]),
    (("train", "--lr", "nan"), ["'--lr'", "got nan"]),
    (("train", "--epochs", "0"), ["'--epochs'", "a number > 0 or 'none'"]),
    (("train", "--val-fraction", "1.5"), ["'--val-fraction'", "a number in [0, 1)"]),
    (("train", "--n-features", "0"), ["'--n-features'", ">= 1"]),
    (("train", "--k", "0"), ["'--k'", ">= 1"]),
    (("train", "--device", "tpu"), ["'--device'", "'tpu' is not a device", "'cpu'"]),
    pytest.param(("train", "--device", "cuda"), ["'--device'", "'cuda' needs CUDA", "use 'cpu'"], marks=NO_CUDA),
    (("train", "--out", "/proc/writelens-out/run"), ["'--out'", "not writable"]),
    (("steer", "--max-new-tokens", "0"), ["'--max-new-tokens'", ">= 1"]),
    (("steer", "--n-consecutive", "0"), ["'--n-consecutive'", ">= 1"]),
    (("steer", "--seed", "-1"), ["'--seed'", "an integer >= 0"]),
    (("replace-test", "--batch-rows", "0"), ["'--batch-rows'", ">= 1"]),
    (("replace-test", "--n-bootstrap", "-1"), ["'--n-bootstrap'", ">= 0"]),
    (("replace-test", "--max-firings", "0"), ["'--max-firings'", "an integer >= 1 or 'none'"]),
    (("attribute", "--scan-batch", "0"), ["'--scan-batch'", ">= 1"]),
    (("attribute", "--min-t0", "-4"), ["'--min-t0'", ">= 0"]),
]


def _case_id(case) -> str:
    args = case.values[0] if hasattr(case, "values") else case[0]  # pytest.param is a NamedTuple too
    return " ".join(args)


@pytest.mark.parametrize("args, needles", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_argument_exits_2_without_a_traceback(tiny, tmp_path, args, needles):
    res = _invoke(tiny, tmp_path, *args)
    assert_cli_refused(res, needles, tmp_path / "o")


def test_errors_print_without_stray_quotes():
    res = runner.invoke(app, ["zoo", "path", "no-such-model"])
    assert res.exit_code == 2
    assert res.output.startswith("error: 'no-such-model' is not a writelens zoo model")  # not "error: \"'no-such..."


def test_an_unreadable_path_exits_2(tiny, tmp_path, monkeypatch):
    """An OSError from a path given on the command line is a bad argument: exit 2, a message, no traceback (root
    reads any file, so the unreadable corpus is simulated)."""
    import pathlib

    real = pathlib.Path.read_text

    def read_text(self, *a, **k):
        if self.name == "corpus.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    res = _invoke(tiny, tmp_path, "extract", "--sites", "1:0")
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert "error: Permission denied: " in res.output and "corpus.txt" in res.output


def test_extract_no_progress_silences_every_bar(tiny, tmp_path):
    from transformers.utils import logging as hf_logging

    res = runner.invoke(app, ["extract", "--help"])
    assert "--no-progress" in res.output
    res = _invoke(tiny, tmp_path, "extract", "--sites", "1:0")
    assert res.exit_code == 0, res.output
    assert "Loading weights" not in res.output and "it/s" not in res.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["written"] == 1
    assert hf_logging.is_progress_bar_enabled()  # restored after the command


@pytest.mark.skipif(getattr(os, "geteuid", lambda: 1)() == 0, reason="root ignores permission bits")
def test_read_only_out_folder(tiny, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = _invoke(tiny, tmp_path, "extract", "--out", str(ro / "out"))
        assert res.exit_code == 2 and "'--out'" in res.output and "read-only" in res.output
    finally:
        ro.chmod(0o755)
