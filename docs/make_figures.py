"""Make the figures of the docs' experiment pages (and the README's) from the shipped ``gdn-tiny`` and its zoo
WriteSAEs, on small budgets. Not run in CI.

    python docs/make_figures.py                 # PNGs + summaries.json into docs/figures/ (~5 min on 2 CPU cores)
    python docs/make_figures.py --html runs/fig  # also the interactive writelens.plot figures as standalone HTML

Static PNGs are drawn with matplotlib (a ``dev`` extra; plotly's own PNG export needs kaleido and a Chrome); they
mirror the plotly figures of :mod:`writelens.plot`, which is what you get in a notebook. Every number quoted on the
docs pages comes from ``docs/figures/summaries.json``, written by this script.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

import writelens as wl
from writelens import plot
from writelens.experiments import (
    AmplifyOptions,
    AttributionOptions,
    ErasureOptions,
    InstallOptions,
    ReplacementOptions,
    attribution,
    feature_amplification,
    install_steering,
    replacement_test,
    slot_erasure,
    tokens_matching,
)
from writelens.experiments.base import to_jsonable
from writelens.experiments.common import scan_site
from writelens.experiments.floor import below_floor

HERE = Path(__file__).resolve().parent
OUT = HERE / "figures"
SITE = (4, 1)
SEED = 2026
BLUE, RED, GREY, GREEN, PURPLE = "#1f77b4", "#d62728", "#7f7f7f", "#2ca02c", "#9467bd"


def run_all(progress: bool) -> dict:
    """Run every experiment on gdn-tiny at small budgets; returns the results and timings."""
    model, tok = wl.zoo.load("gdn-tiny")
    lens = wl.WriteLens(model, tokenizer=tok)
    sae = wl.zoo.load_sae("gdn-tiny", *SITE)
    evals = wl.zoo.heldout_passages(32, 128, seed=0)
    prompts = wl.zoo.heldout_passages(16, 48, seed=1)
    times, res = {}, {"tokenizer": tok}
    clock = time.perf_counter()

    def done(name):
        nonlocal clock
        times[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        print(f"{name}: {times[name]} s", flush=True)

    res["replacement"] = replacement_test(lens, sae, SITE, evals, ReplacementOptions(
        max_firings=400, seed=SEED, progress=progress))
    done("replacement")
    res["population"] = replacement_test(lens, sae, SITE, evals[:16], ReplacementOptions(
        max_firings=None, cap_per_atom=8, seed=SEED, progress=progress))
    done("replacement_population")
    res["next"] = replacement_test(lens, sae, SITE, evals, ReplacementOptions(
        max_firings=400, kl_position="next", seed=SEED, progress=progress))
    done("replacement_next")
    res["heads"] = []
    for layer, head in wl.zoo.saes("gdn-tiny"):
        if (layer, head) == SITE:
            res["heads"].append(res["replacement"])
            continue
        res["heads"].append(replacement_test(lens, wl.zoo.load_sae("gdn-tiny", layer, head), (layer, head),
                                             evals[:16], ReplacementOptions(max_firings=150, seed=SEED,
                                                                            progress=progress)))
    done("replacement_per_head")

    scan = scan_site(lens, sae, SITE, evals, keep_logits=False, show=progress)
    rate = torch.bincount(scan.indices[scan.values > 0], minlength=sae.cfg.n_features) / scan.values[..., 0].numel()
    order = rate.argsort(descending=True).tolist()
    res["attribution"] = attribution(lens, sae, SITE, evals[:8], order[:8], (0.01, 0.1, 1.0, 3.0),
                                     AttributionOptions(epsilon_mode="write_norm", target_ranks=(1, 10), seed=SEED,
                                                        progress=progress))
    done("attribution")
    res["install"] = install_steering(lens, SITE, prompts, options=InstallOptions(
        magnitudes=(1.5, 3.0, 10.0, 30.0), seed=SEED, progress=progress))
    done("install")
    feature = next(f for f in order if 0.02 < rate[f] < 0.3)
    res["erasure"] = slot_erasure(lens, sae, SITE, evals, feature, ErasureOptions(
        max_firings=200, n_controls=60, n_dose=30, dose_response=(0.5, 1.0, 2.0, 4.0, 8.0, 16.0), seed=SEED,
        progress=progress))
    res["erasure_rate"] = float(rate[feature])
    done("erasure")
    newline = tokens_matching(tok, "\n")
    res["state_norm_median"] = float(scan_states_norm(lens, evals[:8]))
    res["amplify"] = feature_amplification(lens, sae, SITE, evals, prompts[:, :32], newline, AmplifyOptions(
        n_features=10, doses=(2.0, 5.0, 20.0), max_new_tokens=40, seed=SEED, progress=progress))
    done("amplify")
    res["times"] = times
    return res


def scan_states_norm(lens, passages) -> float:
    """Median ‖S_t‖_F at the site over the positions of ``passages`` (the scale a push is compared with)."""
    out = lens.run(passages, cache=True, sites=[SITE])
    states = out.cache.states(*SITE, list(range(1, passages.shape[1])))
    return states.flatten(2).norm(dim=-1).median()


# ---- static figures (matplotlib) ---------------------------------------------------------------------------------


def _display_floor(*cols):
    """The smallest positive value / 10: where values at exactly 0 are drawn on a log axis (not the noise floor)."""
    a = np.concatenate([np.asarray(c, dtype=float) for c in cols])
    return a[a > 0].min() / 10 if (a > 0).any() else 1e-12


def _tau(rep) -> float:
    """The replacement result's noise floor τ (multiple × the largest null-edit KL); nan when it has none."""
    return float(rep.floor.threshold) if rep.floor is not None else float("nan")


def fig_kl_scatter(plt, rep, path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    tau = _tau(rep)
    for ax, against, color in ((axes[0], "delete", RED), (axes[1], "random", GREY)):
        y_raw = getattr(rep, f"kl_{against}")
        low = _display_floor(rep.kl_atom, y_raw, [tau] if np.isfinite(tau) else [])
        x = np.maximum(np.asarray(rep.kl_atom), low)
        y = np.maximum(np.asarray(y_raw), low)
        tie = below_floor(rep.kl_atom, tau) & below_floor(y_raw, tau)
        win = (x < y) & ~tie
        n_dec = int((~tie).sum())
        ax.scatter(x[win], y[win], s=9, alpha=0.6, color=BLUE,
                   label=f"atom wins ({win.sum() / max(n_dec, 1):.0%} of {n_dec} decided)")
        ax.scatter(x[~win & ~tie], y[~win & ~tie], s=9, alpha=0.6, color=color, label=f"{against} wins")
        if tie.any():
            ax.scatter(x[tie], y[tie], s=9, alpha=0.6, color="#bcbd22", label=f"ties below τ ({int(tie.sum())})")
        lo, hi = min(x.min(), y.min(), tau / 3 if np.isfinite(tau) else np.inf), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
        if np.isfinite(tau):  # the noise floor: both KLs below τ is a tie (left out of the rate)
            ax.fill_between([lo, tau], lo, tau, color="#bcbd22", alpha=0.15, lw=0)
            ax.axvline(tau, color="#bcbd22", ls=":", lw=1)
            ax.axhline(tau, color="#bcbd22", ls=":", lw=1, label=f"noise floor τ = {tau:.2g}")
        ax.set(xscale="log", yscale="log", xlabel="KL(native ‖ atom)", ylabel=f"KL(native ‖ {against})",
               title=f"atom vs {against}")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    o = rep.options
    fig.suptitle(f"Replacement test, gdn-tiny L{rep.layer}H{rep.head}: n = {rep.stats.n_firings} firings, scale "
                 f"{o.scale}, KL at {o.kl_position}, timing {o.timing}; τ = {o.floor_multiple:g}× the largest "
                 f"null-edit KL ({o.null_edit})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_kl_ratio(plt, rep, path):
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    atom = np.asarray(rep.kl_atom)
    tau = _tau(rep)
    for name, color in (("delete", RED), ("random", GREY)):
        c = np.asarray(getattr(rep, f"kl_{name}"))
        ok = (atom > 0) & (c > 0) & ~(below_floor(atom, tau) & below_floor(c, tau))  # ties left out
        ax.hist(np.log10(c[ok] / atom[ok]), bins=50, density=True, alpha=0.5, color=color,
                label=f"{name} / atom (n = {int(ok.sum())})")
    ax.axvline(0, color="k", ls="--", lw=1)
    ax.set(xlabel="log10(KL_cond / KL_atom)   (> 0: the atom disturbs less)", ylabel="density",
           title=f"Per-firing KL ratios, L{rep.layer}H{rep.head} (KL at {rep.options.kl_position}; ties below "
                 "the noise floor left out)")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_win_rates(plt, heads, pop, path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1, 2.2]})
    ax = axes[0]
    for i, r in enumerate(heads):
        w = r.stats.win_rate
        ax.errorbar([i], [w.estimate], yerr=[[w.estimate - w.lo], [w.hi - w.estimate]], fmt="o", color=BLUE,
                    capsize=4)
    ax.axhline(0.5, color=GREY, ls=":")
    ax.set(xticks=range(len(heads)), xticklabels=[f"L{r.layer}H{r.head}" for r in heads], ylim=(0, 1),
           ylabel="win rate (Wilson 95% CI)", title="Win rate per head")
    ax = axes[1]
    P = pop.stats.population
    items = sorted(P.per_atom.items(), key=lambda kv: kv[1])
    ax.bar(range(len(items)), [v for _, v in items], color=BLUE, alpha=0.8)
    ax.axhline(P.mean, color="k", ls="--", lw=1, label=f"population mean {P.mean:.2f} [{P.lo:.2f}, {P.hi:.2f}]")
    ax.axhspan(P.lo, P.hi, color=BLUE, alpha=0.12)
    ax.axhline(0.5, color=GREY, ls=":")
    ax.set(xticks=[], ylim=(0, 1.05), xlabel=f"{P.n_atoms} atoms with ≥ {P.min_firings} firings (sorted)",
           ylabel="per-atom win rate", title=f"Per-atom population, L{pop.layer}H{pop.head}")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_attribution(plt, att, path):
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.9))
    meas = np.asarray(att.measured)
    eps = np.asarray(att.epsilon)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(att.epsilons)))
    for ax, name, label in ((axes[0], "three_factor", "three-factor"), (axes[1], "exact", "exact in-layer, direct path"),
                            (axes[2], "linearised", "linearised (whole network)")):
        pred = np.asarray(getattr(att, name))
        for e, c in reversed(list(zip(att.epsilons, colors, strict=True))):  # small ε drawn last, on top
            k = eps == e
            ax.scatter(pred[k], meas[k], s=7, alpha=0.6, color=c, label=f"ε = {e:g}")
        lo, hi = min(pred.min(), meas.min()), max(pred.max(), meas.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        by = getattr(att, f"stats_{name}").r2_by_epsilon
        ax.set(xlabel=f"predicted Δlogit ({label})", ylabel="measured Δlogit",
               title=f"{label}\nR² pooled {getattr(att, f'stats_{name}').r2:.2f}, at ε = 0.1: {by.get('0.1', np.nan):.3f}")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].legend(handles[::-1], labels[::-1], fontsize=7, frameon=False)
    ax = axes[3]
    for name, label, color in (("linearised", "linearised", BLUE), ("exact", "exact direct path", GREEN),
                               ("three_factor", "three-factor", PURPLE)):
        by = getattr(att, f"stats_{name}").r2_by_epsilon
        ax.plot([float(e) for e in by], list(by.values()), "o-", color=color, label=label)
    low = min([-1.05] + [v - 0.1 for n in ("linearised", "exact", "three_factor")
                         for v in getattr(att, f"stats_{n}").r2_by_epsilon.values() if v is not None])
    ax.set(xscale="log", ylim=(low, 1.05), xlabel="ε (× native write norm)", ylabel="R² (no fitted parameters)",
           title="R² by ε")
    ax.axhline(0, color=GREY, ls=":")
    ax.legend(fontsize=8, frameon=False)
    fig.suptitle(f"Logit attribution, gdn-tiny L{att.layer}H{att.head}: {len(att.atoms)} atoms, horizons "
                 f"{list(att.options.horizons)}, target ranks {list(att.options.target_ranks)}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_install(plt, ins, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
    cells = [c for c in ins.cells if c.magnitude == 3.0]
    x = np.arange(len(cells))
    for off, attr, color, name in ((-0.2, "inclusion_native", GREY, "native"),
                                   (0.2, "inclusion_edited", GREEN, "edited (m = 3)")):
        iv = [getattr(c, attr) for c in cells]
        axes[0].bar(x + off, [i.estimate for i in iv], width=0.4, color=color, label=name,
                    yerr=[[i.estimate - i.lo for i in iv], [i.hi - i.estimate for i in iv]], capsize=3)
    axes[0].set(xticks=x, xticklabels=[f"rank {c.stratum}" for c in cells], ylim=(0, 1), ylabel="target inclusion",
                title=f"Inclusion in {ins.options.max_new_tokens} greedy tokens (Wilson 95% CI)")
    axes[0].legend(frameon=False)
    for lab in dict.fromkeys(c.stratum for c in ins.cells):
        cs = sorted((c for c in ins.cells if c.stratum == lab), key=lambda c: c.magnitude)
        axes[1].plot([c.magnitude for c in cs], [c.logp_lift_mean for c in cs], "o-", label=f"rank {lab}")
    axes[1].axhline(0, color=GREY, ls=":")
    axes[1].set(xlabel="magnitude m", ylabel="mean first-step Δ log p(target)", title="Dose sweep")
    axes[1].legend(fontsize=8, frameon=False)
    fig.suptitle(f"Install steering, gdn-tiny L{ins.layer}H{ins.head}: {ins.n_prompts} prompts, positions "
                 f"{ins.install_positions}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_erasure(plt, er, tok, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
    d = np.asarray(er.delta_logp)
    axes[0].hist(d, bins=40, color=BLUE, alpha=0.8)
    axes[0].axvline(0, color="k", ls="--", lw=1)
    if er.floor is not None and np.isfinite(er.floor.threshold):  # |Δ| below τ is indistinguishable from zero
        tau = er.floor.threshold
        axes[0].axvspan(-tau, tau, color="#bcbd22", alpha=0.3,
                        label=f"noise floor |Δ| ≤ τ = {tau:.2g} ({er.floor.n_all_below} of {d.size} below)")
    axes[0].axvline(er.test_median.estimate, color=RED, lw=1.5,
                    label=f"median {er.test_median.estimate:+.3f} [{er.test_median.lo:+.3f}, {er.test_median.hi:+.3f}]")
    axes[0].set(xlabel=f"Δ log p({tok.decode([er.preferred_token])!r}) when the slot is erased",
                ylabel="test-half firings", title=f"Erasing feature {er.feature} (test half, n = {d.size})")
    axes[0].legend(fontsize=8, frameon=False)
    cells = er.dose_response
    m = [c.magnitude for c in cells]
    med = np.array([c.median.estimate for c in cells])
    axes[1].errorbar(m, med, yerr=[med - [c.median.lo for c in cells], [c.median.hi for c in cells] - med], fmt="o-",
                     color=GREEN, capsize=3, label="add m · a* · A_i at non-firing positions")
    axes[1].axhline(0, color=GREY, ls=":")
    axes[1].set(xscale="log", xlabel="dose m (× median natural coefficient a*)",
                ylabel="median Δ log p(preferred)", title="Additive dose-response")
    axes[1].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_amplify(plt, amp, path):
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9), gridspec_kw={"width_ratios": [1, 1.4, 1.4]})
    x = np.arange(len(amp.features))
    axes[0].bar(x - 0.2, amp.scores, width=0.4, color=BLUE, label="score (boundary − other)")
    axes[0].bar(x + 0.2, amp.pushes, width=0.4, color=GREEN, label="push coefficient")
    axes[0].axhline(0, color=GREY, lw=0.8)
    axes[0].set(xticks=x, xticklabels=[str(f) for f in amp.features], xlabel="selected feature",
                title=f"Selection (‖push‖_F = {amp.push_norm:.3g})")
    axes[0].tick_params(axis="x", labelrotation=60, labelsize=7)
    axes[0].legend(fontsize=7, frameon=False)
    axes = axes[1:]
    conds = list(amp.metrics)
    for ax, metric, label in ((axes[0], "property_rate", "share of newline tokens"),
                              (axes[1], "mean_word_length", "mean word length")):
        vals = [np.asarray(amp.metrics[c][metric]) for c in conds]
        colors = [GREY if c == "native" else (GREEN if c.startswith("amplify") else PURPLE) for c in conds]
        ax.bar(range(len(conds)), [v.mean() for v in vals], color=colors,
               yerr=[v.std(ddof=1) / np.sqrt(v.size) for v in vals], capsize=3)
        ax.set(xticks=range(len(conds)), xticklabels=conds, ylabel=f"{label} (mean ± s.e.)", title=label)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(f"Feature amplification, gdn-tiny L{amp.layer}H{amp.head}: {len(amp.features)} features selected "
                 "for newlines vs a matched random control", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_pngs(res: dict, out: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[dev]'): PNGs skipped")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"axes.spines.top": False, "axes.spines.right": False, "font.size": 9})
    out.mkdir(parents=True, exist_ok=True)
    fig_kl_scatter(plt, res["replacement"], out / "kl_scatter.png")
    fig_kl_ratio(plt, res["replacement"], out / "kl_ratio_density.png")
    fig_win_rates(plt, res["heads"], res["population"], out / "win_rates.png")
    fig_attribution(plt, res["attribution"], out / "attribution.png")
    fig_install(plt, res["install"], out / "install.png")
    fig_erasure(plt, res["erasure"], res["tokenizer"], out / "erasure.png")
    fig_amplify(plt, res["amplify"], out / "amplification.png")


def write_html(res: dict, out: Path) -> None:
    figures = {"kl scatter": plot.kl_scatter(res["replacement"]),
               "kl ratio density": plot.kl_ratio_density(res["replacement"]),
               "win rate strip": plot.win_rate_strip(res["heads"]),
               "attribution linearised": plot.attribution_scatter(res["attribution"], "linearised"),
               "attribution three factor": plot.attribution_scatter(res["attribution"], "three_factor"),
               "install bars": plot.install_bars(res["install"]), "install dose": plot.install_dose(res["install"])}
    for name, fig in figures.items():
        plot.save_html(fig, out / (re.sub(r"\W+", "_", name) + ".html"), plotlyjs="directory")


def summaries(res: dict) -> dict:
    tok = res["tokenizer"]
    er, amp, att = res["erasure"], res["amplify"], res["attribution"]
    return to_jsonable({
        "model": "gdn-tiny", "site": f"L{SITE[0]}H{SITE[1]}", "sae": "wl.zoo.load_sae('gdn-tiny', 4, 1)",
        "seconds": res["times"], "torch_threads": torch.get_num_threads(),
        "state_norm_median": res["state_norm_median"],
        "replacement": res["replacement"].summary(),
        "replacement_next_token": res["next"].summary(),
        "replacement_population": res["population"].summary(),
        "replacement_per_head": {f"L{r.layer}H{r.head}": r.summary() for r in res["heads"]},
        "attribution": att.summary(),
        "attribution_r2_by_epsilon": {n: getattr(att, f"stats_{n}").r2_by_epsilon
                                      for n in ("linearised", "exact", "three_factor")},
        "install": res["install"].summary(),
        "erasure": {**er.summary(), "preferred_token_text": tok.decode([er.preferred_token]),
                    "feature_firing_rate": res["erasure_rate"],
                    "dose_response": {f"m{c.magnitude:g}": c.median.estimate for c in er.dose_response}},
        "amplification": {**amp.summary(), "scores": amp.scores, "pushes": amp.pushes, "push_norm": amp.push_norm,
                          "comparisons": [
            {"condition": c.condition, "metric": c.metric, "native": c.mean_native, "condition_mean": c.mean_condition,
             "difference": c.difference.estimate, "lo": c.difference.lo, "hi": c.difference.hi,
             "wilcoxon_p": c.wilcoxon.p_value} for c in amp.comparisons]},
    })


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--html", type=Path, default=None, help="also write the plotly figures as HTML here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run_all(args.progress)
    write_pngs(res, args.out)
    if args.html is not None:
        write_html(res, args.html)
    (args.out / "summaries.json").write_text(json.dumps(summaries(res), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
