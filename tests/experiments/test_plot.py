"""Plots build from real (tiny) results, feature cards hold what they promise, HTML is standalone; the report reads
on its own (summary table, a text above every figure) and draws in a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import plotly.graph_objects as go
import pytest
import torch
from models import word_tokenizer

from writelens import plot, report
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
    page = report.save_report(figs, tmp_path / "report.html")  # a bare {title: figure} mapping still works
    assert page.read_text().count("<h2>") == len(figs)


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


def _sections(results):
    rep, rep2, att, ins = results
    return [report.scatter_section(rep), report.scatter_section(rep, "random"), report.ratio_section(rep),
            report.floor_section(rep), report.win_rate_section([rep, rep2]),
            *(report.attribution_section(att, p) for p in ("exact", "linearised", "three_factor")),
            report.install_section(ins), report.dose_section(ins)]


def test_report_reads_on_its_own(results, tmp_path):
    rep, rep2, att, ins = results
    heads = [report.replacement_headline("replacement win rate", rep, "atom beats delete"),
             report.population_headline(rep), report.attribution_headline(att, "linearised", at=1.0),
             report.install_headline(ins, "1-10", 3.0)]
    w = rep.stats.win_rate
    assert heads[0].line() == (f"replacement win rate: {w.estimate:.3f} [{w.lo:.3f}, {w.hi:.3f}] 95% Wilson CI "
                               f"(atom beats delete; site L1H0, scale coefficient, KL at last, timing with_read, "
                               f"n = 20 firings, {rep.floor.n_ties} ties below 10x the null-edit floor left out)")
    lin = att.stats_linearised.r2_by_epsilon
    assert heads[2].value.startswith(f"{lin['1.0' if '1.0' in lin else '1']:.3f} at eps = 1;") and "by eps 0.1: " in heads[2].value
    assert report.install_headline(ins, "100-1000", 3.0) is None  # a cell the run does not have
    if not rep.stats.population.n_atoms:  # no NaN in the table: a population that is not there says so
        assert heads[1].value == "not measured" and "no atom fired at least" in heads[1].condition
    sections = _sections(results)
    for sec in sections:
        assert sec.plotted and sec.read and sec.predicts and sec.found and isinstance(sec.figure, go.Figure)
    assert f"{w.estimate:.1%} of the {w.n} decided firings" in sections[0].found  # computed from the result
    assert f"R² {att.stats_exact.r2:.3f} pooled" in sections[5].found
    page = report.save_report(sections, tmp_path / "report.html", title="t", headlines=heads, intro="tiny run")
    text = page.read_text()
    assert text.count("<section>") == len(sections) and text.count("<tr><td>") == len(heads)
    assert text.count("This run</dt>") == len(sections) and "tiny run" in text
    assert len(re.findall(r"plotly\.js v\d", text)) == 1  # plotly.js embedded once, for every figure


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


# records console.error calls and uncaught errors on <html data-wl-errors>, which --dump-dom then shows
_LISTEN = ("<script>window.__wl=[];function __wlr(m){__wl.push(String(m));document.documentElement.setAttribute("
           "'data-wl-errors',JSON.stringify(__wl))}window.addEventListener('error',e=>__wlr(e.message));"
           "const __ce=console.error;console.error=(...a)=>{__wlr(a.join(' '));__ce(...a)};</script>")


@pytest.mark.skipif(_browser() is None, reason="no Chromium (Debian: apt-get install chromium)")
def test_report_draws_in_a_headless_browser(results, tmp_path):
    sections = _sections(results)
    page = report.save_report(sections, tmp_path / "report.html", headlines=[
        report.replacement_headline("replacement win rate", results[0], "atom beats delete")])
    probe = tmp_path / "probe.html"  # the page itself, with the error listener first in <head>
    probe.write_text(page.read_text().replace("<head>", "<head>" + _LISTEN, 1), encoding="utf-8")
    done = subprocess.run([_browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
                           probe.as_uri()], capture_output=True, text=True, timeout=180)
    dom = done.stdout
    assert "<body" in dom, done.stderr[-2000:]
    errors = re.search(r'data-wl-errors="([^"]*)"', dom)
    assert errors is None or json.loads(errors.group(1).replace("&quot;", '"')) == []
    for i in range(len(sections)):  # plotly marks a div it drew js-plotly-plot and fills it with its SVG layers
        div = re.search(rf'<div[^>]*id="figure-{i}"[^>]*>', dom)
        assert div is not None and "js-plotly-plot" in div.group(0), f"figure {i} ({sections[i].title}) not drawn"
    assert dom.count('class="main-svg"') >= len(sections)
