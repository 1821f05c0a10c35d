"""Plots of the experiments' results (plotly). Every function returns a ``plotly.graph_objects.Figure``;
:func:`save_html` writes one as a standalone HTML file (plotly.js embedded, works offline), :func:`save_report` writes
several into one page.

==============================  ======================================================================================
``kl_scatter``                  KL_atom vs KL_delete (or random / flat_svd) per firing, log-log, with y = x
``kl_ratio_density``            density of log10(KL_cond / KL_atom) per control condition
``win_rate_strip``              win rate (Wilson CI) per layer, one point per head
``attribution_scatter``         predicted vs measured logit change, y = x, R² in the title
``install_bars``                target inclusion native vs edited per stratum (Wilson CIs)
``install_dose``                edited inclusion vs magnitude per stratum
``feature_card``                top contexts (firing token highlighted), activation histogram, promoted tokens
==============================  ======================================================================================
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["kl_scatter", "kl_ratio_density", "win_rate_strip", "attribution_scatter", "install_bars", "install_dose",
           "feature_card", "save_html", "save_report"]

_COLORS = {"delete": "#d62728", "random": "#7f7f7f", "flat_svd": "#9467bd", "atom": "#1f77b4"}


def _positive(x: Sequence[float], floor: float) -> np.ndarray:
    a = np.asarray([np.nan if v is None else v for v in x], dtype=np.float64)
    return np.where(a > 0, a, floor)


def _kl_columns(result) -> dict[str, list[float]]:
    cols = {"delete": result.kl_delete, "random": result.kl_random}
    if getattr(result, "kl_flat_svd", None):
        cols["flat_svd"] = result.kl_flat_svd
    return cols


def kl_scatter(result, against: str = "delete") -> go.Figure:
    """Per-firing KL of the atom (x) against a control (y), log-log; points above y = x are wins of the atom."""
    y_raw = _kl_columns(result)[against]
    x_all = np.asarray(result.kl_atom + list(y_raw), dtype=np.float64)
    floor = float(np.nanmin(x_all[x_all > 0])) / 10 if (x_all > 0).any() else 1e-12
    x, y = _positive(result.kl_atom, floor), _positive(y_raw, floor)
    win = x < y
    hover = [f"passage {p}, pos {t}, feature {f}, atom {a}" for p, t, f, a in
             zip(result.passage, result.position, result.feature, result.atom, strict=False)]
    fig = go.Figure()
    for mask, name, color in ((win, "atom wins", _COLORS["atom"]), (~win, f"{against} wins", _COLORS[against])):
        fig.add_trace(go.Scattergl(x=x[mask], y=y[mask], mode="markers", name=name, text=np.asarray(hover)[mask],
                                   marker=dict(size=5, opacity=0.6, color=color)))
    lo, hi = float(min(x.min(), y.min())) if x.size else floor, float(max(x.max(), y.max())) if x.size else 1.0
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line=dict(color="black", dash="dash")))
    rate = float(win.mean()) if win.size else float("nan")
    fig.update_layout(
        title=f"L{result.layer}H{result.head}: KL atom vs {against} (n={len(x)}, atom < {against}: {rate:.1%})",
        xaxis=dict(type="log", title="KL(native ‖ atom)"), yaxis=dict(type="log", title=f"KL(native ‖ {against})"),
        template="plotly_white")
    return fig


def kl_ratio_density(result, bins: int = 60) -> go.Figure:
    """Histogram densities of log10(KL_cond / KL_atom) for each control (> 0: the atom disturbs less)."""
    fig = go.Figure()
    atom = np.asarray(result.kl_atom, dtype=np.float64)
    for name, col in _kl_columns(result).items():
        c = np.asarray(col, dtype=np.float64)
        ok = (atom > 0) & (c > 0)
        r = np.log10(c[ok] / atom[ok])
        fig.add_trace(go.Histogram(x=r, nbinsx=bins, histnorm="probability density", name=f"{name} / atom",
                                   opacity=0.55, marker_color=_COLORS[name]))
    fig.add_vline(x=0, line_dash="dash", line_color="black")
    fig.update_layout(barmode="overlay", template="plotly_white", xaxis_title="log10(KL_cond / KL_atom)",
                      yaxis_title="density", title=f"L{result.layer}H{result.head}: per-firing KL ratios")
    return fig


def win_rate_strip(results: Sequence[Any]) -> go.Figure:
    """Win rate (atom < delete) with Wilson 95% CIs: x = layer, one point per (layer, head) result."""
    fig = go.Figure()
    layers = sorted({r.layer for r in results})
    for layer in layers:
        rs = [r for r in results if r.layer == layer]
        n = len(rs)
        xs = [layers.index(layer) + (i - (n - 1) / 2) * 0.08 for i in range(n)]
        w = [r.stats.win_rate for r in rs]
        fig.add_trace(go.Scatter(
            x=xs, y=[c.estimate for c in w], mode="markers", name=f"L{layer}",
            error_y=dict(type="data", symmetric=False, array=[c.hi - c.estimate for c in w],
                         arrayminus=[c.estimate - c.lo for c in w]),
            text=[f"head {r.head}, n={r.stats.n_firings}" for r in rs], marker=dict(size=9)))
    fig.add_hline(y=0.5, line_dash="dot", line_color="gray")
    fig.update_layout(template="plotly_white", title="Win rate (KL_atom < KL_delete) per layer / head",
                      xaxis=dict(tickvals=list(range(len(layers))), ticktext=[f"L{x}" for x in layers], title="layer"),
                      yaxis=dict(range=[0, 1], title="win rate (Wilson 95% CI)"))
    return fig


def attribution_scatter(result, predictor: str = "exact") -> go.Figure:
    """Measured logit change (y) vs the ``exact`` (direct path), ``linearised`` (whole network, first order) or
    ``three_factor`` prediction (x), coloured by ε, with y = x."""
    pred = np.asarray(getattr(result, predictor), dtype=np.float64)
    meas = np.asarray(result.measured, dtype=np.float64)
    stats = getattr(result, f"stats_{predictor}")
    fig = go.Figure()
    eps = np.asarray(result.epsilon)
    for e in sorted(set(result.epsilon)):
        k = eps == e
        fig.add_trace(go.Scattergl(x=pred[k], y=meas[k], mode="markers", name=f"ε = {e:g}",
                                   marker=dict(size=5, opacity=0.7)))
    both = np.concatenate([pred, meas]) if pred.size else np.zeros(2)
    lo, hi = float(both.min()), float(both.max())
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line=dict(color="black", dash="dash")))
    label = {"exact": "exact in-layer + direct path", "linearised": "exact in-layer + whole-network Jacobian",
             "three_factor": "three-factor G·⟨u,q̂⟩·⟨W_U,W_O w⟩"}[predictor]
    fig.update_layout(template="plotly_white", xaxis_title=f"predicted Δlogit ({label})", yaxis_title="measured Δlogit",
                      title=f"L{result.layer}H{result.head} attribution: R² = {stats.r2:.3f} (no fitted parameters), "
                            f"sign agreement {stats.sign_agreement.estimate:.1%}")
    return fig


def _default_magnitude(result) -> float:
    mags = list(result.options.magnitudes)
    return 3.0 if 3.0 in mags else mags[0]


def install_bars(result, magnitude: float | None = None) -> go.Figure:
    """Target inclusion in the greedy continuation, native vs edited, per stratum (Wilson 95% CIs)."""
    m = _default_magnitude(result) if magnitude is None else magnitude
    cells = [c for c in result.cells if abs(c.magnitude - m) < 1e-9]
    fig = go.Figure()
    for name, attr, color in (("native", "inclusion_native", "#7f7f7f"), ("edited", "inclusion_edited", "#2ca02c")):
        iv = [getattr(c, attr) for c in cells]
        fig.add_trace(go.Bar(x=[f"rank {c.stratum}" for c in cells], y=[i.estimate for i in iv], name=name,
                             marker_color=color,
                             error_y=dict(type="data", symmetric=False, array=[i.hi - i.estimate for i in iv],
                                          arrayminus=[i.estimate - i.lo for i in iv])))
    fig.update_layout(barmode="group", template="plotly_white", yaxis=dict(range=[0, 1], title="target inclusion"),
                      title=f"L{result.layer}H{result.head} install (m = {m:g}, {result.options.n_consecutive} "
                            f"positions, {result.options.max_new_tokens} greedy tokens)")
    return fig


def install_dose(result) -> go.Figure:
    """Edited target inclusion vs install magnitude m, one line per stratum."""
    fig = go.Figure()
    for lab in dict.fromkeys(c.stratum for c in result.cells):
        cs = sorted((c for c in result.cells if c.stratum == lab), key=lambda c: c.magnitude)
        fig.add_trace(go.Scatter(x=[c.magnitude for c in cs], y=[c.inclusion_edited.estimate for c in cs],
                                 mode="lines+markers", name=f"rank {lab}"))
    fig.update_layout(template="plotly_white", xaxis_title="magnitude m", yaxis=dict(range=[0, 1], title="inclusion"),
                      title=f"L{result.layer}H{result.head} install dose sweep")
    return fig


def _context_html(ctx) -> str:
    parts = []
    for i, tok in enumerate(ctx.tokens):
        t = html.escape(tok).replace("\n", "↵")
        parts.append(f"<b><span style='color:crimson'>[{t}]</span></b>" if i == ctx.highlight else t)
    return "".join(parts)


def feature_card(card) -> go.Figure:
    """A feature card: top-activating contexts (firing token in brackets, highlighted), activation histogram, and
    the atom's most promoted tokens along the direct path."""
    fig = make_subplots(rows=2, cols=2, specs=[[{"type": "table", "colspan": 2}, None], [{}, {}]],
                        row_heights=[0.55, 0.45], vertical_spacing=0.08,
                        subplot_titles=("Top-activating contexts", "Activation histogram (nonzero)",
                                        "Promoted tokens ⟨W_U, W_O^h w⟩"))
    fig.add_trace(go.Table(
        columnwidth=[1, 1, 8],
        header=dict(values=["activation", "passage:pos", "context"], align="left"),
        cells=dict(values=[[f"{c.activation:.3g}" for c in card.contexts],
                           [f"{c.passage}:{c.position}" for c in card.contexts],
                           [_context_html(c) for c in card.contexts]], align="left")), row=1, col=1)
    fig.add_trace(go.Histogram(x=card.activations, nbinsx=40, marker_color="#1f77b4", showlegend=False), row=2, col=1)
    promoted = card.promoted[::-1]
    fig.add_trace(go.Bar(x=[p[2] for p in promoted], y=[html.escape(repr(p[0])) for p in promoted], orientation="h",
                         marker_color="#2ca02c", showlegend=False), row=2, col=2)
    fig.update_layout(template="plotly_white", height=800,
                      title=f"Feature {card.feature} at L{card.layer}H{card.head} — firing rate {card.firing_rate:.2%}, "
                            f"{len(card.activations)} firings")
    return fig


def save_html(fig: go.Figure, path: str | Path, plotlyjs: bool | str = True) -> Path:
    """Write ``fig`` as a standalone HTML file (plotly.js embedded, no network needed); returns the path.

    ``plotlyjs="directory"`` writes ``plotly.min.js`` once beside the file instead (many figures in one folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=plotlyjs, full_html=True)
    return path


def save_report(figures: Mapping[str, go.Figure], path: str | Path, title: str = "writelens report") -> Path:
    """Several figures on one standalone HTML page (plotly.js embedded once), each under its name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = []
    for i, (name, fig) in enumerate(figures.items()):
        div = fig.to_html(full_html=False, include_plotlyjs=(i == 0))
        body.append(f"<h2>{html.escape(name)}</h2>\n{div}")
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
                    f"<body><h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "</body></html>", encoding="utf-8")
    return path
