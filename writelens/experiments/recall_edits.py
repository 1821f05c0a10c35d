"""Known-answer edits on an associative-recall organism, at the writes :func:`~.recall_map.mechanism_map` located.

- :func:`transplant` (install a foreign pair): passages where the target key K is paired with V′ get the model's
  own write for K → V, taken from the same passage with K paired with V, at the located cells — added beside the
  native write (``"add"``), in place of it (``"replace"``: ``Delete`` + ``Add``), or as an ``Install`` along the
  passage's own key k̂_t with the foreign write's value direction (``"install"``: ``Delete`` + ``Install``; it changes
  an existing association rather than moving a pair in) — over magnitudes and numbers of cells. The answer at K's
  query must become V (native: ≈ 0). A write fixes only the product k ⊗ v, so ``install`` orients the foreign
  value against the passage's own key: ``sign(k̂_own · k̂_f) v_f`` (the direction of ``k̂_ownᵀ W_f``, the foreign
  write seen along the own key). On GDN and Mamba-2 the sign is always + ; on RWKV-7, where token shift puts the
  value token into the key, the K → V′ and K → V keys point opposite ways in about half the passages, and the
  unoriented value wrote −V there (docs "Known answers").
- :func:`slot_erasure_known`: erase the pair's slot, two ways, each against a random control.
  ``"write"`` (the F412 protocol with the slot known): remove the pair's rank-1 contribution at the located cells
  (``ΔS = −β k̂ vᵀ``), against a random rank-1 ``ΔS`` of equal Frobenius norm at the same cells.
  ``"key_projection"``: at the token before the target query, project the pair's slot key out of each located
  head's state, ``ΔS = −k̂ k̂ᵀ S_t``, where k̂ is the key side of the pair's writes carried to t (the rank-1
  difference between the native state and the state with those writes deleted: the write's own key where the decay
  is a scalar), against the same projection along a random key direction r̂, ``−r̂ r̂ᵀ S_t``. The target
  recall must drop while the other queries keep theirs; the controls must leave recall in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from writelens.edits import Add, Edit, Install, RandomAtom
from writelens.experiments.base import ExperimentResult, JsonMixin
from writelens.experiments.recall_map import (
    cell_positions,
    deletions,
    probe_batch,
    run_recall,
    target_pair,
)
from writelens.tasks.mqar import MQARBatch, MQARConfig, counterfactual, recall, unused_values

__all__ = ["TransplantOptions", "TransplantCell", "TransplantResult", "transplant", "ErasureKnownOptions",
           "ErasureKnownResult", "ErasureCondition", "slot_erasure_known"]

Mode = Literal["add", "replace", "install"]


@dataclass
class TransplantOptions(JsonMixin):
    """Options of :func:`transplant`: probe passages (N pairs, n passages, seed), modes, magnitudes (× the foreign
    write; for ``"install"``, × the passage's own ‖k̂_t ⊗ v_t‖ times the foreign write's β), and numbers of cells."""

    n_pairs: int = 8
    n_passages: int = 64
    modes: tuple[Mode, ...] = ("add", "replace", "install")
    magnitudes: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    seed: int = 21_000


@dataclass
class TransplantCell(JsonMixin):
    """One condition: the fraction of target queries answered V (the transplanted value) and V′ (the passage's own),
    and the recall of the other queries."""

    mode: str
    n_cells: int
    magnitude: float
    new_answer_rate: float
    old_answer_rate: float
    other_recall: float


@dataclass
class TransplantResult(ExperimentResult):
    options: TransplantOptions
    cells_used: list[tuple[int, int, int]]
    native_new_answer_rate: float
    native_old_answer_rate: float
    conditions: list[TransplantCell] = field(default_factory=list)

    def best(self, mode: str = "replace", magnitude: float = 1.0) -> TransplantCell:
        """The condition of ``mode`` at ``magnitude`` with every located cell."""
        n = len(self.cells_used)
        return next(c for c in self.conditions if c.mode == mode and c.magnitude == magnitude and c.n_cells == n)

    def summary(self) -> dict:
        o = self.options
        out = {"condition": f"N={o.n_pairs}, {o.n_passages} passages, cells {[list(c) for c in self.cells_used]}",
               "native_new_answer_rate": self.native_new_answer_rate,
               "native_old_answer_rate": self.native_old_answer_rate}
        for c in self.conditions:
            if c.n_cells == len(self.cells_used):
                out[f"{c.mode}_m{c.magnitude:g}_new_answer_rate"] = c.new_answer_rate
        return out


def _write_factors(lens, b: MQARBatch, cells) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per cell, the write at the target pair's cell of each row: key [B, d_k], value [B, d_v], coef [B]."""
    cache = lens.run(b.ids, cache=True, sites=sorted({(layer, h) for layer, h, _ in cells})).cache
    rows = torch.arange(len(b.ids))
    out = []
    for layer, h, off in cells:
        f = cache.write(layer, h)
        p = cell_positions(b, off)
        out.append((f.key[rows, p], f.value[rows, p], f.coef[rows, p]))
    return out


def _answers(lens, c: MQARBatch, edits: list[Edit], new: Tensor, old: Tensor) -> tuple[float, float, float]:
    logits = lens.run(c.ids, edits=edits).logits if edits else lens.run(c.ids).logits
    rows = torch.arange(len(c.ids))
    top = logits[rows, c.query_pos[:, 0]].argmax(-1)
    others = recall(logits, c)[:, 1:]
    return float((top == new).float().mean()), float((top == old).float().mean()), float(others.float().mean())


def transplant(lens, task: MQARConfig, cells: list[tuple[int, int, int]],
               options: TransplantOptions | None = None) -> TransplantResult:
    """Move the pair K → V into passages where K → V′ (see the module docstring); ``cells`` from the mechanism map,
    most effective first."""
    o = options or TransplantOptions()
    b = probe_batch(task, o.n_pairs, o.n_passages, o.seed)
    gen = torch.Generator().manual_seed(o.seed + 1)
    rows = torch.arange(len(b.ids))
    tp = target_pair(b)
    v_new = b.values[rows, tp]  # the transplanted value V
    c = counterfactual(b, tp, unused_values(task, b, gen), task)
    v_old = c.values[rows, tp]  # the passage's own value V′
    foreign = _write_factors(lens, b, cells)
    # the passage's own (K → V′) writes: their keys orient the install
    own = _write_factors(lens, c, cells) if "install" in o.modes else [(None, None, None)] * len(cells)
    res = TransplantResult(o, list(cells), *_answers(lens, c, [], v_new, v_old)[:2])
    for mode in o.modes:
        for k in range(1, len(cells) + 1):
            for m in o.magnitudes:
                edits: list[Edit] = [] if mode == "add" else deletions(c, cells[:k])
                for (layer, h, off), (key, value, coef), (own_key, _, _) in zip(cells[:k], foreign[:k], own[:k],
                                                                                 strict=True):
                    pos = cell_positions(c, off)
                    for r in range(len(rows)):
                        p = int(pos[r])
                        if mode == "install":
                            sign = -1.0 if float(own_key[r].float() @ key[r].float()) < 0 else 1.0
                            edits.append(Install(layer, h, (p,), value=sign * value[r], magnitude=m * float(coef[r]),
                                                 batch=r))
                        else:
                            edits.append(Add(layer, h, p, key=key[r], value=value[r], scale=m * float(coef[r]),
                                             batch=r))
                new, old, others = _answers(lens, c, edits, v_new, v_old)
                res.conditions.append(TransplantCell(mode, k, m, new, old, others))
    return res


@dataclass
class ErasureKnownOptions(JsonMixin):
    """Options of :func:`slot_erasure_known` (probe passages; the random controls' seed)."""

    n_pairs: int = 8
    n_passages: int = 64
    seed: int = 22_000


@dataclass
class ErasureCondition(JsonMixin):
    """Recall at the target query and at the row's other queries under one condition."""

    name: str
    target_recall: float
    other_recall: float


@dataclass
class ErasureKnownResult(ExperimentResult):
    """Conditions: ``native``, ``erase_write`` / ``random_write`` (equal-norm random rank-1 at the same cells),
    ``erase_key_projection`` / ``random_key_projection`` (the projection along a random key direction)."""

    options: ErasureKnownOptions
    cells: list[tuple[int, int, int]]
    conditions: list[ErasureCondition] = field(default_factory=list)

    def get(self, name: str) -> ErasureCondition:
        return next(c for c in self.conditions if c.name == name)

    def drop(self, name: str) -> float:
        return self.get("native").target_recall - self.get(name).target_recall

    def summary(self) -> dict:
        o = self.options
        out: dict = {"condition": f"N={o.n_pairs}, {o.n_passages} passages, cells {[list(c) for c in self.cells]}"}
        for c in self.conditions:
            out[f"{c.name}_target_recall"] = c.target_recall
            out[f"{c.name}_other_recall"] = c.other_recall
        return out


def slot_erasure_known(lens, task: MQARConfig, cells: list[tuple[int, int, int]],
                       options: ErasureKnownOptions | None = None) -> ErasureKnownResult:
    """Erase the target pair's slot at the located ``cells`` (see the module docstring), with random controls."""
    o = options or ErasureKnownOptions()
    b = probe_batch(task, o.n_pairs, o.n_passages, o.seed)
    res = ErasureKnownResult(o, list(cells))
    gen = torch.Generator().manual_seed(o.seed)

    def add(name: str, edits: list[Edit]) -> None:
        t, others = run_recall(lens, b, edits)
        res.conditions.append(ErasureCondition(name, float(t.float().mean()), float(others.float().mean())))

    add("native", [])
    add("erase_write", deletions(b, cells))
    rand: list[Edit] = []
    for layer, h, off in cells:
        pos = cell_positions(b, off)
        for r in range(len(b.ids)):  # RandomAtom with replace=False, scale=None: + a random atom of the write's norm
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            rand.append(RandomAtom(layer, h, int(pos[r]), scale=None, seed=seed, replace=False, batch=r))
    add("random_write", rand)

    heads = list(dict.fromkeys((layer, h) for layer, h, _ in cells))
    cache = lens.run(b.ids, cache=True, sites=heads).cache
    deleted = lens.run(b.ids, cache=True, sites=heads, edits=deletions(b, cells)).cache
    t = b.query_pos[:, 0] - 1
    erase: list[Edit] = []
    proj: list[Edit] = []
    for layer, h in heads:
        S = cache.state(layer, h, t)  # [B, d_k, d_v]
        # the slot as it stands at t: the pair's write carried to t by the transitions (rank 1; its key side is the
        # write's key only where the decay is a scalar — RWKV-7 decays per key channel and erases along κ̂)
        slot = S - deleted.state(layer, h, t)
        k = torch.linalg.svd(slot.double())[0][:, :, 0].float()
        u = torch.nn.functional.normalize(torch.randn(k.shape, generator=gen), dim=-1)
        for vec, out in ((k, erase), (u, proj)):
            delta = -vec[:, :, None] * torch.einsum("bk,bkv->bv", vec, S)[:, None, :]
            out.extend(Add(layer, h, int(t[r]), matrix=delta[r], batch=r) for r in range(len(b.ids)))
    add("erase_key_projection", erase)
    add("random_key_projection", proj)
    return res
