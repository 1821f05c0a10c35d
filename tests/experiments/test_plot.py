"""Plots build from real (tiny) results, feature cards hold what they promise, HTML is standalone."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch
from models import word_tokenizer

from writelens import plot
from writelens.experiments.features import FeatureCard, feature_card
from writelens.experiments.install import InstallOptions, install_steering
from writelens.experiments.logit_attribution import AttributionOptions, attribution
from writelens.experiments.replacement import ReplacementOptions, replacement_test

from .helpers import lens, passages, sae


@pytest.fixture(scope="module")
def results():
    ids = passages(3, 20)
    rep = replacement_test(lens(), sae(), (1, 0), ids, ReplacementOptions(max_firings=20, progress=False))
    rep2 = replacement_test(lens(), sae(), (2, 1), ids, ReplacementOptions(max_firings=20, progress=False))
    att = attribution(lens(), sae(), (2, 1), ids, [1, 2], [0.1, 1.0], AttributionOptions(horizons=(1, 2),
                                                                                         progress=False))
    ins = install_steering(lens(), (2, 0), passages(2, 12), options=InstallOptions(
        strata=((1, 10), (10, 100)), magnitudes=(3.0,), max_new_tokens=4, progress=False))
    return rep, rep2, att, ins


def test_figures(results, tmp_path):
    rep, rep2, att, ins = results
    figs = {
        "scatter": plot.kl_scatter(rep), "scatter_random": plot.kl_scatter(rep, against="random"),
        "density": plot.kl_ratio_density(rep), "strip": plot.win_rate_strip([rep, rep2]),
        "attr": plot.attribution_scatter(att), "attr3": plot.attribution_scatter(att, "three_factor"),
        "attr_lin": plot.attribution_scatter(att, "linearised"),
        "install": plot.install_bars(ins), "dose": plot.install_dose(ins),
    }
    for fig in figs.values():
        assert isinstance(fig, go.Figure) and len(fig.data) >= 1
    assert figs["scatter"].layout.xaxis.type == "log"
    assert sum(len(t.x) for t in figs["scatter"].data[:2]) == 20
    assert "R² = " in figs["attr"].layout.title.text
    assert [b.name for b in figs["install"].data] == ["native", "edited"]
    path = plot.save_html(figs["scatter"], tmp_path / "a" / "scatter.html")
    text = path.read_text()
    assert "<html>" in text and len(text) > 1_000_000 and "<script src=" not in text  # plotly.js embedded
    report = plot.save_report(figs, tmp_path / "report.html")
    assert report.read_text().count("<h2>") == len(figs)


def test_feature_card():
    ids = passages(3, 20)
    tok = word_tokenizer()
    card = feature_card(lens(), sae(), (1, 0), ids, 5, tokenizer=tok, n_contexts=4, window=5, progress=False)
    assert len(card.contexts) <= 4 and len(card.promoted) == 10
    acts = [c.activation for c in card.contexts]
    assert acts == sorted(acts, reverse=True) and acts[0] == pytest.approx(max(card.activations))
    for c in card.contexts:
        assert c.tokens[c.highlight] == tok.decode([int(ids[c.passage, c.position])])
    scores = [p[2] for p in card.promoted]
    assert scores == sorted(scores, reverse=True) and card.suppressed[0][2] <= scores[-1]
    assert FeatureCard.from_json(card.to_json()).to_dict() == card.to_dict()
    fig = plot.feature_card(card)
    assert isinstance(fig, go.Figure) and "[" in fig.data[0].cells.values[2][0]
    with torch.no_grad():
        assert 0 <= card.firing_rate <= 1
