"""Plots of the experiments' results (plotly). Every function returns a ``plotly.graph_objects.Figure``;
:func:`save_html` writes one as a standalone HTML file (plotly.js embedded, works offline);
:func:`writelens.report.save_report` writes several into one page, each with its text.

==============================  ======================================================================================
``kl_scatter``                  KL_atom vs KL_delete (or random / flat_svd) per firing, log-log, with y = x
                                and the noise-floor band (ties in grey)
``kl_ratio_density``            density of log10(KL_cond / KL_atom) per control condition (ties left out)
``kl_histogram``                log10 KL per condition and of the null edit, with the noise floor
``erasure_histogram``           Δ log p(preferred) of the erasure test half and its null edit, floor band ±τ
``win_rate_strip``              win rate (Wilson CI) per layer, one point per head
``attribution_scatter``         predicted vs measured logit change, y = x, R² in the title
``install_bars``                target inclusion native vs edited per stratum (Wilson CIs)
``install_dose``                edited inclusion vs magnitude per stratum
``feature_card``                top contexts (firing token highlighted), activation histogram, promoted tokens
==============================  ======================================================================================
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["kl_scatter", "kl_ratio_density", "kl_histogram", "erasure_histogram", "win_rate_strip", "attribution_scatter", "install_bars", "install_dose",
           "feature_card", "save_html"]

_COLORS = {"delete": "#d62728", "random": "#7f7f7f", "flat_svd": "#9467bd", "atom": "#1f77b4", "null": "#2ca02c",
           "tie": "#bcbd22"}


def _positive(x: Sequence[float], clip: float) -> np.ndarray:
    a = np.asarray([np.nan if v is None else v for v in x], dtype=np.float64)
    return np.where(a > 0, a, clip)


def _floor(result) -> float | None:
    """The noise floor's threshold τ of a result (None for results made before floors, or without firings)."""
    floor = getattr(result, "floor", None)
    tau = None if floor is None else floor.threshold
    return tau if tau is not None and np.isfinite(tau) else None


def _ties(result, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bool [n]: the pair is a tie (both effects below the floor, or the firing is unreachable)."""
    from writelens.experiments.common import unreachable
    from writelens.experiments.floor import below_floor

    tau = _floor(result)
    if tau is None:
        return np.zeros(a.size, dtype=bool)
    opts = result.options
    unreach = unreachable(result.position, result.passage_length, opts.kl_position, opts.timing)
    return below_floor(a, tau, unreach) & below_floor(b, tau, unreach)


def _kl_columns(result) -> dict[str, list[float]]:
    cols = {"delete": result.kl_delete, "random": result.kl_random}
    if getattr(result, "kl_flat_svd", None):
        cols["flat_svd"] = result.kl_flat_svd
    return cols


def kl_scatter(result, against: str = "delete") -> go.Figure:
    """Per-firing KL of the atom (x) against a control (y), log-log; points above y = x are wins of the atom.

    With a noise floor (``result.floor``), the band below τ is shaded on both axes and firings whose two KLs both
    sit below it are drawn as ties (grey-green) and left out of the rate in the title."""
    y_raw = _kl_columns(result)[against]
    x_all = np.asarray(result.kl_atom + list(y_raw), dtype=np.float64)
    clip = float(np.nanmin(x_all[x_all > 0])) / 10 if (x_all > 0).any() else 1e-12
    x, y = _positive(result.kl_atom, clip), _positive(y_raw, clip)
    tie = _ties(result, np.asarray(result.kl_atom, dtype=np.float64), np.asarray(y_raw, dtype=np.float64))
    win = (x < y) & ~tie
    hover = [f"passage {p}, pos {t}, feature {f}, atom {a}" for p, t, f, a in
             zip(result.passage, result.position, result.feature, result.atom, strict=False)]
    fig = go.Figure()
    for mask, name, color in ((win, "atom wins", _COLORS["atom"]), (~win & ~tie, f"{against} wins", _COLORS[against]),
                              (tie, "tie (both below the floor)", _COLORS["tie"])):
        fig.add_trace(go.Scattergl(x=x[mask], y=y[mask], mode="markers", name=name, text=np.asarray(hover)[mask],
                                   marker=dict(size=5, opacity=0.6, color=color)))
    lo, hi = float(min(x.min(), y.min())) if x.size else clip, float(max(x.max(), y.max())) if x.size else 1.0
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line=dict(color="black", dash="dash")))
    tau = _floor(result)
    floor_text = ""
    if tau is not None:
        edge = max(tau, lo)
        fig.add_trace(go.Scatter(x=[lo, edge, edge, lo, lo], y=[lo, lo, edge, edge, lo], mode="lines", fill="toself",
                                 fillcolor="rgba(188,189,34,0.15)", line=dict(color=_COLORS["tie"], width=1),
                                 name=f"noise floor τ = {tau:.2g} ({result.floor.multiple:g}× null max)"))
        fig.add_vline(x=edge, line_dash="dot", line_color=_COLORS["tie"])
        fig.add_hline(y=edge, line_dash="dot", line_color=_COLORS["tie"])
        floor_text = f", {int(tie.sum())} ties excluded"
    decided = int((~tie).sum())
    rate = float(win.sum() / decided) if decided else float("nan")
    fig.update_layout(
        title=f"L{result.layer}H{result.head}: KL atom vs {against} (n={len(x)}{floor_text}, "
              f"atom < {against}: {rate:.1%})<br><sup>scale {result.options.scale}, KL at "
              f"{result.options.kl_position}, timing {result.options.timing}</sup>",
        xaxis=dict(type="log", title="KL(native ‖ atom)"), yaxis=dict(type="log", title=f"KL(native ‖ {against})"),
        template="plotly_white")
    return fig


def kl_ratio_density(result, bins: int = 60) -> go.Figure:
    """Histogram densities of log10(KL_cond / KL_atom) for each control (> 0: the atom disturbs less)."""
    fig = go.Figure()
    atom = np.asarray(result.kl_atom, dtype=np.float64)
    for name, col in _kl_columns(result).items():
        c = np.asarray(col, dtype=np.float64)
        tie = _ties(result, atom, c)
        ok = (atom > 0) & (c > 0) & ~tie
        r = np.log10(c[ok] / atom[ok])
        label = f"{name} / atom" + (f" ({int(tie.sum())} ties left out)" if tie.any() else "")
        fig.add_trace(go.Histogram(x=r, nbinsx=bins, histnorm="probability density", name=label,
                                   opacity=0.55, marker_color=_COLORS[name]))
    fig.add_vline(x=0, line_dash="dash", line_color="black")
    fig.update_layout(barmode="overlay", template="plotly_white", xaxis_title="log10(KL_cond / KL_atom)",
                      yaxis_title="density", title=f"L{result.layer}H{result.head}: per-firing KL ratios")
    return fig


def kl_histogram(result, bins: int = 60) -> go.Figure:
    """Histograms of log10 KL per condition (atom, delete, random[, flat_svd]) and of the null edit, with the noise
    floor τ as a dashed line and the band below it shaded."""
    cols = {"atom": result.kl_atom, **_kl_columns(result), "null": getattr(result, "kl_null", None) or []}
    everything = np.asarray([v for c in cols.values() for v in c if v is not None], dtype=np.float64)
    clip = float(everything[everything > 0].min()) / 10 if (everything > 0).any() else 1e-16
    fig = go.Figure()
    for name, col in cols.items():
        if len(col):
            fig.add_trace(go.Histogram(x=np.log10(_positive(col, clip)), nbinsx=bins, name=name, opacity=0.5,
                                       marker_color=_COLORS[name]))
    tau = _floor(result)
    title = f"L{result.layer}H{result.head}: KL per condition"
    if tau is not None:
        fl = result.floor
        fig.add_vrect(x0=float(np.log10(clip)), x1=float(np.log10(max(tau, clip))), fillcolor=_COLORS["tie"],
                      opacity=0.15, line_width=0)
        fig.add_vline(x=float(np.log10(max(tau, clip))), line_dash="dash", line_color="black",
                      annotation_text=f"floor τ = {tau:.2g}")
        title += (f" ({result.options.timing}, KL at {result.options.kl_position}; {fl.n_ties} of {fl.n_items} "
                  f"atom/delete ties)")
    fig.update_layout(barmode="overlay", template="plotly_white", xaxis_title="log10 KL(native ‖ edited)",
                      yaxis_title="firings", title=title)
    return fig


def erasure_histogram(result, bins: int = 40) -> go.Figure:
    """Δ log p(preferred) on the erasure test half and under the null edit, with the floor band [−τ, τ]."""
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=result.delta_logp, nbinsx=bins, name="erase", opacity=0.6,
                               marker_color=_COLORS["delete"]))
    if getattr(result, "delta_logp_null", None):
        fig.add_trace(go.Histogram(x=result.delta_logp_null, nbinsx=bins, name="null edit", opacity=0.6,
                                   marker_color=_COLORS["null"]))
    title = f"L{result.layer}H{result.head} erasure of feature {result.feature}: Δ log p(preferred)"
    floor = getattr(result, "floor", None)
    if floor is not None and np.isfinite(floor.threshold):
        fig.add_vrect(x0=-floor.threshold, x1=floor.threshold, fillcolor=_COLORS["tie"], opacity=0.25, line_width=0,
                      annotation_text=f"floor ±{floor.threshold:.2g}")
        title += f" ({floor.n_all_below} of {floor.n_items} below the floor)"
    fig.update_layout(barmode="overlay", template="plotly_white", xaxis_title="log p_erased − log p_native (nats)",
                      yaxis_title="firings", title=title)
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
