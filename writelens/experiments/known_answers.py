"""The known-answer table of an associative-recall organism: every experiment beside the figure it must reach.

:func:`known_answers` runs the mechanism map (:mod:`.recall_map`), then, at the cells it located, the transplant
and the slot erasure (:mod:`.recall_edits`), and returns a :class:`KnownAnswers` whose ``rows`` each carry the
measured figure, its bar, whether it passes and its condition. The docs page "Known answers" holds the table of
the shipped organisms; the tests assert the bars at cheap sizes.
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
from writelens.tasks.mqar import MQARConfig

__all__ = ["KnownAnswersOptions", "KnownAnswerRow", "KnownAnswers", "known_answers"]


@dataclass
class KnownAnswersOptions(JsonMixin):
    """Sizes of the three experiments (probe passages of ``n_pairs`` pairs; each experiment its own seed)."""

    n_pairs: int = 8
    n_passages: int = 64
    magnitudes: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    progress: bool = False


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
    return KnownAnswers(o, mech, tr, er, rows)
