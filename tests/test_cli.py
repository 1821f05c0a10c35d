"""The CLI, through typer's runner: help, zoo, training from extracted shards, bad arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest
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


# ---- the experiment commands: replace-test, attribute, steer ------------------------------------------------------

SITE = "1:0"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny random Qwen3.5 (layers [lin, lin, lin, full], 2 value heads of 16 x 16) with a word tokenizer,
    a text corpus in its vocabulary, a matrix SAE and a flat SAE of its 16 x 16 states, and an 8 x 8 SAE."""
    from models import qwen35, word_tokenizer

    from writelens.sae import BilinearSAE, FlatSAE

    root = tmp_path_factory.mktemp("cli")
    qwen35(layers=4, hk=1, hv=2).save_pretrained(root / "model")
    word_tokenizer().save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    (root / "corpus.txt").write_text(" ".join(f"w{int(i)}" for i in torch.randint(3, 128, (2000,), generator=g)))
    sae = BilinearSAE(d_k=16, d_v=16, n_features=32, k=4, seed=0)
    sae.cfg.metadata.update(layer=1, head=0)
    sae.save(root / "sae")
    FlatSAE(d_k=16, d_v=16, n_features=32, k=4, seed=1).save(root / "flat")
    BilinearSAE(d_k=8, d_v=8, n_features=16, k=2, seed=0).save(root / "sae8")
    return root


def _common(tiny, *args):
    return ["--model", str(tiny / "model"), "--corpus", str(tiny / "corpus.txt"), *args]


def test_help_lists_experiment_commands_and_their_options():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for name in ("extract", "train", "replace-test", "attribute", "steer", "zoo"):
        assert name in res.output
    expected = {
        "replace-test": ["--model", "--sae", "--site", "--corpus", "--n-passages", "--passage-len", "--out",
                         "--flat-sae", "--kl-position", "[last|next|mean_from_t]", "--features", "<int,...|none>",
                         "--max-firings", "--n-bootstrap", "cluster-bootstrap resamples", "--batch-rows",
                         "edited rows per forward", "Also picks the corpus passages", "--progress / --no-progress"],
        "attribute": ["--atoms", "top:N", "--epsilons", "--horizons", "eval positions t = t0 + h", "--target-ranks",
                      "[absolute|write_norm]", "--t0", "--min-t0", "t0 draws"],
        "steer": ["--prompts-from", "--n-prompts", "--prompt-len", "--targets", "--strata", "<lo:hi,...>",
                  "1:10,10:100,100:1000,1000:10000", "--magnitudes", "1.5,3,6", "--key-side", "[key|next_query]",
                  "--n-consecutive", "consecutive install positions", "--end-offset", "greedy continuation length"],
        "train": ["--adam-betas", "0.9,0.999", "--steps", "<int|none>", "--lr-min", "floor of the cosine decay"],
    }
    for name, needles in expected.items():
        res = runner.invoke(app, [name, "--help"])
        assert res.exit_code == 0, res.output
        text = " ".join(res.output.split())  # help lines wrap
        missing = [n for n in needles if n not in text]
        assert not missing, (name, missing)


def test_replace_test_end_to_end(tiny, tmp_path):
    from writelens.experiments.replacement import ReplacementResult

    out = tmp_path / "rt"
    res = runner.invoke(app, ["replace-test", *_common(tiny, "--sae", str(tiny / "sae"), "--site", SITE,
                                                       "--flat-sae", str(tiny / "flat"), "--n-passages", "4",
                                                       "--passage-len", "16", "--max-firings", "24",
                                                       "--n-bootstrap", "100", "--kl-position", "mean_from_t",
                                                       "--out", str(out))])  # progress on: the CLI default
    assert res.exit_code == 0, res.output
    assert {"result.json", "summary.json", "kl_scatter.html"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "replace-test" and summary["site"] == "L1H0" and summary["passages"] == [4, 16]
    assert 0 < summary["n_firings"] <= 24 and 0.0 <= summary["win_rate"] <= 1.0
    assert summary["kl_position"] == "mean_from_t" and summary["flat_svd_win_rate"] is not None
    result = ReplacementResult.from_json(out / "result.json")
    assert len(result.kl_atom) == summary["n_firings"] and len(result.kl_flat_svd) == summary["n_firings"]
    assert result.options.baseline == "flat_svd" and min(result.kl_delete) >= 0.0
    # the site defaults to the layer / head the SAE records; a feature list restricts the firings
    res = runner.invoke(app, ["replace-test", *_common(tiny, "--sae", str(tiny / "sae"), "--n-passages", "2",
                                                       "--passage-len", "12", "--features", "3,5,7,11,13",
                                                       "--n-bootstrap", "50", "--no-progress",
                                                       "--out", str(tmp_path / "rt2"))])
    assert res.exit_code == 0, res.output
    again = ReplacementResult.from_json(tmp_path / "rt2" / "result.json")
    assert (again.layer, again.head) == (1, 0) and again.options.features == [3, 5, 7, 11, 13]
    assert set(again.feature) <= {3, 5, 7, 11, 13}


def test_attribute_end_to_end_with_comma_lists(tiny, tmp_path):
    from writelens.experiments.logit_attribution import AttributionResult

    out = tmp_path / "at"
    res = runner.invoke(app, ["attribute", *_common(tiny, "--sae", str(tiny / "sae"), "--site", SITE,
                                                    "--n-passages", "2", "--passage-len", "16", "--atoms", "top:3",
                                                    "--epsilons", "0.01,-0.01", "--horizons", "1,2",
                                                    "--target-ranks", "1,3", "--no-progress", "--out", str(out))])
    assert res.exit_code == 0, res.output
    assert {"result.json", "summary.json", "attribution_scatter.html"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    result = AttributionResult.from_json(out / "result.json")
    assert result.options.horizons == (1, 2) and result.options.target_ranks == (1, 3)
    assert result.epsilons == [0.01, -0.01] and len(summary["atoms"]) == 3 == summary["n_atoms"]
    assert summary["n_points"] == 2 * 3 * 2 * 2 * 2  # passages x atoms x eps x horizons x ranks
    for key in ("r2_exact", "r2_linearised", "r2_three_factor"):
        assert isinstance(summary[key], float) and np.isfinite(summary[key]), key
    assert summary["r2_linearised"] > 0.9  # first order in ε = 0.01 through a tiny random model
    # explicit feature ids
    res = runner.invoke(app, ["attribute", *_common(tiny, "--sae", str(tiny / "sae"), "--n-passages", "1",
                                                    "--passage-len", "16", "--atoms", "0,5", "--epsilons", "0.1",
                                                    "--horizons", "0,3", "--no-progress",
                                                    "--out", str(tmp_path / "at2"))])
    assert res.exit_code == 0, res.output
    assert AttributionResult.from_json(tmp_path / "at2" / "result.json").atoms == [0, 5]


def test_steer_end_to_end(tiny, tmp_path):
    from writelens.experiments.install import InstallResult

    out = tmp_path / "st"
    res = runner.invoke(app, ["steer", "--model", str(tiny / "model"), "--site", SITE, "--prompts-from",
                              str(tiny / "corpus.txt"), "--n-prompts", "2", "--prompt-len", "12", "--strata",
                              "1:5,5:50", "--magnitudes", "0,20", "--max-new-tokens", "4", "--no-progress",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert {"result.json", "summary.json", "install.html"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    result = InstallResult.from_json(out / "result.json")
    assert result.options.strata == ((1, 5), (5, 50)) and result.options.magnitudes == (0.0, 20.0)
    assert summary["n_trials"] == 2 * 2 * 2 * 2 == len(result.prompt)  # prompts x strata x targets x magnitudes
    for i, m in enumerate(result.magnitude):
        if m == 0.0:
            assert result.generated[i] == result.native_generated[i]
    assert summary["inclusion_edited[1-5@m0]"] == summary["inclusion_native[1-5@m0]"]
    # explicit targets: token ids and single-token words
    res = runner.invoke(app, ["steer", "--model", str(tiny / "model"), "--site", SITE, "--prompts-from",
                              str(tiny / "corpus.txt"), "--n-prompts", "1", "--prompt-len", "8", "--targets",
                              "w7,9", "--magnitudes", "3", "--max-new-tokens", "2", "--no-progress",
                              "--out", str(tmp_path / "st2")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "st2" / "summary.json").read_text())["targets"] == [7, 9]


@pytest.mark.parametrize("args, needles", [
    (["replace-test", "--site", "1-0"], ["--site", "LAYER:HEAD"]),
    (["replace-test", "--site", "3:0"], ["--site", "not a recurrent layer"]),
    (["replace-test", "--site", "1:0", "--kl-position", "middle"], ["--kl-position", "'middle' is not one of",
                                                                     "'mean_from_t'"]),
    (["replace-test", "--site", "1:0", "--baseline", "flat_svd"], ["--baseline", "--flat-sae"]),
    (["replace-test", "--site", "1:0", "--max-firings", "many"], ["--max-firings", "an integer >= 1 or 'none'"]),
    (["replace-test", "--site", "1:0", "--sae8"], ["--sae", "8x8", "16x16", "--layer 1 --head 0"]),
    (["attribute", "--site", "1:0", "--horizons", "1,x"], ["--horizons", "comma list of integers", "'x'"]),
    (["attribute", "--site", "1:0", "--epsilons", "0.1,abc"], ["--epsilons", "comma list of numbers", "'abc'"]),
    (["attribute", "--site", "1:0", "--epsilons", "0.1,,2"], ["--epsilons", "comma list of numbers"]),
    (["attribute", "--site", "1:0", "--atoms", "99"], ["--atoms", "[0, 32)", "99"]),
    (["attribute", "--site", "1:0", "--horizons", "8,16"], ["--passage-len", "use --passage-len 21"]),
    (["attribute", "--site", "1:0", "--atoms", "top:x"], ["--atoms", "top:N"]),
    (["attribute", "--site", "1:0", "--epsilon-mode", "relative"], ["--epsilon-mode", "'absolute'",
                                                                    "'write_norm'"]),
    (["steer", "--site", "1:0", "--strata", "10"], ["--strata", "pairs lo:hi", "'10'"]),
    (["steer", "--site", "1:0", "--strata", "5:1"], ["--strata", "1 <= lo < hi"]),
    (["steer", "--site", "1:0", "--targets", "w7 w8"], ["--targets", "2 tokens"]),
    (["steer", "--site", "1:0", "--key-side", "query"], ["--key-side", "'next_query'"]),
])
def test_bad_arguments_exit_2(tiny, tmp_path, args, needles):
    command, rest = args[0], args[1:]
    sae = tiny / ("sae8" if "--sae8" in rest else "sae")
    rest = [a for a in rest if a != "--sae8"]
    full = [command, "--model", str(tiny / "model"), "--out", str(tmp_path / "o"), "--no-progress", *rest]
    if command != "steer":
        full += ["--sae", str(sae), "--corpus", str(tiny / "corpus.txt"), "--passage-len", "16", "--n-passages", "1"]
    else:
        full += ["--prompts-from", str(tiny / "corpus.txt"), "--prompt-len", "8", "--n-prompts", "1"]
    res = runner.invoke(app, full)
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    missing = [n for n in needles if n not in text]
    assert not missing, (missing, res.output)
    assert not (tmp_path / "o" / "summary.json").exists()


def test_missing_model_folder_unknown_corpus_and_extract_choice_exit_2(tiny, tmp_path):
    res = runner.invoke(app, ["steer", "--model", str(tmp_path / "nothing"), "--site", SITE, "--out",
                              str(tmp_path / "o")])
    assert res.exit_code == 2 and "--model" in res.output and "is not a folder" in res.output
    res = runner.invoke(app, ["steer", "--model", str(tiny / "model"), "--site", SITE, "--prompts-from", "psalms",
                              "--no-progress", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--prompts-from" in res.output and "'psalms'" in res.output
    res = runner.invoke(app, ["extract", "--model", str(tiny / "model"), "--out", str(tmp_path / "o"), "--target",
                              "everything"])
    assert res.exit_code == 2 and "'everything' is not one of" in res.output and "'writes'" in res.output


def test_experiments_on_the_mamba2_zoo_model(tmp_path):
    """replace-test and attribute run unchanged on the shipped Mamba-2 (a random 64 x 64 rank-1 SAE at L4 H0)."""
    from writelens.sae import BilinearSAE

    BilinearSAE(d_k=64, d_v=64, n_features=32, k=4, seed=0).save(tmp_path / "sae")
    common = ["--model", "mamba2-tiny", "--sae", str(tmp_path / "sae"), "--site", "4:0", "--corpus", "heldout",
              "--n-passages", "2", "--passage-len", "24", "--no-progress"]
    res = runner.invoke(app, ["replace-test", *common, "--max-firings", "6", "--out", str(tmp_path / "rt")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "rt" / "summary.json").read_text())["n_firings"] == 6
    res = runner.invoke(app, ["attribute", *common, "--atoms", "top:2", "--epsilons", "0.01,-0.01",
                              "--horizons", "0,2", "--out", str(tmp_path / "at")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "at" / "summary.json").read_text())
    assert summary["n_points"] == 2 * 2 * 2 * 2 and summary["r2_linearised"] > 0.9


def test_help_and_zoo_list_import_no_torch():
    """`writelens --help`, every subcommand's --help and `zoo list` build without torch / transformers / nnsight
    (what keeps them well under a second; the commands import them when they run)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from writelens.cli import app\n"
        "r = CliRunner()\n"
        "for args in (['--help'], ['zoo', 'list'], ['zoo', '--help'], ['extract', '--help'], ['train', '--help'],\n"
        "             ['replace-test', '--help'], ['attribute', '--help'], ['steer', '--help']):\n"
        "    out = r.invoke(app, args)\n"
        "    assert out.exit_code == 0, (args, out.output)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'nnsight', 'scipy') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout
