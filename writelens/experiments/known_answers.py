"""The known-answer table of an associative-recall organism: every experiment beside the figure it must reach.

:func:`known_answers` runs the mechanism map (:mod:`.recall_map`), then, at the cells it located, the transplant
and the slot erasure (:mod:`.recall_edits`), and returns a :class:`KnownAnswers` whose ``rows`` each carry the
measured figure, its bar, whether it passes and its condition. The docs page "Known answers" holds the table of
the shipped organisms; the tests assert the bars at cheap sizes.

With ``KnownAnswersOptions(sae_steps=n)`` the table also holds the WriteSAE rows (:mod:`.recall_sae`): one
BilinearSAE per located head trained ``n`` steps on the heads' writes, then its recovery of the pair-holding writes,
the replacement of those writes by their top atoms measured at the query's answer, and the attribution of the
answer logit — each beside its bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from writelens.experiments.base import ExperimentResult, JsonMixin
from writelens.experiments.recall_edits import (
    ErasureKnownOptions,
    ErasureKnownResult,
    TransplantOptions,
    TransplantResult,
    slot_erasure_known,
    transplant,
)
from writelens.experiments.recall_map import MapOptions, MechanismMap, mechanism_map
from writelens.experiments.recall_sae import (
    KnownReplacementResult,
    RecallSAEOptions,
    RecoveryResult,
    answer_attribution,
    sae_recovery,
    sae_replacement_known,
    train_recall_saes,
)
from writelens.tasks.mqar import MQARConfig

__all__ = ["KnownAnswersOptions", "KnownAnswerRow", "KnownAnswers", "known_answers"]


@dataclass
class KnownAnswersOptions(JsonMixin):
    """Sizes of the three experiments (probe passages of ``n_pairs`` pairs; each experiment its own seed)."""

    n_pairs: int = 8
    n_passages: int = 64
    magnitudes: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    progress: bool = False
    #: train one WriteSAE per located head for this many steps and add its rows (None: no SAE rows)
    sae_steps: int | None = None
    #: probe passages of the SAE recovery (per-key-token figures need several contexts per key token)
    sae_recovery_passages: int = 512


@dataclass
class KnownAnswerRow(JsonMixin):
    """One figure: ``measured`` against ``bar`` (``op`` is ``">="`` or ``"<="``), with its condition."""

    experiment: str
    figure: str
    measured: float
    op: str
    bar: float
    condition: str

    @property
    def passes(self) -> bool:
        return self.measured >= self.bar if self.op == ">=" else self.measured <= self.bar


@dataclass
class KnownAnswers(ExperimentResult):
    """The rows of the table and the full results they come from."""

    options: KnownAnswersOptions
    mechanism: MechanismMap
    transplant: TransplantResult
    erasure: ErasureKnownResult
    rows: list[KnownAnswerRow] = field(default_factory=list)
    sae_recovery: RecoveryResult | None = None
    sae_replacement: KnownReplacementResult | None = None
    sae_attribution: dict | None = None  # the attribution's summary (R² per predictor and ε)

    @property
    def passes(self) -> bool:
        return all(r.passes for r in self.rows)

    def summary(self) -> dict:
        return {f"{r.experiment}: {r.figure}": f"{r.measured:.3f} ({r.op} {r.bar}: "
                f"{'pass' if r.passes else 'MISS'}; {r.condition})" for r in self.rows}

    def table(self) -> str:
        """A markdown table (experiment, figure, measured, bar, pass, condition)."""
        lines = ["| experiment | figure | measured | bar | | condition |", "|---|---|---|---|---|---|"]
        lines += [f"| {r.experiment} | {r.figure} | {r.measured:.3f} | {r.op} {r.bar:g} | "
                  f"{'pass' if r.passes else '**miss**'} | {r.condition} |" for r in self.rows]
        return "\n".join(lines)


def known_answers(lens, task: MQARConfig, options: KnownAnswersOptions | None = None) -> KnownAnswers:
    """Run the organism's known-answer experiments and tabulate them against their bars."""
    o = options or KnownAnswersOptions()
    mech = mechanism_map(lens, task, MapOptions(n_pairs=o.n_pairs, n_passages=o.n_passages, progress=o.progress))
    cells = mech.located
    tr = transplant(lens, task, cells, TransplantOptions(n_pairs=o.n_pairs, n_passages=o.n_passages,
                                                         magnitudes=o.magnitudes))
    er = slot_erasure_known(lens, task, cells, ErasureKnownOptions(n_pairs=o.n_pairs, n_passages=o.n_passages))
    where = ", ".join(f"L{layer}H{h}{off:+d}" for layer, h, off in cells)
    n = f"N={o.n_pairs}, {o.n_passages} passages"
    mo = mech.options
    rows = [
        KnownAnswerRow("mechanism map", "target recall drop when the located writes are deleted",
                       mech.target_drop, ">=", mo.drop_target, f"{n}; located by deletion scan: {where}"),
        KnownAnswerRow("mechanism map", "other queries' recall under that deletion", mech.located_other_recall,
                       ">=", mo.keep_others, f"{n}; cells {where}"),
        KnownAnswerRow("transplant", "answer = transplanted V, native passage (K→V′)",
                       tr.native_new_answer_rate, "<=", 0.1, f"{n}; no edit"),
    ]
    for mode in ("replace", "install"):  # "add" (native V′ write kept) is in the dose table, without a bar
        rows.append(KnownAnswerRow(
            "transplant", f"answer = V after {mode} of the model's own K→V write ×1",
            tr.best(mode, 1.0).new_answer_rate, ">=", 0.9, f"{n}; {len(cells)} cell(s) {where}"))
    for name, label in (("erase_write", "write"), ("erase_key_projection", "key projection")):
        rows.append(KnownAnswerRow("erasure", f"target recall drop, slot erased ({label})", er.drop(name), ">=",
                                   0.8, f"{n}; cells {where}"))
        rows.append(KnownAnswerRow("erasure", f"other queries' recall, slot erased ({label})",
                                   er.get(name).other_recall, ">=", 0.9, f"{n}; cells {where}"))
        rnd = name.replace("erase", "random")
        rows.append(KnownAnswerRow("erasure", f"target recall, random control of equal norm ({label})",
                                   er.get(rnd).target_recall, ">=", 0.9, f"{n}; seeded random directions"))
    res = KnownAnswers(o, mech, tr, er, rows)
    if o.sae_steps:
        _add_sae_rows(lens, task, cells, res, RecallSAEOptions(
            n_pairs=o.n_pairs, n_passages=o.n_passages, n_recovery_passages=o.sae_recovery_passages,
            steps=o.sae_steps))
    return res


def _add_sae_rows(lens, task: MQARConfig, cells, res: KnownAnswers, so: RecallSAEOptions) -> None:
    """Train the WriteSAEs of the located heads and add their rows (recovery, replacement at the answer,
    attribution of the answer logit) to ``res``."""
    saes = train_recall_saes(lens, task, sorted({(layer, h) for layer, h, _ in cells}), so)
    rec = sae_recovery(lens, task, cells, saes, so)
    rep = sae_replacement_known(lens, task, cells, saes, so, scale="coefficient")
    att = answer_attribution(lens, task, cells[0], saes[cells[0][:2]], so)
    res.sae_recovery, res.sae_replacement, res.sae_attribution = rec, rep, att.summary()
    sae = (f"BilinearSAE {so.n_features} features, k={so.k}, rank 1, {so.steps} steps on the heads' writes "
           f"(N mixed {'/'.join(map(str, so.pair_counts))})")
    c0 = rec.per_cell[0]
    tag = "L{}H{}{:+d}".format(*c0.cell)
    rec_n = f"N={so.n_pairs}, {so.n_recovery_passages} probe passages, {c0.n_key_tokens} key tokens; {sae}"
    res.rows += [
        KnownAnswerRow("SAE recovery", f"key tokens whose top atom's key |cos| with k̂ >= 0.9 (mean over contexts), "
                       f"{tag}", c0.frac_key_tokens_ge_09, ">=", 0.8,
                       f"{rec_n}; median |cos| {c0.key_cos_median:.3f}; ceiling of one fixed key direction per key "
                       f"token: median {c0.ceiling_key_cos_median:.3f}, {c0.ceiling_frac_key_tokens_ge_09:.2f} of "
                       "tokens >= 0.9"),
        KnownAnswerRow("SAE recovery", f"median |cos| of the top atom's value factor with v̂, {tag}",
                       c0.value_cos_median, ">=", 0.9, rec_n)]
    n = f"N={so.n_pairs}, {len(rep.native_hit)} probe passages; scale coefficient; {sae}"
    res.rows += [
        KnownAnswerRow("SAE replacement", "atom beats delete (KL at the query's answer)", rep.win_kl.estimate, ">=",
                       0.9, f"{n}; [{rep.win_kl.lo:.3f}, {rep.win_kl.hi:.3f}] 95% Wilson CI, {rep.floor.n_ties} "
                       "ties below 10x the null-edit floor left out"),
        KnownAnswerRow("SAE replacement", "recall under the atom", rep.recall("atom"), ">=", 0.9,
                       f"{n}; native {float(sum(rep.native_hit)) / len(rep.native_hit):.3f}, delete "
                       f"{rep.recall('delete'):.3f}, fixed key⊗value atom {rep.recall('fixed'):.3f}"),
        KnownAnswerRow("SAE replacement", "firings where the random atom disturbs more than the atom",
                       rep.random_worst, ">=", 0.5, f"{n}; KL at the answer")]
    lin = att.stats_linearised.r2_by_epsilon
    small = min(lin, key=float)
    three = att.stats_three_factor.r2
    res.rows.append(KnownAnswerRow(
        "SAE attribution", f"R² of the linearised prediction of the answer logit at ε = {float(small):g} × write "
        "norm", lin[small], ">=", 0.99, f"{len(att.atoms)} atoms at {tag}, N={so.n_pairs}; by ε "
        + ", ".join(f"{float(e):g}: {v:.3f}" for e, v in sorted(lin.items(), key=lambda kv: float(kv[0])))
        + f"; three-factor R² {three:.3f} (reported, no bar: it leaves out the norms and later layers)"))
