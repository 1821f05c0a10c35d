"""A report that reads on its own: every headline figure with its condition, then each plot under a short text.

:func:`save_report` writes one standalone HTML page (plotly.js embedded once, no network needed): a summary table
of :class:`Headline` rows (figure, value, interval, condition: site, ε, position, scale mode, n, ties), then one
:class:`Section` per plot with four sentences above it — what is plotted, how to read it, what the method predicts,
and what this run found (computed from the result, with its condition).

The builders (:func:`replacement_headline`, :func:`scatter_section`, …) take the experiments' result objects::

    rows = [report.replacement_headline("replacement win rate", rep, "atom beats delete")]
    report.save_report([report.scatter_section(rep), report.attribution_section(att)], "report.html", headlines=rows)

``save_report`` also takes a plain ``{title: figure}`` mapping (figures without text, as before).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from writelens import plot

__all__ = ["Headline", "Section", "replacement_headline", "population_headline", "attribution_headline",
           "install_headline", "scatter_section", "ratio_section", "floor_section", "win_rate_section", "attribution_section",
           "install_section", "dose_section", "feature_section", "save_report"]


@dataclass(frozen=True)
class Headline:
    """One row of the summary table: ``figure`` (what is measured), ``value``, ``interval`` ("" when none) and
    ``condition`` (site, scale mode, KL position, ε, n, ties: everything the value depends on)."""

    figure: str
    value: str
    interval: str
    condition: str

    def line(self) -> str:
        """The row as one printed line: ``figure: value interval (condition)``."""
        return f"{self.figure}: {self.value}{' ' + self.interval if self.interval else ''} ({self.condition})"


@dataclass(frozen=True)
class Section:
    """One plot of the report with the four sentences printed above it."""

    title: str
    figure: go.Figure
    plotted: str
    read: str
    predicts: str
    found: str


def _site(r) -> str:
    return f"L{r.layer}H{r.head}"


def _replacement_condition(r) -> str:
    o = r.options
    return (f"site {_site(r)}, scale {o.scale}, KL at {o.kl_position}, timing {o.timing}, n = {r.stats.n_firings} "
            f"firings, {r.floor.n_ties if r.floor else 0} ties below {o.floor_multiple:g}x the null-edit floor left out")


def replacement_headline(name: str, r, what: str) -> Headline:
    """The win rate of a :class:`~writelens.experiments.ReplacementResult` (atom beats delete)."""
    w = r.stats.win_rate
    return Headline(name, f"{w.estimate:.3f}", f"[{w.lo:.3f}, {w.hi:.3f}] 95% Wilson CI",
                    f"{what}; {_replacement_condition(r)}")


def population_headline(r) -> Headline:
    """The per-atom population mean win rate of a replacement result run with ``cap_per_atom``."""
    pop = r.stats.population
    if not pop.n_atoms:
        return Headline("population win rate", "not measured", "", f"site {_site(r)}: no atom fired at least "
                        f"{pop.min_firings} times in this run ({r.stats.n_firings} firings)")
    return Headline("population win rate", f"{pop.mean:.3f}", f"[{pop.lo:.3f}, {pop.hi:.3f}] 95% t interval over atoms",
                    f"site {_site(r)}, {pop.n_atoms} atoms with >= {pop.min_firings} firings, {pop.n_firings} firings, "
                    f"{r.floor.n_ties if r.floor else 0} ties left out")


def _eps_items(stats) -> list[tuple[str, float]]:
    return sorted(stats.r2_by_epsilon.items(), key=lambda kv: float(kv[0]))


def attribution_headline(att, predictor: str = "linearised", at: float | None = None) -> Headline:
    """R² of one attribution predictor at ε = ``at`` (default, or when not run: the smallest ε), with R² per ε and
    pooled in the condition."""
    stats = getattr(att, f"stats_{predictor}")
    items = _eps_items(stats)
    chosen = [kv for kv in items if at is not None and float(kv[0]) == at]
    e0, r0 = (chosen or items or [("nan", float("nan"))])[0]
    unit = " x write norm" if att.options.epsilon_mode == "write_norm" else ""
    label = {"linearised": "linearised direct path", "exact": "exact direct path", "three_factor": "three-factor"}
    return Headline(f"attribution R^2 ({label[predictor]})",
                    f"{r0:.3f} at eps = {float(e0):g}{unit}; by eps " + ", ".join(f"{float(e):g}: {v:.3f}" for e, v in items),
                    "", f"site {_site(att)}, {len(items)} eps x {len(att.atoms)} atoms x {len(set(att.passage))} passages; "
                        f"R^2 pooled over every eps: {stats.r2:.3f}")


def install_headline(ins, stratum: str = "100-1000", magnitude: float = 3.0) -> Headline | None:
    """Target inclusion native → edited in one (stratum, magnitude) cell of an install result (None if absent)."""
    cell = next((c for c in ins.cells if c.stratum == stratum and abs(c.magnitude - magnitude) < 1e-9), None)
    if cell is None:
        return None
    a, b = cell.inclusion_native, cell.inclusion_edited
    return Headline(f"install, target rank {stratum}, magnitude {magnitude:g}",
                    f"inclusion {a.estimate:.3f} native -> {b.estimate:.3f} edited",
                    f"[{a.lo:.3f}, {a.hi:.3f}] -> [{b.lo:.3f}, {b.hi:.3f}] 95% Wilson CIs",
                    f"site {_site(ins)}, {ins.options.n_consecutive} positions, {ins.options.max_new_tokens} greedy "
                    f"tokens, n = {cell.n_trials} trials")


def scatter_section(r, against: str = "delete", title: str | None = None) -> Section:
    """KL of the atom against a control (``"delete"``, ``"random"``, ``"flat_svd"``), one point per firing."""
    o, st = r.options, r.stats
    rate = {"delete": st.win_rate, "random": st.atom_beats_random, "flat_svd": st.flat_svd_win_rate}[against]
    ties = st.ties.get({"delete": "win_rate", "random": "atom_beats_random", "flat_svd": "flat_svd_win_rate"}[against], 0)
    control = {"delete": "deleting the write (S_t - Δnat)", "random": "a random rank-1 direction of the same scale",
               "flat_svd": "the flat SAE's top-1 SVD reconstruction"}[against]
    found = (f"The atom beats {against} on {rate.estimate:.1%} of the {rate.n} decided firings "
             f"[{rate.lo:.1%}, {rate.hi:.1%}] 95% Wilson CI ({ties} ties left out); median KL atom "
             f"{st.medians['atom'].median:.3g} vs {against} {st.medians[against].median:.3g} "
             f"(site {_site(r)}, scale {o.scale}, KL at {o.kl_position}, timing {o.timing}, n = {st.n_firings} "
             "firings).") if rate is not None else "Not measured in this run."
    return Section(
        title or f"KL atom vs {against}" + ("" if o.kl_position == "last" else f" ({o.kl_position})"),
        plot.kl_scatter(r, against),
        f"One point per firing (a position where the SAE fires at {_site(r)}): x = KL(native ‖ output) after "
        f"replacing the native write with the dominant atom scaled by its {o.scale}, y = the same KL after {control}; "
        f"KL of the output distribution at {o.kl_position}, log-log axes.",
        "Points above the dashed y = x line are firings where the atom disturbs the output less than the control "
        "(atom wins). The shaded corner is the noise floor: firings whose two KLs both sit below it are ties "
        "(drawn apart, left out of the rate).",
        "If the atom carries what the write contributes, most points lie above y = x: the paper reports 92.4% against "
        "delete on Qwen3.5-0.8B (coefficient scale), more against a random direction.",
        found)


def ratio_section(r) -> Section:
    """Densities of log10(KL_control / KL_atom) per control."""
    mr = r.stats.median_ratio
    return Section(
        "KL ratio densities", plot.kl_ratio_density(r),
        "Per firing, log10(KL_control / KL_atom) for each control (delete, random), as densities; ties left out.",
        "Mass to the right of 0 means the atom disturbs the output less than that control; the further right, the "
        "larger the factor.",
        "Both densities mostly right of 0, random further right than delete (the paper: median ratio 1.55× for "
        "delete, 2.52× for random).",
        "Median per-firing ratio: " + ", ".join(f"{k} / atom {v:.3g}×" for k, v in mr.items())
        + f" ({_replacement_condition(r)}).")


def floor_section(r) -> Section:
    """Histograms of log10 KL per condition and of the null edit, with the noise floor."""
    fl = r.floor
    found = (f"Floor τ = {fl.threshold:.3g} ({fl.multiple:g}× the largest of {fl.n_null} null-edit KLs, median "
             f"{fl.median:.3g}); {fl.n_ties} of {fl.n_items} firings are atom/delete ties and {fl.n_all_below} have "
             f"every condition below it ({_replacement_condition(r)}).") if fl is not None else "No floor measured."
    return Section(
        "KL per condition and the noise floor", plot.kl_histogram(r),
        "Histograms of log10 KL(native ‖ edited) over the firings, one per condition, and of a mathematically null "
        f"edit (the native write taken out and put back, '{r.options.null_edit}') sent through the same path.",
        "The null edit's KLs are rounding noise; the dashed line τ is a multiple of their maximum. Effects left of "
        "it cannot be told apart from zero.",
        "Real edits sit well right of the floor; a condition piled up at the floor measures nothing.",
        found)


def win_rate_section(results: Sequence[Any]) -> Section:
    """The win rate per (layer, head) of one or more replacement results."""
    return Section(
        "Win rate", plot.win_rate_strip(results),
        "The win rate P(KL_atom < KL_delete) per site with its Wilson 95% CI; one point per (layer, head).",
        "The dotted line is 0.5: a site whose interval lies above it replaces writes better than deleting them.",
        "Above 0.5 at every site where the SAE reconstructs the states well.",
        "; ".join(f"{_site(r)}: {r.stats.win_rate.estimate:.3f} [{r.stats.win_rate.lo:.3f}, {r.stats.win_rate.hi:.3f}] "
                  f"(n = {r.stats.win_rate.n} decided of {r.stats.n_firings} firings, scale {r.options.scale}, KL at "
                  f"{r.options.kl_position})" for r in results) + ".")


def attribution_section(att, predictor: str = "exact") -> Section:
    """Predicted against measured logit change for one predictor (``exact``, ``linearised``, ``three_factor``)."""
    stats = getattr(att, f"stats_{predictor}")
    what = {"exact": "exact propagation inside the layer, then the direct path (gated norm, out_proj, final norm, "
                     "unembedding) linearised",
            "linearised": "exact propagation inside the layer, then the whole network's Jacobian (first order)",
            "three_factor": "the paper's three factors G·⟨v, q̂⟩·⟨W_U[tok], W_O w⟩ (decay product, read, unembedding)"}
    predicts = {"exact": "R² near 1 at small ε when the direct path dominates the logit change; lower where later "
                         "layers carry the effect.",
                "linearised": "R² → 1 as ε → 0 (it is the first-order term of the measured change); it falls as ε "
                              "grows and the network's nonlinearity shows.",
                "three_factor": "R² ≈ 0.98 per cell in the paper; it drops where the erase factors (I − β k̂k̂ᵀ) or "
                                "the unmodelled norms matter."}
    unit = "× the write norm" if att.options.epsilon_mode == "write_norm" else "(absolute Frobenius norm)"
    by_eps = ", ".join(f"ε {float(e):g}: {v:.3f}" for e, v in _eps_items(stats))
    return Section(
        f"Attribution ({predictor.replace('_', '-')})", plot.attribution_scatter(att, predictor),
        f"One point per (atom, ε, passage, later position, target token): x = the predicted change of the target "
        f"logit after adding ε {unit} times the atom to the state at {_site(att)} ({what[predictor]}); y = the "
        "measured change (a rerun with the edit). Colour: ε.",
        "Points on the dashed y = x line are predicted exactly; R² is computed with no fitted parameter.",
        predicts[predictor],
        f"R² {stats.r2:.3f} pooled; by ε {by_eps}; sign agreement {stats.sign_agreement.estimate:.1%} "
        f"(site {_site(att)}, {len(att.atoms)} atoms, {len(set(att.passage))} passages, {len(att.measured)} points).")


def install_section(ins, magnitude: float = 3.0) -> Section:
    """Target inclusion native vs edited per target-rank stratum at one magnitude."""
    m = magnitude if magnitude in ins.options.magnitudes else ins.options.magnitudes[0]
    cells = [c for c in ins.cells if abs(c.magnitude - m) < 1e-9]
    o = ins.options
    return Section(
        f"Install inclusion (m = {m:g})", plot.install_bars(ins, m),
        f"The fraction of trials whose {o.max_new_tokens} greedy tokens contain the target token, without (native) "
        f"and with the install edit: m × ‖v_t‖ · k̂_t v*ᵀ added at {o.n_consecutive} consecutive positions of "
        f"{_site(ins)}, v* the value direction that writes the target's unembedding; one bar pair per stratum of the "
        "target's native rank; Wilson 95% CIs.",
        "An edited bar above its native bar means the install steers generation toward the target.",
        "The paper (Qwen3.5-0.8B, m = 3): 100% edited vs 33.3% native for targets of rank 100–1000.",
        "; ".join(f"rank {c.stratum}: {c.inclusion_native.estimate:.3f} → {c.inclusion_edited.estimate:.3f} "
                  f"(n = {c.n_trials}, first-step log-p lift {c.logp_lift_mean:+.3g} nats)" for c in cells)
        + f" (m = {m:g}).")


def dose_section(ins) -> Section:
    """Edited inclusion against the install magnitude."""
    o = ins.options
    best = max(ins.cells, key=lambda c: c.inclusion_edited.estimate)
    return Section(
        "Install dose", plot.install_dose(ins),
        f"Edited target inclusion against the install magnitude m ∈ {{{', '.join(f'{m:g}' for m in o.magnitudes)}}}, "
        f"one line per target-rank stratum ({o.n_consecutive} positions at {_site(ins)}).",
        "A rising line is a dose–response: a larger install makes the target more likely.",
        "The paper finds the response non-monotone, best at m = 3.",
        f"Highest edited inclusion {best.inclusion_edited.estimate:.3f} (rank {best.stratum}, m = {best.magnitude:g}, "
        f"n = {best.n_trials} trials).")


def feature_section(card) -> Section:
    """A feature card: top contexts, activation histogram, promoted tokens."""
    top = ", ".join(repr(p[0]) for p in card.promoted[:5]) or "none"
    return Section(
        f"Feature {card.feature}", plot.feature_card(card),
        f"Feature {card.feature} of the SAE at {_site(card)}: the passages where it fires most (the firing token in "
        "brackets), the histogram of its nonzero activations, and the tokens its atom promotes most along the direct "
        "path ⟨W_U, W_O^h w⟩.",
        "The contexts say when the feature fires; the promoted tokens what its atom writes toward.",
        "An interpretable feature fires in contexts with something in common and promotes related tokens.",
        f"Fires on {card.firing_rate:.2%} of {card.n_positions} positions ({len(card.activations)} firings); top "
        f"promoted tokens {top}.")


def _table(headlines: Sequence[Headline]) -> str:
    rows = "".join(f"<tr><td>{html.escape(h.figure)}</td><td>{html.escape(h.value)}</td>"
                   f"<td>{html.escape(h.interval)}</td><td>{html.escape(h.condition)}</td></tr>" for h in headlines)
    return ("<table class='summary'><thead><tr><th>figure</th><th>value</th><th>interval</th><th>condition</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
          "table.summary{border-collapse:collapse;font-size:0.9em}table.summary td,table.summary th{border:1px solid "
          "#ccc;padding:4px 8px;text-align:left;vertical-align:top}dl{margin:0.5em 0;display:grid;"
          "grid-template-columns:9em 1fr;column-gap:0.8em;row-gap:0.3em}dt{font-weight:600}dd{margin:0}"
          "section{margin-top:2.5em}")


def save_report(sections: Sequence[Section] | Mapping[str, go.Figure], path: str | Path,
                title: str = "writelens report", headlines: Sequence[Headline] = (), intro: str = "") -> Path:
    """One standalone HTML page: ``intro``, the summary table of ``headlines``, then every section (its text above
    its figure); plotly.js is embedded once, before the first figure. Returns the path."""
    if isinstance(sections, Mapping):
        sections = [Section(name, fig, "", "", "", "") for name, fig in sections.items()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [f"<h1>{html.escape(title)}</h1>"]
    if intro:
        body.append(f"<p>{html.escape(intro)}</p>")
    if headlines:
        body += ["<h2>Summary</h2>", _table(headlines)]
    for i, s in enumerate(sections):
        text = "".join(f"<dt>{label}</dt><dd>{html.escape(value)}</dd>" for label, value in (
            ("Plotted", s.plotted), ("How to read", s.read), ("Method predicts", s.predicts),
            ("This run", s.found)) if value)
        div = s.figure.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"figure-{i}")
        body.append(f"<section><h2>{html.escape(s.title)}</h2>" + (f"<dl>{text}</dl>" if text else "") + f"{div}</section>")
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>", encoding="utf-8")
    return path
