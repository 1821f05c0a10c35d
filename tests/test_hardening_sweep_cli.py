"""The hostile sweep, CLI part: every command given bad arguments exits 2 with a message naming the option (or the
file) and what to pass, never a traceback (docs/cli.md). One line per case; the first sweep's CLI cases are in
test_hardening_cli.py."""

from __future__ import annotations

import pytest
import torch
from models import assert_cli_refused
from typer.testing import CliRunner

import writelens as wl
from writelens.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny Qwen3.5 (GDN layers 0-2, 2 value heads of 16 x 16) with a word tokenizer, a 600-token corpus, an
    SAE of site 1:0 and an extraction of it."""
    from models import qwen35, word_tokenizer

    root = tmp_path_factory.mktemp("sweep_cli")
    model = qwen35(layers=4, hk=1, hv=2)
    model.save_pretrained(root / "model")
    word_tokenizer().save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    (root / "corpus.txt").write_text(" ".join(f"w{int(i)}" for i in torch.randint(3, 128, (600,), generator=g)))
    (root / "empty.txt").write_text("")
    (root / "a_file").write_text("not a folder")
    wl.sae.BilinearSAE(d_k=16, d_v=16, n_features=8, k=2, seed=0).save(root / "sae")
    wl.extract(wl.WriteLens(model), torch.randint(3, 128, (4, 16), generator=g), sites=[(1, 0)], out_dir=root / "ex",
               progress=False)
    return root


def _args(tiny, out, command):
    common = ["--model", str(tiny / "model"), "--out", str(out), "--no-progress"]
    corpus = ["--corpus", str(tiny / "corpus.txt")]
    return {
        "extract": ["extract", *common, *corpus, "--n-sequences", "2", "--seq-len", "16"],
        "train": ["train", "--data", str(tiny / "ex"), "--layer", "1", "--head", "0", "--out", str(out),
                  "--architecture", "bilinear", "--n-features", "8", "--k", "2", "--steps", "2", "--batch-size", "2",
                  "--no-progress"],
        "replace-test": ["replace-test", *common, *corpus, "--sae", str(tiny / "sae"), "--site", "1:0",
                         "--n-passages", "2", "--passage-len", "12", "--n-bootstrap", "10"],
        "attribute": ["attribute", *common, *corpus, "--sae", str(tiny / "sae"), "--site", "1:0", "--n-passages", "2",
                      "--passage-len", "16", "--horizons", "1,2", "--min-t0", "2", "--atoms", "0"],
        "steer": ["steer", *common, "--site", "1:0", "--prompts-from", str(tiny / "corpus.txt"), "--prompt-len", "8",
                  "--n-prompts", "1", "--max-new-tokens", "2", "--magnitudes", "3"],
    }.get(command, [command])


def _invoke(tiny, tmp_path, command, rest):
    args = _args(tiny, tmp_path / "o", command)
    rest = [{"FILE": str(tiny / "a_file"), "TINY": str(tiny)}.get(a, a).replace("TINY", str(tiny)) for a in rest]
    for flag in [a for a in rest if a.startswith("--") or a.startswith("-no:")]:
        drop = flag.removeprefix("-no:")
        if drop in args:  # the case replaces (or, with -no:, removes) the default
            i = args.index(drop)
            del args[i:i + 2]
    return runner.invoke(app, args + [a for a in rest if not a.startswith("-no:")])


CASES = [
    # extract
    (("extract", "-no:--model"), ["Missing option '--model'"]),
    (("extract", "--sites", "1:0,,2:0"), ["'--sites'", "the part '' is not L:H"]),
    (("extract", "--sites", "-1:0"), ["'--sites'", "'-1:0'"]),
    (("extract", "--sites", "9:0"), ["'--sites'", "outside the model's 4 layers"]),
    (("extract", "--seq-len", "1e400"), ["'--seq-len'", "expected an integer >= 1, got '1e400'"]),
    (("extract", "--target", "states"), ["'--target'", "'states' is not one of"]),
    (("extract", "--dtype", "fp16"), ["'--dtype'", "'float32', 'bfloat16', 'float16'"]),
    (("extract", "--corpus", "TINY/nope.txt"), ["'--corpus'", "nor a text file"]),
    (("extract", "--corpus", "TINY/empty.txt"), ["empty.txt has fewer than 16 tokens"]),
    (("extract", "--corpus", "TINY"), ["'--corpus'", "nor a text file"]),
    (("extract", "--model", "TINY/no-model"), ["'--model'", "is not a folder"]),
    (("extract", "--model", "FILE"), ["'--model'", "is not a folder"]),
    (("extract", "--out", "TINY/a_file/sub"), ["'--out'", "lies under the file"]),
    (("extract", "--sites", "1:0", "--min-position", "100"), ["min_position=100 leaves nothing to sample"]),
    (("extract", "--sites", "1:0", "--n-sequences", "1000"), ["holds only 37 passages of 16 tokens", "fewer than the 1000"]),
    (("extract", "--batch-size", "1.5"), ["'--batch-size'", "got '1.5'"]),
    (("extract", "--seed", "-1"), ["'--seed'", "an integer >= 0"]),
    (("extract", "--colour", "red"), ["No such option: --colour"]),
    # train
    (("train", "--data", "TINY/no-data"), ["no-data holds no metadata.json", "--data"]),
    (("train", "--layer", "2"), ["site L2 H0 was not extracted"]),
    (("train", "--architecture", "conv"), ["unknown SAE architecture 'conv'"]),
    (("train", "--activation", "relu"), ["'--activation'", "'relu' is unknown"]),
    (("train", "--k", "100"), ["'--k'", "k=100 exceeds n_features=8"]),
    (("train", "--rank", "100"), ["'--rank'", "exceeds min(d_k, d_v)=16"]),
    (("train", "--k", "1.5"), ["'--k'", "got '1.5'"]),
    (("train", "--lr", "inf"), ["'--lr'", "(finite), got inf"]),
    (("train", "--lr", "1e400"), ["'--lr'", "(finite), got inf"]),
    (("train", "--steps", "none", "--epochs", "inf"), ["'--epochs'", "(finite)"]),
    (("train", "--adam-eps", "inf"), ["'--adam-eps'", "(finite)"]),
    (("train", "--dense-threshold", "2"), ["'--dense-threshold'", "> 0 and <= 1"]),
    (("train", "--dense-threshold", "-1"), ["'--dense-threshold'", "dense_threshold=-1"]),
    (("train", "--encoder-bias-init", "nan"), ["'--encoder-bias-init'", "not finite"]),
    (("train", "--read-weight", "2"), ["'--read-weight'", ">= 0 and <= 1"]),
    (("train", "--activation", "jumprelu", "--jumprelu-init-threshold", "inf"), ["'--jumprelu-init-threshold'", "(finite)"]),
    # replace-test
    (("replace-test", "-no:--sae"), ["Missing option '--sae'"]),
    (("replace-test", "--sae", "TINY/no-sae"), ["'--sae'", "is not a folder"]),
    (("replace-test", "--site", "1:9"), ["'--site'", "head 9 is outside layer 1's 2 value heads"]),
    (("replace-test", "--site", "abc"), ["'--site'", "expected LAYER:HEAD"]),
    (("replace-test", "--kl-position", "first"), ["'--kl-position'", "'last', 'next', 'mean_from_t'"]),
    (("replace-test", "--features", "99"), ["features names [99], but the SAE has 8 features"]),
    (("replace-test", "--features", "-1"), ["'--features'", "features=-1 is out of range"]),
    (("replace-test", "--floor-multiple", "-1"), ["'--floor-multiple'", "a number >= 0"]),
    (("replace-test", "--floor-multiple", "nan"), ["'--floor-multiple'", "not finite"]),
    (("replace-test", "--n-passages", "0"), ["'--n-passages'"]),
    # attribute
    (("attribute", "--epsilons", "nan"), ["'--epsilons'", "'nan' is not a finite number"]),
    (("attribute", "--epsilons", "0.1,inf"), ["'--epsilons'", "'inf' is not a finite number"]),
    (("attribute", "--epsilons", "1e400"), ["'--epsilons'", "not a finite number"]),
    (("attribute", "--atoms", "top:0"), ["'--atoms'", "top:N needs N >= 1"]),
    (("attribute", "--atoms", "-1"), ["'--atoms'", "[0, 8)"]),
    (("attribute", "--atoms", "1.5"), ["'--atoms'", "'1.5' is not an integer"]),
    (("attribute", "--horizons", "-1"), ["'--horizons'", "horizons=-1"]),
    (("attribute", "--target-ranks", "0"), ["'--target-ranks'", "target_ranks=0"]),
    (("attribute", "--target-ranks", "500"), ["target_ranks=[500]", "vocabulary size 128"]),
    (("attribute", "--t0", "-1"), ["'--t0'", ">= 0 or 'none'"]),
    (("attribute", "--t0", "100"), ["'--passage-len'", "t0 >= 100"]),
    # steer
    (("steer", "--magnitudes", "nan"), ["'--magnitudes'", "not a finite number"]),
    (("steer", "--magnitudes", "inf"), ["'--magnitudes'", "not a finite number"]),
    (("steer", "--targets", "99999"), ["'--targets'", "outside the vocabulary (0..127)"]),
    (("steer", "--targets", "zzzq"), ["'--targets'", "maps to the unknown token"]),
    (("steer", "--end-offset", "-1"), ["'--end-offset'", ">= 0"]),
    (("steer", "--n-consecutive", "20"), ["cannot hold 20 install positions"]),
    (("steer", "--targets-per-stratum", "0"), ["'--targets-per-stratum'", ">= 1"]),
    (("steer", "--site", "3:0"), ["'--site'", "layer 3 is not a recurrent layer"]),
    (("steer", "--key-side", "next_query"), ["'--key-side'", "end_offset >= 1"]),
    # others
    (("zoo", "path", ""), ["'' is not a writelens zoo model"]),
    (("frobnicate",), ["No such command 'frobnicate'"]),
]


@pytest.mark.parametrize("args, needles", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_argument_exits_2_with_a_message(tiny, tmp_path, args, needles):
    res = _invoke(tiny, tmp_path, args[0], list(args[1:]))
    assert_cli_refused(res, needles, tmp_path / "o")


def test_duplicate_sites_are_extracted_once(tiny, tmp_path):
    res = _invoke(tiny, tmp_path, "extract", ["--sites", "1:0,1:0"])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "o").glob("L*_H*")] == ["L1_H0"]
