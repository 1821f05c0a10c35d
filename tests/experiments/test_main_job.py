"""The main job runs end to end (random-init model, tiny budget) and writes its summary, JSONs and figures."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

import writelens as wl
from writelens.experiments import ReplacementResult

ROOT = Path(__file__).resolve().parents[2]


HAS_RWKV7 = importlib.util.find_spec("rwkv7_hf") is not None


@pytest.mark.parametrize("model", ["gdn-tiny", "mamba2-tiny", pytest.param("rwkv7-tiny", marks=pytest.mark.skipif(
    not HAS_RWKV7, reason="rwkv7-hf not installed (extra `rwkv`)"))])
def test_main_job_quick_random(tmp_path, model):
    spec = importlib.util.spec_from_file_location("main_job", ROOT / "examples" / "main_job.py")
    job = importlib.util.module_from_spec(spec)
    sys.modules["main_job"] = job  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(job)
    summary = job.main(["--model", model, "--random", "--quick", "--out", str(tmp_path), "--no-progress"])
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["headline"]["n_firings"] == summary["headline"]["n_firings"] == 40
    lines = on_disk["headline_lines"]  # what the job prints: every figure with its condition
    assert lines[0].startswith("replacement win rate: ") and "n = 40 firings" in lines[0] and "95% Wilson CI" in lines[0]
    assert all("site L" in line for line in lines) and "at eps = 0.1 x write norm" in lines[3]
    assert f"{on_disk['headline']['n_ties']} ties below 10x the null-edit floor" in lines[0]
    assert set(on_disk["step_seconds"]) == {"load", "extract", "train", "replacement", "attribution", "install",
                                            "figures"}
    for name in ("replacement", "attribution", "install", "feature_card"):
        assert (tmp_path / f"{name}.json").is_file()
    assert ReplacementResult.from_json(tmp_path / "replacement.json").stats.n_firings == 40
    assert (tmp_path / "report.html").stat().st_size > 1_000_000
    assert len(list((tmp_path / "figures").glob("*.html"))) == 12
    # only what the report needs stays (no --keep-states): no states, no checkpoints; the final SAE loads
    assert not (tmp_path / "states").exists() and not (tmp_path / "sae" / "checkpoints").exists()
    assert wl.sae.load_sae(tmp_path / "sae" / "final").cfg.n_features == 64


def test_main_job_organism_prints_known_answers(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("main_job", ROOT / "examples" / "main_job.py")
    job = importlib.util.module_from_spec(spec)
    sys.modules["main_job"] = job
    spec.loader.exec_module(job)
    summary = job.main(["--model", "gdn-mqar", "--quick", "--out", str(tmp_path), "--no-progress"])
    printed = capsys.readouterr().out
    assert "| mechanism map | target recall drop" in printed and "16 passages" in printed
    from writelens.experiments.known_answers import KnownAnswers

    res = KnownAnswers.from_json(tmp_path / "known_answers.json")
    assert res.mechanism.located == [(0, 0, 1)] and res.table() in printed
    # every edit-based figure reaches its bar; the WriteSAE rows (100 training steps here) are all there, each with
    # its condition, and a missed one is named as such in the last line
    sae_rows = [r for r in res.rows if r.experiment.startswith("SAE")]
    assert all(r.passes for r in res.rows if r not in sae_rows)
    assert [r.experiment for r in sae_rows] == ["SAE recovery"] * 2 + ["SAE replacement"] * 3 + ["SAE attribution"]
    assert all("BilinearSAE 512 features" in r.condition for r in sae_rows[:5])
    assert res.sae_recovery is not None and res.sae_replacement is not None and res.sae_attribution is not None
    missed = [r for r in res.rows if not r.passes]
    assert summary["passes"] == (not missed)
    assert ("all figures reach their bars" in printed) == (not missed)
    if missed:
        assert f"{len(missed)} of {len(res.rows)} figures miss their bars" in printed
    # attribution on the answer logit: the linearised form is the first-order term, exact as eps -> 0
    assert sae_rows[-1].passes
