"""Cache-slot erasure of one feature (method.md §6, "F412"), with the double-dipping fixed.

Firings of ``feature`` (positions where its coefficient a_t > 0) are split, seeded, into a **selection half** and a
**test half**. Erasing removes the atom's rank-1 contribution ``a_t · A_i`` from S_t (or the whole native write).
The *preferred token* is chosen on the selection half only: ``argmax_v Σ_firings (log p_native − log p_erased)[v]``.
On the test half the change ``Δ log p(preferred) = log p_erased − log p_native`` is reported (median with a bootstrap
CI, mean, Wilcoxon vs 0, ranks). Controls: at non-firing positions add ``m · a* · A_i`` (a* = the median natural
coefficient) for each control dose, and a dose-response over more magnitudes.

**Noise floor.** Every test firing also runs a null edit (erase, then add back exactly what was erased; or an ``Add``
of zero; :mod:`writelens.experiments.floor`) measured the same way: ``|Δ log p| ≤ floor_multiple × max |Δ_null|`` is
below the floor. Below-floor Δs count as ties with zero in the Wilcoxon tests (test half and every dose cell), the
result counts them, and a :class:`~writelens.errors.NoiseFloorWarning` is raised when most test firings are below.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from writelens.edits import Add, Delete
from writelens.errors import ExperimentError
from writelens.experiments import stats as st
from writelens.experiments.base import ExperimentResult, JsonMixin
from writelens.experiments.common import as_passages, run_rows, scan_site, single_head_sae, site_tuple
from writelens.experiments.floor import NoiseFloor, NullEdit, below_floor, noise_floor, null_edits
from writelens.experiments.options import FINITE_NONNEG, NONNEG, POS, POS_OR_NONE, check_options

__all__ = ["ErasureOptions", "ErasureResult", "DoseCell", "slot_erasure"]


@dataclass
class ErasureOptions(JsonMixin):
    """Options of :func:`slot_erasure`.

    Attributes:
        mode: ``"atom_contribution"`` (S_t − a_t A_i) or ``"native_write"`` (remove β k̂ vᵀ).
        measure: ``"next"`` (the distribution at t, the next token) or ``"last"`` (last position of the passage).
        selection_fraction: share of firings used to choose the preferred token.
        max_firings / min_position: firing pool cap and first usable position.
        control_doses: m of the non-firing additive control (``n_controls`` positions each).
        dose_response: magnitudes of the dose-response curve (``n_dose`` non-firing positions each).
        null_edit: the noise floor's null edit at each test firing, ``"restore"`` (erase and add it back) or
            ``"zero"``; floor_multiple: |Δ log p| ≤ this × the largest null |Δ| is below the floor.
        n_bootstrap, seed, batch_rows, scan_batch, progress: as elsewhere.
    """

    mode: Literal["atom_contribution", "native_write"] = "atom_contribution"
    measure: Literal["next", "last"] = "next"
    selection_fraction: float = 0.5
    max_firings: int | None = 300
    min_position: int = 1
    control_doses: tuple[float, ...] = (1.0, 2.0, 4.0)
    n_controls: int = 150
    dose_response: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    n_dose: int = 50
    null_edit: NullEdit = "restore"
    floor_multiple: float = 10.0
    n_bootstrap: int = 2000
    seed: int = 2026
    batch_rows: int = 48
    scan_batch: int = 8
    progress: bool = True
    #: use an SAE recorded for another site / target / model anyway (see writelens.provenance)
    allow_foreign_sae: bool = False

    def __post_init__(self) -> None:
        check_options(self, {"selection_fraction": ("num", 0.0), "max_firings": POS_OR_NONE, "min_position": NONNEG,
                             "control_doses": ("nums", True), "n_controls": NONNEG, "dose_response": ("nums", True),
                             "n_dose": NONNEG, "floor_multiple": FINITE_NONNEG, "n_bootstrap": NONNEG,
                             "seed": NONNEG, "batch_rows": POS, "scan_batch": POS})
        if not 0 < self.selection_fraction < 1:
            raise ExperimentError(f"ErasureOptions.selection_fraction={self.selection_fraction} must lie in (0, 1) "
                                  "(the rest of the firings is the test half).")


@dataclass
class DoseCell(JsonMixin):
    """Δ log p(preferred) at one additive dose on non-firing positions: median (bootstrap CI), mean, Wilcoxon
    (below-floor Δs as zeros), and how many Δs sit below the noise floor."""

    magnitude: float
    n: int
    median: st.BootstrapCI
    mean: float
    wilcoxon: st.WilcoxonResult
    n_below_floor: int | None = None


@dataclass
class ErasureResult(ExperimentResult):
    """Selection: ``preferred_token`` and its selection score (nats summed over the selection half). Test-half
    columns: ``passage``, ``position``, ``coefficient``, ``delta_logp``, ``rank_native``, ``rank_erased``,
    ``delta_logp_null`` (the null edit). Controls and dose-response: :class:`DoseCell` per magnitude. ``floor``: the
    :class:`~writelens.experiments.floor.NoiseFloor` of Δ log p (test firings below it, warning)."""

    options: ErasureOptions
    layer: int
    head: int
    feature: int
    n_firings: int
    n_selection: int
    median_activation: float
    preferred_token: int
    selection_score: float
    passage: list[int]
    position: list[int]
    coefficient: list[float]
    delta_logp: list[float]
    rank_native: list[int]
    rank_erased: list[int]
    test_median: st.BootstrapCI
    test_mean: float
    test_wilcoxon: st.WilcoxonResult
    controls: list[DoseCell]
    dose_response: list[DoseCell]
    delta_logp_null: list[float] = field(default_factory=list)
    floor: NoiseFloor | None = None
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = {"site": f"L{self.layer}H{self.head}", "feature": self.feature, "n_firings": self.n_firings,
               "n_test": len(self.delta_logp), "preferred_token": self.preferred_token,
               "selection_score": self.selection_score, "test_median_delta_logp": self.test_median.estimate,
               "test_median_lo": self.test_median.lo, "test_median_hi": self.test_median.hi,
               "test_mean_delta_logp": self.test_mean, "test_wilcoxon_p": self.test_wilcoxon.p_value,
               "rank_native_median": float(np.median(self.rank_native)) if self.rank_native else None,
               "rank_erased_median": float(np.median(self.rank_erased)) if self.rank_erased else None,
               "seed": self.options.seed}
        for c in self.controls:
            out[f"control_median[m{c.magnitude:g}]"] = c.median.estimate
        if self.floor is not None:
            out.update(self.floor.summary())
        return out


def _floored(d: np.ndarray, threshold: float) -> np.ndarray:
    """``d`` with its below-floor entries set to 0 (ties with zero for the Wilcoxon test)."""
    return np.where(below_floor(d, threshold), 0.0, d)


def _dose_cell(m: float, deltas: list[float], options: ErasureOptions, salt: int, threshold: float) -> DoseCell:
    d = np.asarray(deltas, dtype=np.float64)
    return DoseCell(float(m), int(d.size),
                    st.cluster_bootstrap(d, range(d.size), statistic=np.median, n_resamples=options.n_bootstrap,
                                         seed=options.seed + salt),
                    float(d.mean()) if d.size else float("nan"),
                    st.paired_wilcoxon(_floored(d, threshold), np.zeros_like(d)),
                    int(below_floor(d, threshold).sum()))


@torch.no_grad()
def slot_erasure(lens, sae, site, passages, feature: int, options: ErasureOptions | None = None) -> ErasureResult:
    """Erase ``feature``'s slot at its natural firings in ``passages`` (token ids [N, T]); see the module doc."""
    options = options or ErasureOptions()
    started = time.perf_counter()
    layer, head = site_tuple(site)
    sae = single_head_sae(sae, head, lens=lens, layer=layer, allow_foreign=options.allow_foreign_sae,
                          what="erasure")
    ids = as_passages(passages)
    n, length = ids.shape
    scan = scan_site(lens, sae, (layer, head), ids, min_position=options.min_position, batch_size=options.scan_batch,
                     show=options.progress)
    coef = (scan.values * (scan.indices == feature)).sum(-1)  # [N, T]
    coef[:, : options.min_position] = 0
    rng = np.random.default_rng(options.seed)
    firing = coef.gt(0).nonzero().tolist()
    firing = [firing[i] for i in rng.permutation(len(firing))][: options.max_firings]
    quiet = (coef == 0).nonzero().tolist()
    quiet = [q for q in quiet if q[1] >= options.min_position]
    quiet = [quiet[i] for i in rng.permutation(len(quiet))]
    n_sel = int(round(len(firing) * options.selection_fraction))
    selection, test = firing[:n_sel], firing[n_sel:]
    a_star = float(coef[coef > 0].median()) if bool((coef > 0).any()) else 0.0
    atom = sae.atoms([feature]).matrix()[0]  # unit factors × decoder scale: the decoded contribution per unit a

    def measure_pos(t: int) -> int:
        return t if options.measure == "next" else length - 1

    def erase(p, t):
        if options.mode == "native_write":
            return [Delete(layer, head, t)]
        return [Add(layer, head, t, matrix=atom, scale=-float(coef[p, t]))]

    wk, wv, wb = scan.write

    def null(p, t):  # erase and add back exactly what was erased (or add zero): mathematically no change
        if options.null_edit == "restore" and options.mode == "atom_contribution":
            return erase(p, t) + [Add(layer, head, t, matrix=atom, scale=float(coef[p, t]))]
        return null_edits(layer, head, t, wk[p, t], wv[p, t], float(wb[p, t]), options.null_edit)

    def native_logp(p: int, t: int) -> torch.Tensor:  # [V] float64, one position at a time (never [N, T, V])
        return torch.log_softmax(scan.logits[p, t].double(), -1)

    score = torch.zeros(scan.logits.shape[-1], dtype=torch.float64)  # −Σ Δ log p over the selection half

    def accumulate(i, logits):
        p, t = selection[i][0], measure_pos(selection[i][1])
        score.sub_(torch.log_softmax(logits[t].double(), -1) - native_logp(p, t))

    order = sorted(range(len(selection)), key=lambda i: tuple(selection[i]))
    selection = [selection[i] for i in order]
    run_rows(lens, ids, [(p, erase(p, t)) for p, t in selection], accumulate, batch_rows=options.batch_rows,
             desc="erasure", show=options.progress)
    preferred = int(score.argmax())

    def preferred_delta(rows, pts, desc: str) -> list[float]:
        """Δ log p(preferred) at each row's measured position, edited − native."""
        def reduce(i, logits):
            p, t = pts[i][0], measure_pos(pts[i][1])
            return float(torch.log_softmax(logits[t].double(), -1)[preferred] - native_logp(p, t)[preferred])
        return run_rows(lens, ids, rows, reduce, batch_rows=options.batch_rows, desc=desc, show=options.progress)

    test = sorted(test, key=tuple)
    deltas, r_nat, r_er, nulls = [], [], [], []
    if test:
        def reduce_test(i, logits):
            p, t = test[i]
            lp = torch.log_softmax(logits[measure_pos(t)].double(), -1)
            nat = native_logp(p, measure_pos(t))
            return (float(lp[preferred] - nat[preferred]), int((nat > nat[preferred]).sum()) + 1,
                    int((lp > lp[preferred]).sum()) + 1)
        out = run_rows(lens, ids, [(p, erase(p, t)) for p, t in test], reduce_test, batch_rows=options.batch_rows,
                       desc="erasure: test", show=options.progress)
        deltas, r_nat, r_er = (list(x) for x in zip(*out, strict=False))
        nulls = preferred_delta([(p, null(p, t)) for p, t in test], test, "erasure: null")
    floor = noise_floor(nulls, {"erase": deltas}, multiple=options.floor_multiple, null_edit=options.null_edit,
                        metric="|delta log p|", what=f"slot erasure L{layer}H{head} feature {feature} "
                                                     f"({options.mode}, measured at {options.measure})")

    def additive(points, m):
        rows = [(p, [Add(layer, head, t, matrix=atom, scale=float(m) * a_star)]) for p, t in points]
        return preferred_delta(rows, points, "erasure: additive")

    ctrl_pts = sorted(quiet[: options.n_controls], key=tuple)
    dose_pts = sorted(quiet[: options.n_dose], key=tuple)
    tau = floor.threshold
    controls = [_dose_cell(m, additive(ctrl_pts, m), options, 11 + k, tau) for k, m in enumerate(options.control_doses)]
    doses = [_dose_cell(m, additive(dose_pts, m), options, 101 + k, tau) for k, m in enumerate(options.dose_response)]
    d = np.asarray(deltas, dtype=np.float64)
    return ErasureResult(
        options=options, layer=layer, head=head, feature=int(feature), n_firings=len(firing), n_selection=n_sel,
        median_activation=a_star, preferred_token=preferred, selection_score=float(score[preferred]),
        passage=[p for p, _ in test], position=[t for _, t in test], coefficient=[float(coef[p, t]) for p, t in test],
        delta_logp=deltas, rank_native=r_nat, rank_erased=r_er,
        test_median=st.cluster_bootstrap(d, range(d.size), statistic=np.median, n_resamples=options.n_bootstrap,
                                         seed=options.seed),
        test_mean=float(d.mean()) if d.size else float("nan"),
        test_wilcoxon=st.paired_wilcoxon(_floored(d, tau), np.zeros_like(d)),
        controls=controls, dose_response=doses, delta_logp_null=nulls, floor=floor,
        elapsed_s=time.perf_counter() - started,
        notes=["preferred token chosen on the selection half only; statistics on the disjoint test half",
               "bootstrap of the median resamples firings (each its own cluster)",
               f"noise floor: {options.null_edit} null edit at every test firing; |delta log p| <= threshold is "
               "below the floor and a tie with 0 in the Wilcoxon tests"] + ([floor.warning] if floor.warning else []),
    )
