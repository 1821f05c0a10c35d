"""Closed-form logit attribution of an atom added to the state (method.md §4; conventions.md "Attribution G").

Perturbation: ``S_{t0} ← S_{t0} + ε A/‖A‖_F`` at the site, ``A = u wᵀ`` an SAE atom (u on the key side, w on the
value side; rank-r atoms keep every component). For an eval position t = t0 + h and token ``tok`` (the native
rank-r prediction at t), the change of the logit ``ℓ_t[tok]`` is predicted, for every family, by

(a) **three-factor** (the paper's form, zero fitted parameters):
    ``ε · G · scale · ⟨u, q_t⟩ · ⟨W_U[tok], W_O^h w⟩`` with ``G = Π_{s=t0+1}^{t} α_s`` the scalar decay (GDN
    ``exp(g_s)``, Mamba-2 ``exp(dt_s A_h)``; RWKV-7 has a per-channel decay w_s, so there ``G`` is a diagonal
    matrix between u and q). Modelled: the transition's diagonal and the read. *Not* modelled: the erase /
    rank-1 terms of the transition (GDN ``−β_s k̂_s k̂_sᵀ``, RWKV-7 ``b_s a_sᵀ``), the readout's norm and gate, the
    same layer's MLP, every later layer and the final norm.
(b) **exact in-layer + direct path** (zero fitted parameters): ``δo_s`` exactly through the recorded transitions
    (the family's own exact propagation, held against the float64 oracles), then the *direct* output path
    linearised at the native point: the readout (gated norm, ``W_O``) → the final norm (at the native residual)
    → ``W_U``, by forward-mode JVP of the real modules. The same layer's MLP and later layers are ignored (their
    contribution is what (b) misses); the path is exact to first order when it is the whole path.
(b') **linearised** (zero fitted parameters): the same exact δo_s (s = t0 … t), read through the *whole* network
    linearised at the native point: ``Σ_s ⟨∂ℓ_t[tok]/∂o_s, δo_s⟩``, the gradient taken by backpropagation from the
    logit to the head's kernel output o (the same layer's MLP, every later layer and later positions included).
    This is the exact first-order change; it differs from (c) only by terms of order ε².
(c) **measured**: an edited run (exact edit engine), ``ℓ^edited_t[tok] − ℓ^native_t[tok]``.

R² uses zero fitted parameters; the ``*_fitted`` numbers use one least-squares scale per atom and are labelled so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from writelens.edits import Add
from writelens.errors import ExperimentError
from writelens.experiments import stats as st
from writelens.experiments.base import ExperimentResult, JsonMixin, progress
from writelens.experiments.common import (
    as_passages,
    out_proj_slice,
    run_rows,
    single_head_sae,
    site_tuple,
    unembedding,
)
from writelens.experiments.linearise import (
    NativePoint,
    direct_path,
    downstream_gradients,
    native_point,
    propagate_delta,
)
from writelens.experiments.options import AttributionOptions
from writelens.validate import check_int, check_number

__all__ = ["AttributionOptions", "AttributionResult", "AttributionStats", "attribution", "NativePoint",
           "native_point", "propagate_delta", "downstream_gradients"]


@dataclass
class AttributionStats(JsonMixin):
    """R² (zero fitted parameters unless ``_fitted``) of each predictor against the measured change.

    ``r2``: pooled over everything; ``r2_per_atom`` {atom: R²}; ``r2_cells`` median / quartiles of per (atom, ε)
    cell R²; ``r2_by_epsilon`` / ``r2_by_rank`` pooled within each ε / target rank; ``r2_fitted_per_atom``: with one
    least-squares scale per atom (labelled: a fitted variant); ``sign_agreement`` with a Wilson CI.
    """

    r2: float
    r2_per_atom: dict[str, float]
    r2_cells_median: float
    r2_cells_q25: float
    r2_cells_q75: float
    r2_by_epsilon: dict[str, float]
    r2_by_rank: dict[str, float]
    r2_fitted_per_atom: dict[str, float]
    fitted_scale_per_atom: dict[str, float]
    sign_agreement: st.Interval


@dataclass
class AttributionResult(ExperimentResult):
    """Columns (one entry per passage × atom × ε × horizon × rank): ``passage``, ``atom``, ``epsilon`` (as given),
    ``epsilon_abs`` (‖ΔS‖_F), ``t0``, ``t``, ``rank``, ``token``, ``measured``, ``exact`` (direct path),
    ``linearised`` (whole network, first order), ``three_factor``; with :class:`AttributionStats` for each."""

    options: AttributionOptions
    layer: int
    head: int
    atoms: list[int]
    epsilons: list[float]
    passage: list[int]
    atom: list[int]
    epsilon: list[float]
    epsilon_abs: list[float]
    t0: list[int]
    t: list[int]
    rank: list[int]
    token: list[int]
    measured: list[float]
    exact: list[float]
    three_factor: list[float]
    linearised: list[float]
    stats_exact: AttributionStats
    stats_three_factor: AttributionStats
    stats_linearised: AttributionStats
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        e, f, lin = self.stats_exact, self.stats_three_factor, self.stats_linearised
        return {
            "site": f"L{self.layer}H{self.head}", "n_points": len(self.measured), "n_atoms": len(self.atoms),
            "r2_exact": e.r2, "r2_exact_atom_median": _median(e.r2_per_atom), "r2_exact_cells_median": e.r2_cells_median,
            "r2_linearised": lin.r2, "r2_linearised_atom_median": _median(lin.r2_per_atom),
            "sign_agreement_linearised": lin.sign_agreement.estimate,
            "r2_three_factor": f.r2, "r2_three_factor_atom_median": _median(f.r2_per_atom),
            "r2_three_factor_fitted_atom_median": _median(f.r2_fitted_per_atom),
            "sign_agreement_exact": e.sign_agreement.estimate, "sign_agreement_three_factor": f.sign_agreement.estimate,
            "epsilon_mode": self.options.epsilon_mode, "seed": self.options.seed,
        }


def _median(d: dict[str, float]) -> float:
    vals = [v for v in d.values() if v is not None and np.isfinite(v)]
    return float(np.median(vals)) if vals else float("nan")


@torch.no_grad()
def attribution(lens, sae, site, passages, atoms, epsilons, options: AttributionOptions | None = None, *,
                t0s: list[int] | None = None, horizons: list[list[int]] | None = None) -> AttributionResult:
    """Predicted vs measured logit changes of adding ``ε A_i/‖A_i‖_F`` at t0 (see the module doc), on any family.

    Args:
        sae: the SAE whose atoms are used (``sae.atoms(...).matrix()``, every rank component, unit Frobenius norm).
        passages: token ids [N, T]. atoms: feature ids. epsilons: ε values (see ``epsilon_mode``).
        t0s: per passage, the edit position (overrides ``options.t0`` and the seeded draw).
        horizons: per passage, its own horizons (overrides ``options.horizons``), e.g. a query's distance from t0.
    """
    options = options or AttributionOptions()
    started = time.perf_counter()
    layer, head = site_tuple(site)
    sae = single_head_sae(sae, head, lens=lens, layer=layer, allow_foreign=options.allow_foreign_sae, target=None,
                          what="logit attribution")
    ids = as_passages(passages)
    n, length = ids.shape
    atoms = [check_int(a, "attribution atoms", ExperimentError, 0) for a in (
        [atoms] if isinstance(atoms, int) else list(atoms))]
    epsilons = [check_number(e, "attribution epsilons", ExperimentError) for e in (
        [epsilons] if isinstance(epsilons, (int, float)) else list(epsilons))]
    if not atoms or not epsilons:
        raise ExperimentError(f"attribution needs at least one atom and one epsilon, got atoms={atoms}, "
                              f"epsilons={epsilons}.")
    vocab = int(unembedding(lens).shape[0])
    if max(options.target_ranks) > vocab:
        raise ExperimentError(f"AttributionOptions.target_ranks={list(options.target_ranks)}: ranks go up to the "
                              f"vocabulary size {vocab}.")
    per_h = [list(options.horizons)] * n if horizons is None else [[int(h) for h in hs] for hs in horizons]
    if len(per_h) != n or any(not hs or min(hs) < 0 for hs in per_h):
        raise ExperimentError(f"horizons= must give {n} non-empty lists of horizons >= 0 (one per passage).")
    hmax = max(max(hs) for hs in per_h)
    rng = np.random.default_rng(options.seed)
    hi = length - 1 - hmax
    if t0s is not None:
        t0s = [int(t) for t in t0s]
        if len(t0s) != n or any(t < 0 or t + max(hs) > length - 1 for t, hs in zip(t0s, per_h, strict=True)):
            raise ExperimentError(f"t0s= must give {n} positions with t0 + horizon inside the {length} tokens.")
    elif options.t0 is not None and options.t0 > hi:
        raise ExperimentError(f"AttributionOptions.t0={options.t0} leaves no room for horizon {hmax} in passages of "
                              f"{length} tokens (t0 <= {hi}); lower t0 or the horizons, or use longer passages.")
    elif options.t0 is None and hi < options.min_t0:
        raise ExperimentError(f"passages of {length} tokens are too short for min_t0={options.min_t0} and horizon "
                              f"{hmax}; use longer passages or smaller AttributionOptions.horizons / min_t0.")
    else:
        t0s = [options.t0 if options.t0 is not None else int(rng.integers(options.min_t0, hi + 1)) for _ in range(n)]
    atom_ids = [int(a) for a in atoms]
    fac = sae.atoms(atom_ids)
    mats = fac.matrix().float()  # [A, d_k, d_v]: Σ_r u_r w_rᵀ (rank-r atoms keep every component)
    unit = mats / mats.flatten(1).norm(dim=-1).clamp_min(1e-30)[:, None, None]
    w_u = unembedding(lens)
    w_o = out_proj_slice(lens, layer, head)
    cols: dict[str, list] = {k: [] for k in ("passage", "atom", "epsilon", "epsilon_abs", "t0", "t", "rank", "token",
                                             "exact", "three_factor", "linearised")}
    rows, natives, keys = [], {}, []
    for start in progress(range(0, n, options.scan_batch), desc="attribution: native", enabled=options.progress):
        batch = ids[start : start + options.scan_batch]
        point = native_point(lens, layer, head, batch)
        for r in range(batch.shape[0]):
            p, t0 = start + r, t0s[start + r]
            hz = per_h[p]
            hmax = max(hz)
            ts = [t0 + h for h in hz]
            d_all = propagate_delta(point, r, t0, unit, t0 + hmax)  # [A, hmax + 1, d_v]: δo at t0 … t0 + hmax
            d_o = d_all[:, hz]  # [A, H, d_v]
            targets = [(t, int(tok)) for hi_, t in enumerate(ts) for tok in
                       point.logits[r, t].argsort(descending=True)[[k - 1 for k in options.target_ranks]].tolist()]
            grads = downstream_gradients(lens, layer, head, batch[r], targets)[:, t0 : t0 + hmax + 1].double()
            dhf = direct_path(lens, layer, point, r, ts, d_o)  # [A, H, d_model]
            # the three-factor gain: the transition's diagonal only (GDN / Mamba-2: Π α_s; RWKV-7: Π w_s per channel)
            gain = torch.cumprod(point.key_decay[r, t0 + 1 : t0 + hmax + 1].double(), 0)  # [hmax, d_k]
            gain = torch.cat([torch.ones(1, gain.shape[-1], dtype=torch.float64), gain])[hz]
            read = (gain * point.query[r, ts].double()) * point.scale  # [H, d_k]: G ⊙ q̂_t · scale
            logits = point.logits[r, ts]  # [H, V]
            order = logits.argsort(-1, descending=True)
            for hi_, t in enumerate(ts):
                for rank in options.target_ranks:
                    tok = int(order[hi_, rank - 1])
                    natives[(p, t, tok)] = float(logits[hi_, tok])
                    exact = (dhf[:, hi_] @ w_u[tok]).double()  # [A]
                    value_dir = w_o.T.double() @ w_u[tok].double()  # [d_v]: W_O^hᵀ W_U[tok]
                    three = torch.einsum("k,akv,v->a", read[hi_], unit.double(), value_dir)
                    g = grads[targets.index((t, tok))][: t - t0 + 1]  # [t − t0 + 1, d_v]
                    lin = torch.einsum("asv,sv->a", d_all[:, : t - t0 + 1], g)
                    for ai, atom in enumerate(atom_ids):
                        keys.append((p, atom, t, tok, rank, t0, float(exact[ai]), float(three[ai]), float(lin[ai])))
            wn = float(point.write_norm[r, t0])
            for ai, atom in enumerate(atom_ids):
                for eps in epsilons:
                    e_abs = float(eps) * (wn if options.epsilon_mode == "write_norm" else 1.0)
                    rows.append((p, [Add(layer, head, t0, matrix=unit[ai], scale=e_abs)], atom, float(eps), e_abs))
    edit_rows = [(p, es) for p, es, *_ in rows]
    wanted: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for (p, atom, t, tok, *_rest) in keys:
        wanted.setdefault((p, atom), []).append((t, tok))

    def reduce(i: int, logits):
        p, _, atom, _, _ = rows[i]
        return {(t, tok): float(logits[t, tok]) for t, tok in wanted[(p, atom)]}

    edited = run_rows(lens, ids, edit_rows, reduce, batch_rows=options.batch_rows, desc="attribution: edited",
                      show=options.progress)
    by_row = {(rows[i][0], rows[i][2], rows[i][3]): (rows[i][4], edited[i]) for i in range(len(rows))}
    measured = []
    for (p, atom, t, tok, rank, t0, exact, three, lin) in keys:
        for eps in epsilons:
            e_abs, values = by_row[(p, atom, float(eps))]
            for name, v in (("passage", p), ("atom", atom), ("epsilon", float(eps)), ("epsilon_abs", e_abs),
                            ("t0", t0), ("t", t), ("rank", rank), ("token", tok), ("exact", exact * e_abs),
                            ("three_factor", three * e_abs), ("linearised", lin * e_abs)):
                cols[name].append(v)
            measured.append(values[(t, tok)] - natives[(p, t, tok)])
    stats_exact = _stats(measured, cols["exact"], cols)
    stats_three = _stats(measured, cols["three_factor"], cols)
    stats_lin = _stats(measured, cols["linearised"], cols)
    return AttributionResult(
        options=options, layer=layer, head=head, atoms=atom_ids, epsilons=[float(e) for e in epsilons],
        measured=measured, stats_exact=stats_exact, stats_three_factor=stats_three, stats_linearised=stats_lin,
        elapsed_s=time.perf_counter() - started,
        notes=["three_factor: decay and read only (no erase, gated norm, MLP, later layers, final norm)",
               "exact: exact in-layer δo; direct path linearised (gated norm, W_O^h, final norm, W_U); the same "
               "layer's MLP and later layers ignored",
               "linearised: exact in-layer δo through the whole network's Jacobian at the native point (backprop)",
               "R² with zero fitted parameters unless named *_fitted"],
        **cols,
    )


def _stats(measured: list[float], predicted: list[float], cols: dict[str, list]) -> AttributionStats:
    m, p = np.asarray(measured), np.asarray(predicted)

    def groups(*names):
        out: dict[tuple, list[int]] = {}
        for i, key in enumerate(zip(*(cols[nm] for nm in names), strict=False)):
            out.setdefault(key, []).append(i)
        return out

    per_atom = {str(k[0]): st.r_squared(m[ix], p[ix]) for k, ix in groups("atom").items()}
    fitted, scales = {}, {}
    for k, ix in groups("atom").items():
        c = st.fitted_scale(m[ix], p[ix])
        scales[str(k[0])] = c
        fitted[str(k[0])] = st.r_squared(m[ix], c * p[ix])
    cells = np.array([st.r_squared(m[ix], p[ix]) for ix in groups("atom", "epsilon").values()])
    cells = cells[np.isfinite(cells)]
    q = np.quantile(cells, [0.25, 0.5, 0.75]) if cells.size else [float("nan")] * 3
    scale = max(float(np.abs(m).max()) if m.size else 0.0, 1e-30)
    return AttributionStats(
        r2=st.r_squared(m, p), r2_per_atom=per_atom, r2_cells_median=float(q[1]), r2_cells_q25=float(q[0]),
        r2_cells_q75=float(q[2]),
        r2_by_epsilon={str(k[0]): st.r_squared(m[ix], p[ix]) for k, ix in groups("epsilon").items()},
        r2_by_rank={str(k[0]): st.r_squared(m[ix], p[ix]) for k, ix in groups("rank").items()},
        r2_fitted_per_atom=fitted, fitted_scale_per_atom=scales,
        sign_agreement=st.sign_agreement(m, p, atol=1e-6 * scale),
    )
