"""Where an associative-recall model keeps each key → value pair, found by deletion (the organisms' mechanism map).

Probe passages (:mod:`writelens.tasks.mqar`, N pairs each) have one *target pair* per row: the pair of the row's
first query. A **cell** is (layer, head, offset): the write of that head at position ``value_pos + offset`` of the
target pair (offset 0 is the value token, −1 the key, +1 the token after the value, where a width-4 short conv
sees both). :func:`mechanism_map` deletes each cell in turn (``Delete`` of that one write, exact propagation) and
measures top-1 recall at the target query and at the row's other queries; then it **locates** the pair-holding
writes greedily — the cells with the largest target drop, added one at a time until the target drop reaches
``drop_target`` (or ``max_cells`` are in) — and reports whether deleting them removes that pair's recall while the
other pairs keep theirs. It also ablates each head whole (every write of the head deleted) to say which heads carry
recall. Nothing about the location is assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from writelens.edits import Delete, Edit
from writelens.experiments.base import ExperimentResult, JsonMixin, progress
from writelens.tasks.mqar import MQARBatch, MQARConfig, make_batch, recall

__all__ = ["MapOptions", "CellEffect", "HeadAblation", "MechanismMap", "mechanism_map", "probe_batch",
           "cell_positions", "run_recall"]

Cell = tuple[int, int, int]  # (layer, head, offset from the target pair's value position)


@dataclass
class MapOptions(JsonMixin):
    """Options of :func:`mechanism_map`.

    Attributes:
        n_pairs: N of the probe passages; n_passages: how many (one target pair each).
        offsets: write offsets scanned, relative to the target pair's value position.
        drop_target: the target-recall drop the located cells must reach; keep_others: the recall the other
            queries must keep (both are the known-answer bars of docs "Known answers").
        max_cells: most cells the greedy location may combine.
        seed: seeds the probe passages (apart from the training and held-out seeds of the organisms).
    """

    n_pairs: int = 8
    n_passages: int = 64
    offsets: tuple[int, ...] = (-1, 0, 1, 2, 3)
    drop_target: float = 0.8
    keep_others: float = 0.9
    max_cells: int = 4
    seed: int = 20_000
    progress: bool = False


@dataclass
class CellEffect(JsonMixin):
    """Recall after deleting one cell's write (target query / the row's other queries), n_passages rows."""

    layer: int
    head: int
    offset: int
    target_recall: float
    other_recall: float


@dataclass
class HeadAblation(JsonMixin):
    """Recall over every query when every write of one head is deleted."""

    layer: int
    head: int
    recall: float


@dataclass
class MechanismMap(ExperimentResult):
    """Result of :func:`mechanism_map` (every figure over ``options.n_passages`` probe passages of
    ``options.n_pairs`` pairs; recall = top-1 at the query position)."""

    options: MapOptions
    native_target_recall: float
    native_other_recall: float
    cells: list[CellEffect]
    heads: list[HeadAblation]
    located: list[tuple[int, int, int]] = field(default_factory=list)
    located_target_recall: float = float("nan")
    located_other_recall: float = float("nan")

    @property
    def target_drop(self) -> float:
        return self.native_target_recall - self.located_target_recall

    @property
    def passes(self) -> bool:
        """The known answer: deleting the located writes drops the pair by ≥ drop_target, others keep ≥ keep."""
        o = self.options
        return self.target_drop >= o.drop_target and self.located_other_recall >= o.keep_others

    def best_cell(self) -> CellEffect:
        return min(self.cells, key=lambda c: (c.target_recall, -c.other_recall))

    def summary(self) -> dict:
        o = self.options
        return {
            "condition": f"N={o.n_pairs}, {o.n_passages} passages, offsets {list(o.offsets)}, top-1 recall",
            "native_target_recall": self.native_target_recall,
            "native_other_recall": self.native_other_recall,
            "located_cells": [list(c) for c in self.located],
            "located_target_recall": self.located_target_recall,
            "located_other_recall": self.located_other_recall,
            "target_drop": self.target_drop,
            "passes": self.passes,
            "heads_ablated_recall": {f"L{h.layer}H{h.head}": h.recall for h in self.heads},
        }

    def card_text(self) -> str:
        """A paragraph and tables for the organism's model card."""
        o = self.options
        rows = "\n".join(f"| L{c.layer}H{c.head} | {c.offset:+d} | {c.target_recall:.3f} | {c.other_recall:.3f} |"
                         for c in sorted(self.cells, key=lambda c: c.target_recall)[:8])
        heads = "\n".join(f"| L{h.layer}H{h.head} | {h.recall:.3f} |" for h in self.heads)
        cells = ", ".join(f"L{layer}H{h} offset {off:+d}" for layer, h, off in self.located)
        return (
            f"Deletion scan over every (layer, head) and write offsets {list(o.offsets)} from the pair's value token "
            f"({o.n_passages} held-out passages of N = {o.n_pairs}, one target pair each; "
            "`writelens.experiments.recall_map.mechanism_map`). Native recall: target "
            f"{self.native_target_recall:.3f}, other queries {self.native_other_recall:.3f}. Deleting **{cells}** "
            f"drops the target pair's recall to {self.located_target_recall:.3f} while the other queries keep "
            f"{self.located_other_recall:.3f} ({'meets' if self.passes else '**misses**'} the bar: drop ≥ "
            f"{o.drop_target}, others ≥ {o.keep_others}).\n\n"
            "| cell | offset | target recall | other recall |\n|---|---|---|---|\n" + rows +
            "\n\nWhole-head ablation (every write of the head deleted; recall over all queries):\n\n"
            "| head | recall |\n|---|---|\n" + heads
        )


def probe_batch(task: MQARConfig, n_pairs: int, n: int, seed: int) -> MQARBatch:
    """The seeded probe passages of every known-answer experiment."""
    return make_batch(task, n, n_pairs, torch.Generator().manual_seed(seed))


def target_pair(b: MQARBatch) -> Tensor:
    """The target pair of each row: the pair of its first query. LongTensor [B]."""
    return b.query_pair[:, 0]


def cell_positions(b: MQARBatch, offset: int) -> Tensor:
    """Per row, the absolute position of the target pair's write at ``offset``. LongTensor [B]."""
    rows = torch.arange(len(b.ids))
    return b.value_pos[rows, target_pair(b)] + offset


def run_recall(lens, b: MQARBatch, edits: list[Edit]) -> tuple[Tensor, Tensor]:
    """Top-1 hits of the edited run: target query [B] and other queries [B, Q-1] (bool)."""
    logits = lens.run(b.ids, edits=edits).logits if edits else lens.run(b.ids).logits
    hits = recall(logits, b)
    return hits[:, 0], hits[:, 1:]


def _rate(x: Tensor) -> float:
    return float(x.float().mean()) if x.numel() else float("nan")


def deletions(b: MQARBatch, cells: list[Cell]) -> list[Edit]:
    """``Delete`` of every cell's write in every row (rows grouped by position)."""
    edits: list[Edit] = []
    for layer, head, off in cells:
        pos = cell_positions(b, off)
        for p in pos.unique().tolist():
            if 0 <= p < b.ids.shape[1]:
                edits.append(Delete(layer, head, int(p), batch=(pos == p).nonzero().flatten().tolist()))
    return edits


def mechanism_map(lens, task: MQARConfig, options: MapOptions | None = None) -> MechanismMap:
    """Locate the writes that hold each pair by deletion (see the module docstring)."""
    o = options or MapOptions()
    b = probe_batch(task, o.n_pairs, o.n_passages, o.seed)
    t0, others0 = run_recall(lens, b, [])
    sites = [(s.layer, s.head) for s in lens.sites]
    grid = [(layer, h, off) for layer, h in sites for off in o.offsets]
    cells = []
    for layer, h, off in progress(grid, desc="deletion scan", enabled=o.progress):
        t, others = run_recall(lens, b, deletions(b, [(layer, h, off)]))
        cells.append(CellEffect(layer, h, off, _rate(t), _rate(others)))
    heads = []
    T = b.ids.shape[1]
    for layer, h in sites:
        t, others = run_recall(lens, b, [Delete(layer, h, p) for p in range(T)])
        heads.append(HeadAblation(layer, h, _rate(torch.cat([t[:, None], others], 1))))
    result = MechanismMap(o, _rate(t0), _rate(others0), cells, heads)
    order = sorted(cells, key=lambda c: (c.target_recall, -c.other_recall))
    located: list[Cell] = []
    for c in order[: o.max_cells]:
        located.append((c.layer, c.head, c.offset))
        t, others = run_recall(lens, b, deletions(b, located))
        result.located, result.located_target_recall, result.located_other_recall = list(located), _rate(t), \
            _rate(others)
        if result.target_drop >= o.drop_target:
            break
    return result
