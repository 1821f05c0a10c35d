"""How fixed is the write that holds a pair: the ceiling of a dictionary with one fixed direction per group.

The SAE-recovery bar of the known answers asks, per key token, for an atom whose key factor has ``|cos| ≥ 0.9``
with k̂ of the model's own pair-holding write, averaged over that key's contexts. Whether a rank-1 dictionary *can*
meet it depends on how the write's directions vary with context. :func:`direction_ceilings` groups every
pair-holding write at a located cell (all N pairs of each passage) by the key token, the value token, or the
(key, value) pair, and reports, per group with ≥ ``min_contexts`` contexts, the mean ``|cos|`` of the write's k̂
(and of its v̂) with the group's best fixed direction (the top right-singular vector of the group's unit vectors;
``|cos|``, since a write fixes only the product k ⊗ v and so each factor only up to sign). The median over groups
and the share of groups at ≥ 0.9 are what a dictionary of one atom per group could reach at best:

- grouped by key token: one atom per key (64 atoms on the shipped organisms);
- grouped by (key, value) pair: one atom per pair (64 × 64 = 4,096), the dictionary the recall mechanism needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from writelens.errors import ExperimentError
from writelens.experiments.base import ExperimentResult
from writelens.tasks.mqar import MQARConfig, make_batch
from writelens.validate import check_int

__all__ = ["DirectionCeiling", "CeilingResult", "direction_ceilings"]

GROUPINGS = ("key token", "value token", "pair")


@dataclass
class DirectionCeiling:
    """One factor (``"key"`` or ``"value"``) under one grouping: ``n_groups`` groups with enough contexts, the median
    over groups of the mean ``|cos|`` with the group's best fixed direction, and the share of groups at ≥ 0.9."""

    factor: str
    grouping: str
    n_groups: int
    median: float
    share_ge_09: float


@dataclass
class CeilingResult(ExperimentResult):
    """:func:`direction_ceilings` at one cell: ``rows`` (factor × grouping), with the condition it ran under."""

    cell: tuple[int, int, int]
    n_passages: int
    n_pairs: int
    min_contexts: int
    seed: int
    rows: list[DirectionCeiling] = field(default_factory=list)

    def get(self, factor: str, grouping: str) -> DirectionCeiling:
        return next(r for r in self.rows if r.factor == factor and r.grouping == grouping)

    def summary(self) -> dict:
        tag = "L{}H{}{:+d}".format(*self.cell)
        out: dict = {"condition": f"{tag}, every pair of {self.n_passages} passages (N={self.n_pairs}, seed "
                                  f"{self.seed}); groups with >= {self.min_contexts} contexts; mean |cos| with the "
                                  "group's top singular direction"}
        for r in self.rows:
            out[f"{r.factor} by {r.grouping}: median (share >= 0.9, groups)"] = (r.median, r.share_ge_09, r.n_groups)
        return out


def _ceiling(x: Tensor, labels: Tensor, min_contexts: int) -> list[float]:
    x = x.double() / x.double().norm(dim=-1, keepdim=True).clamp_min(1e-300)
    out = []
    for lab in labels.unique():
        rows = x[labels == lab]
        if len(rows) < min_contexts:
            continue
        u = torch.linalg.svd(rows, full_matrices=False)[2][0]
        out.append(float((rows @ u).abs().mean()))
    return out


@torch.no_grad()
def direction_ceilings(lens, task: MQARConfig, cell: tuple[int, int, int], *, n_passages: int = 8192,
                       n_pairs: int = 8, min_contexts: int = 4, seed: int = 31_000, batch: int = 512
                       ) -> CeilingResult:
    """The best one-fixed-direction-per-group dictionary at ``cell`` (layer, head, offset from the value token), for
    the key and the value factor of the pair-holding writes, grouped by key token, value token and pair (see the
    module docstring). ``n_passages`` seeded passages of ``n_pairs`` pairs; every pair of each passage counts."""
    n_passages = check_int(n_passages, "n_passages", ExperimentError, 1)
    n_pairs = check_int(n_pairs, "n_pairs", ExperimentError, 1)
    min_contexts = check_int(min_contexts, "min_contexts", ExperimentError, 1)
    batch = check_int(batch, "batch", ExperimentError, 1)
    layer, head, off = (int(c) for c in cell)
    lens.site(layer, head)  # a named error for a cell that is not a write site
    b = make_batch(task, n_passages, n_pairs, torch.Generator().manual_seed(seed))
    pos = b.value_pos + off  # [B, N]
    if int(pos.min()) < 0 or int(pos.max()) >= b.ids.shape[1]:
        raise ExperimentError(f"cell offset {off:+d} puts a pair's write outside the passages (positions "
                              f"{int(pos.min())}..{int(pos.max())} of {b.ids.shape[1]}); pass a located cell.")
    keys, values = [], []
    for s in range(0, n_passages, batch):
        w = lens.run(b.ids[s : s + batch], cache=True, sites=[(layer, head)]).cache.write(layer, head)
        rows = torch.arange(w.key.shape[0])[:, None]
        keys.append(w.key[rows, pos[s : s + batch]].reshape(-1, w.key.shape[-1]))
        values.append(w.value[rows, pos[s : s + batch]].reshape(-1, w.value.shape[-1]))
    labels = {"key token": b.keys.reshape(-1), "value token": b.values.reshape(-1),
              "pair": (b.keys * (int(b.values.max()) + 1) + b.values).reshape(-1)}
    res = CeilingResult((layer, head, off), n_passages, n_pairs, min_contexts, seed)
    for factor, x in (("key", torch.cat(keys)), ("value", torch.cat(values))):
        for grouping in GROUPINGS:
            c = torch.tensor(_ceiling(x, labels[grouping], min_contexts), dtype=torch.float64)
            res.rows.append(DirectionCeiling(factor, grouping, len(c), float(c.median()) if len(c) else float("nan"),
                                             float((c >= 0.9).double().mean()) if len(c) else float("nan")))
    return res
