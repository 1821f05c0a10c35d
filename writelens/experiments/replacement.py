"""The replacement (substitution) test (method.md §3; conventions.md "Decisions").

For each firing — a position t of a passage where the SAE, encoding the state after t's write at the site, has an
active feature — the native write ``β_t k̂_t v_tᵀ`` is replaced, with the exact edit engine, by

- **atom**: the dominant TopK atom at t, ``s · u_j w_jᵀ`` (unit factors; ``s`` = its coefficient times the atom's
  decoder norm, or the native write norm with ``scale='matched_norm'``);
- **delete**: nothing (the write is removed; decay and erase terms stay);
- **random**: a fresh seeded Gaussian rank-1 ``r zᵀ`` at the same ``s`` (or a random alive non-firing atom);
- optionally **flat_svd**: the top-1 SVD of a flat SAE's reconstruction of S_t, at the native norm (App F.4).

The effect is ``KL(p_native ‖ p_edited)`` (float64 log-softmax) at the last position of the passage (or the next
token, or the mean over every position from t on). Many firings run per forward, one firing per batch row.

Every firing (every ``null_every``-th with that option) also runs a **null edit** (``Delete`` + re-``Add`` of the
native write, or an ``Add`` of zero; see :mod:`writelens.experiments.floor`) through the same path:
``floor_multiple`` × its largest KL is the noise floor.
A comparison whose two KLs both sit below it is a tie and is left out of the rates; most firings tied warns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from writelens.edits import Add, Delete, RandomAtom, Replace
from writelens.errors import ExperimentError
from writelens.experiments import stats as st
from writelens.experiments.base import ExperimentResult, JsonMixin
from writelens.experiments.common import (
    as_passages,
    kl_from_logits,
    kl_positions,
    run_rows,
    scan_site,
    single_head_sae,
    site_tuple,
    unreachable,
)
from writelens.experiments.floor import TIE_RULE, NoiseFloor, below_floor, noise_floor, null_edits
from writelens.experiments.options import ReplacementOptions
from writelens.experiments.replacement_reuse import reusable
from writelens.sae.files import tensors_sha256

__all__ = ["ReplacementOptions", "ReplacementStats", "ReplacementResult", "MedianSE", "replacement_test",
           "replacement_stats"]


@dataclass
class MedianSE(JsonMixin):
    """A median with its MAD/√n."""

    median: float
    se: float


@dataclass
class ReplacementStats(JsonMixin):
    """The statistics of one replacement test (conditions: atom, delete, random[, flat_svd]).

    ``win_rate``: P(KL_atom < KL_delete) with a Wilson CI; ``strict_chain``: P(atom < delete < random);
    ``atom_beats_random``: P(atom < random); ``medians``: median ± MAD/√n per condition; ``ratio_of_medians``:
    median(cond)/median(atom); ``median_ratio``: median over firings of KL_cond/KL_atom; ``bootstrap_by_atom`` /
    ``bootstrap_by_passage``: cluster-bootstrap CIs of the win rate; ``wilcoxon``: atom vs delete;
    ``cliffs_delta``: δ(KL_delete, KL_atom) (positive: the atom's KL is smaller); ``population``: per-atom win rates
    (atoms with ≥ ``min_firings_per_atom``); ``flat_svd_win_rate``: P(KL_flat_svd < KL_delete).

    Ties (both compared KLs below the noise floor, :mod:`writelens.experiments.floor`) are left out of every rate,
    bootstrap and the population (their ``n`` counts decided firings only); ``ties`` counts them per rate
    (``win_rate``, ``strict_chain``, ``atom_beats_random``, ``flat_svd_win_rate``). Medians, ratios, the Wilcoxon
    test and Cliff's δ use every firing.
    """

    n_firings: int
    n_atoms: int
    n_passages: int
    win_rate: st.Interval
    strict_chain: st.Interval
    atom_beats_random: st.Interval
    medians: dict[str, MedianSE]
    ratio_of_medians: dict[str, float]
    median_ratio: dict[str, float]
    bootstrap_by_atom: st.BootstrapCI
    bootstrap_by_passage: st.BootstrapCI
    wilcoxon: st.WilcoxonResult
    cliffs_delta: float
    population: st.PopulationMean
    flat_svd_win_rate: st.Interval | None = None
    ties: dict[str, int] = field(default_factory=dict)
    tie_rule: str = ""


@dataclass
class ReplacementResult(ExperimentResult):
    """Per-firing KLs and their statistics. Columns (one entry per firing): ``passage``, ``position``,
    ``feature`` (the firing feature), ``atom`` (the substituted atom), ``coefficient`` (the atom's coefficient),
    ``scale`` (‖substituted atom‖_F), ``native_norm`` (‖β k̂ vᵀ‖_F), ``random_seed``, ``random_atom`` (alive-atom
    control, else −1) and ``kl_atom`` / ``kl_delete`` / ``kl_random`` / ``kl_flat_svd`` / ``kl_null`` (the null
    edit). ``floor``: the :class:`~writelens.experiments.floor.NoiseFloor` (threshold, firings below it, ties)."""

    options: ReplacementOptions
    layer: int
    head: int
    n_passages: int
    passage_length: int
    sae_info: dict[str, Any]
    passage: list[int]
    position: list[int]
    feature: list[int]
    atom: list[int]
    coefficient: list[float]
    scale: list[float]
    native_norm: list[float]
    random_seed: list[int]
    random_atom: list[int]
    kl_atom: list[float]
    kl_delete: list[float]
    kl_random: list[float]
    kl_flat_svd: list[float] | None
    stats: ReplacementStats
    kl_null: list[float] = field(default_factory=list)
    floor: NoiseFloor | None = None
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: SHA256 of the passages and of the SAE's weights (what ``reuse=`` checks before taking a firing's KLs)
    fingerprint: dict[str, str] = field(default_factory=dict)
    #: firings whose KLs were taken from ``reuse=`` (not rerun)
    n_reused: int = 0

    def summary(self) -> dict[str, Any]:
        s = self.stats
        out = {
            "site": f"L{self.layer}H{self.head}", "n_firings": s.n_firings, "n_atoms": s.n_atoms,
            "n_passages": s.n_passages, "win_rate": s.win_rate.estimate, "win_rate_lo": s.win_rate.lo,
            "win_rate_hi": s.win_rate.hi, "strict_chain_rate": s.strict_chain.estimate,
            "median_kl_atom": s.medians["atom"].median, "median_kl_delete": s.medians["delete"].median,
            "median_kl_random": s.medians["random"].median,
            "ratio_of_medians_delete": s.ratio_of_medians["delete"],
            "ratio_of_medians_random": s.ratio_of_medians["random"],
            "bootstrap_atom_lo": s.bootstrap_by_atom.lo, "bootstrap_atom_hi": s.bootstrap_by_atom.hi,
            "bootstrap_passage_lo": s.bootstrap_by_passage.lo, "bootstrap_passage_hi": s.bootstrap_by_passage.hi,
            "wilcoxon_p": s.wilcoxon.p_value, "cliffs_delta": s.cliffs_delta,
            "population_mean": s.population.mean, "population_lo": s.population.lo, "population_hi": s.population.hi,
            "population_n_atoms": s.population.n_atoms, "population_n_firings": s.population.n_firings,
            "scale_mode": self.options.scale, "kl_position": self.options.kl_position, "seed": self.options.seed,
        }
        if s.flat_svd_win_rate is not None:
            out["flat_svd_win_rate"] = s.flat_svd_win_rate.estimate
        if self.floor is not None:
            out.update(self.floor.summary(), timing=self.options.timing)
        return out


def replacement_stats(kl_atom, kl_delete, kl_random, features, passages, *, kl_flat_svd=None, n_bootstrap: int = 2000,
                      seed: int = 2026, min_firings_per_atom: int = 5, floor_threshold: float | None = None,
                      unreachable=None) -> ReplacementStats:
    """Every statistic of :class:`ReplacementStats` from per-firing KLs [n] and cluster labels [n].

    ``floor_threshold`` (τ) and ``unreachable`` (bool [n]) define ties (both compared KLs ≤ τ, or unreachable);
    None: no floor, no ties.
    """
    a, d, r = (np.asarray(x, dtype=np.float64) for x in (kl_atom, kl_delete, kl_random))
    conds = {"atom": a, "delete": d, "random": r}
    if kl_flat_svd is not None:
        conds["flat_svd"] = np.asarray(kl_flat_svd, dtype=np.float64)
    tau = float("nan") if floor_threshold is None else float(floor_threshold)
    low = {k: below_floor(v, tau, unreachable) for k, v in conds.items()}
    tie = {"win_rate": low["atom"] & low["delete"], "atom_beats_random": low["atom"] & low["random"]}
    tie["strict_chain"] = tie["win_rate"] | (low["delete"] & low["random"])
    if "flat_svd" in conds:
        tie["flat_svd_win_rate"] = low["flat_svd"] & low["delete"]
    keep = ~tie["win_rate"]
    win = (a < d)[keep].astype(np.float64)
    feats, psgs = np.asarray(features)[keep].tolist(), np.asarray(passages)[keep].tolist()
    safe = np.where(a > 0, a, np.nan)
    return ReplacementStats(
        n_firings=int(a.size),
        n_atoms=len(set(features)),
        n_passages=len(set(passages)),
        win_rate=st.proportion(win),
        strict_chain=st.proportion(((a < d) & (d < r))[~tie["strict_chain"]]),
        atom_beats_random=st.proportion((a < r)[~tie["atom_beats_random"]]),
        medians={k: MedianSE(*st.median_mad(v)) for k, v in conds.items()},
        ratio_of_medians={k: st.ratio_of_medians(v, a) for k, v in conds.items() if k != "atom"},
        median_ratio={k: float(np.nanmedian(v / safe)) if np.isfinite(v / safe).any() else float("nan")
                      for k, v in conds.items() if k != "atom"},
        bootstrap_by_atom=st.cluster_bootstrap(win, feats, n_resamples=n_bootstrap, seed=seed),
        bootstrap_by_passage=st.cluster_bootstrap(win, psgs, n_resamples=n_bootstrap, seed=seed + 1),
        wilcoxon=st.paired_wilcoxon(a, d),
        cliffs_delta=st.cliffs_delta(d, a),
        population=st.per_atom_population(win, feats, min_firings=min_firings_per_atom, bounds=(0.0, 1.0)),
        flat_svd_win_rate=(st.proportion((conds["flat_svd"] < d)[~tie["flat_svd_win_rate"]])
                           if "flat_svd" in conds else None),
        ties={k: int(v.sum()) for k, v in tie.items()},
        tie_rule=TIE_RULE if floor_threshold is not None else "no floor given: no ties",
    )


def _select_firings(scan, options: ReplacementOptions, length: int) -> list[tuple[int, int, int, int, float]]:
    """(passage, position, feature, atom, atom coefficient) of the chosen firings, in passage order."""
    values, indices = scan.values, scan.indices
    rng = np.random.default_rng(options.seed)
    named = None if options.features is None else torch.tensor(sorted(set(options.features)))
    candidates = []
    for p in range(values.shape[0]):
        for t in range(options.min_position, length):
            if not kl_positions(t, length, options.kl_position, options.timing):
                continue
            v, ix = values[p, t], indices[p, t]
            active = v > 0
            if not bool(active.any()):
                continue
            j = int(torch.argmax(torch.where(active, v, torch.full_like(v, -1.0))))
            dominant, dom_coef = int(ix[j]), float(v[j])
            if named is None:
                feature = dominant
            else:
                hit = active & torch.isin(ix, named)
                if not bool(hit.any()):
                    continue
                k = int(torch.argmax(torch.where(hit, v, torch.full_like(v, -1.0))))
                feature = int(ix[k])
            if options.atom_choice == "feature":
                coef = float(v[ix == feature].max())
                candidates.append((p, t, feature, feature, coef))
            else:
                candidates.append((p, t, feature, dominant, dom_coef))
    order = rng.permutation(len(candidates))
    per_passage: dict[int, int] = {}
    per_atom: dict[int, int] = {}
    chosen = []
    for i in order.tolist():
        p, t, feature, atom, coef = candidates[i]
        if options.firings_per_passage is not None and per_passage.get(p, 0) >= options.firings_per_passage:
            continue
        if options.cap_per_atom is not None and per_atom.get(feature, 0) >= options.cap_per_atom:
            continue
        per_passage[p] = per_passage.get(p, 0) + 1
        per_atom[feature] = per_atom.get(feature, 0) + 1
        chosen.append(candidates[i])
        if options.max_firings is not None and len(chosen) >= options.max_firings:
            break
    return sorted(chosen, key=lambda c: (c[0], c[1]))


def _atom_edit(layer, head, t, atoms, row, scale, timing, native_norm: float):
    """Replace the write at t by atom ``row`` of ``atoms`` at Frobenius norm ``scale`` (None: matched norm, the
    native write's ``native_norm``)."""
    if atoms.key.shape[1] == 1:
        return [Replace(layer, head, t, key=atoms.key[row, 0], value=atoms.value[row, 0], scale=scale, timing=timing)]
    matrix = atoms.matrix()[row]
    size = native_norm if scale is None else scale
    return [Delete(layer, head, t, timing=timing),
            Add(layer, head, t, matrix=matrix / matrix.norm(), scale=float(size), timing=timing)]


@torch.no_grad()
def replacement_test(lens, sae, site, passages, options: ReplacementOptions | None = None, *,
                     flat_sae=None, reuse: ReplacementResult | None = None) -> ReplacementResult:
    """Run the replacement test at ``site`` ((layer, head) or a ``Site``) on ``passages`` (token ids [N, T]).

    Args:
        lens: a :class:`writelens.WriteLens`.
        sae: a matrix SAE of that site (BilinearSAE/MatrixSAE; a stacked SAE is reduced to the head).
        flat_sae: a FlatSAE of the same site for ``baseline='flat_svd'``.
        reuse: an earlier result of the same site, SAE and passages with the same measurement options (scale,
            KL position and direction, timing, controls, null edit, seed): a firing it holds (same passage,
            position, atom and coefficient) takes its KLs instead of being rerun. A firing's KLs depend on the
            firing alone (its random control is seeded by (seed, passage, position)), so this is the result a
            rerun gives, up to float rounding of the batch it ran in. Another selection (``max_firings``,
            ``cap_per_atom``, ``features``, …) may differ: a per-atom population after a pooled run reruns only
            the firings the pooled run did not hold.
    Returns:
        :class:`ReplacementResult` (per-firing KL triples, statistics, options and seeds).
    """
    options = options or ReplacementOptions()
    started = time.perf_counter()
    layer, head = site_tuple(site)
    sae = single_head_sae(sae, head, lens=lens, layer=layer, allow_foreign=options.allow_foreign_sae,
                          what="replacement")
    if options.baseline == "flat_svd" and flat_sae is None:
        raise ExperimentError("baseline='flat_svd' needs flat_sae= (a FlatSAE trained on the same site).")
    wrong = [f for f in options.features or [] if f >= sae.cfg.n_features]
    if wrong:
        raise ExperimentError(f"ReplacementOptions.features names {wrong}, but the SAE has {sae.cfg.n_features} "
                              f"features (0..{sae.cfg.n_features - 1}).")
    ids = as_passages(passages)
    n, length = ids.shape
    fingerprint = {"passages_sha256": tensors_sha256({"ids": ids}),
                   "sae_sha256": tensors_sha256({k: v.detach() for k, v in sae.state_dict().items()})}
    prior = reusable(reuse, options, layer, head, length, fingerprint)  # (refused before the scan, not after)
    scan = scan_site(lens, sae, (layer, head), ids, min_position=options.min_position, batch_size=options.scan_batch,
                     keep_logits=1 if options.kl_position == "last" else True,
                     flat_sae=flat_sae if options.baseline == "flat_svd" else None, show=options.progress)
    firings = _select_firings(scan, options, length)
    atom_ids = sorted({f[3] for f in firings})
    atoms = sae.atoms(atom_ids) if atom_ids else None
    row_of = {a: i for i, a in enumerate(atom_ids)}
    atom_norm = atoms.matrix().flatten(1).norm(dim=-1) if atoms is not None else None
    alive = torch.unique(scan.indices[scan.values > 0]).tolist()
    conditions = ["atom", "delete", "random"] + (["flat_svd"] if options.baseline == "flat_svd" else []) + ["null"]
    wk, wv, wb = scan.write
    rows, owner, meta, reused = [], [], [], {}  # owner[r]: (firing, condition) of row r
    for i, (p, t, _feature, atom, coef) in enumerate(firings):
        timing = options.timing
        scale = coef * float(atom_norm[row_of[atom]]) if options.scale == "coefficient" else None
        seed = int(options.seed) * 1_000_003 + p * length + t  # the firing's own: the same whichever firings run
        random_atom = -1
        native = float(scan.write_norm[p, t])
        old = prior.get((p, t, atom, coef))
        if old is not None:
            reused[i] = old[0]
            meta.append((scale if scale is not None else native, native, seed, old[1]))
            continue
        mine = {"atom": _atom_edit(layer, head, t, atoms, row_of[atom], scale, timing, native),
                "delete": [Delete(layer, head, t, timing=timing)]}
        if options.random_control == "alive_atom":
            active = set(scan.indices[p, t][scan.values[p, t] > 0].tolist())
            pool = [a for a in alive if a not in active] or [a for a in range(sae.cfg.n_features) if a not in active]
            rng = np.random.default_rng([int(options.seed) + 7, p, t])
            random_atom = int(pool[int(rng.integers(len(pool)))])
            ra = sae.atoms([random_atom])
            mine["random"] = _atom_edit(layer, head, t, ra, 0, scale, timing, native)
        else:
            mine["random"] = [RandomAtom(layer, head, t, scale=scale, seed=seed, timing=timing)]
        if options.baseline == "flat_svd":
            fk, fv = scan.flat_svd
            mine["flat_svd"] = [Replace(layer, head, t, key=fk[p, t], value=fv[p, t], scale=None, timing=timing)]
        if i % options.null_every == 0:
            mine["null"] = null_edits(layer, head, t, wk[p, t], wv[p, t], float(wb[p, t]), options.null_edit, timing)
        for c, edits in mine.items():
            rows.append((p, edits))
            owner.append((i, c))
        meta.append((scale if scale is not None else native, native, seed, random_atom))

    tail = 1 if options.kl_position == "last" else None  # the unembedding then runs at the last position only
    span = 2 if options.kl_position == "next" else None  # the forward stops after the first affected position

    def reduce(r: int, logits):
        p, t = rows[r][0], firings[owner[r][0]][1]
        pos = kl_positions(t, length, options.kl_position, options.timing)
        mine = [q - (length - logits.shape[0]) for q in pos] if tail else pos
        ref = [q - (length - scan.logits.shape[1]) for q in pos]  # (the scan kept the last position only for "last")
        return float(kl_from_logits(scan.logits[p, ref], logits[mine].float(), options.kl_direction).mean())

    kls = run_rows(lens, ids, rows, reduce, batch_rows=options.batch_rows, desc="replacement", show=options.progress,
                   tail=tail, span=span) if rows else []
    by_cond = {c: [float("nan")] * len(firings) for c in conditions}
    for (i, c), kl in zip(owner, kls, strict=True):
        by_cond[c][i] = kl
    for i, old in reused.items():
        for c in conditions:
            by_cond[c][i] = old.get(c, float("nan"))
    feats = [f[2] for f in firings]
    psg = [f[0] for f in firings]
    unreach = unreachable([f[1] for f in firings], length, options.kl_position, options.timing)
    floor = noise_floor(by_cond["null"], {c: by_cond[c] for c in conditions if c != "null"},
                        multiple=options.floor_multiple, null_edit=options.null_edit, metric="KL",
                        headline=("atom", "delete"), unreachable=unreach,
                        what=f"replacement test L{layer}H{head} ({options.timing}, KL at {options.kl_position})")
    stats = replacement_stats(by_cond["atom"], by_cond["delete"], by_cond["random"], feats, psg,
                              kl_flat_svd=by_cond.get("flat_svd"), n_bootstrap=options.n_bootstrap, seed=options.seed,
                              min_firings_per_atom=options.min_firings_per_atom, floor_threshold=floor.threshold,
                              unreachable=unreach)
    cfg = sae.cfg
    return ReplacementResult(
        options=options, layer=layer, head=head, n_passages=n, passage_length=length,
        sae_info={"architecture": cfg.architecture, "n_features": cfg.n_features, "k": cfg.k, "rank": cfg.rank,
                  "activation": cfg.activation, "metadata": {k: str(v) for k, v in cfg.metadata.items()}},
        passage=psg, position=[f[1] for f in firings], feature=feats, atom=[f[3] for f in firings],
        coefficient=[f[4] for f in firings], scale=[m[0] for m in meta], native_norm=[m[1] for m in meta],
        random_seed=[m[2] for m in meta], random_atom=[m[3] for m in meta],
        kl_atom=by_cond["atom"], kl_delete=by_cond["delete"], kl_random=by_cond["random"],
        kl_flat_svd=by_cond.get("flat_svd"), stats=stats, kl_null=by_cond["null"], floor=floor,
        elapsed_s=time.perf_counter() - started,
        fingerprint=fingerprint, n_reused=len(reused),
        notes=["KL in float64 log-softmax; one firing per (passage, position); random atoms seeded per firing as "
               "seed*1000003 + passage*T + position", f"noise floor: {options.null_edit} null edit at "
               + ("every firing" if options.null_every == 1 else f"every {options.null_every}th firing (and the "
                  "reused ones)") + f"; {TIE_RULE}"]
        + ([floor.warning] if floor.warning else [])
        + ([f"{len(reused)} of {len(firings)} firings' KLs taken from an earlier result (reuse=)"] if reused else []),
    )
