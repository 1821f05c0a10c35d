"""Steering by install (method.md §5; conventions.md "Steering key side", "Install magnitude").

For a prompt and a target token T, install at ``n_consecutive`` positions ending ``end_offset`` tokens before the
prompt's end the rank-1 write ``m · ‖k̂_t ⊗ v_t‖_F · k̂_t v*ᵀ`` (native write kept), with the value side
``v* = W_O^hᵀ W_U[T] / ‖·‖`` and the key side k̂_t (or the next query), then greedy-decode ``max_new_tokens``.
Targets are drawn per prompt from strata of the *unedited* model's rank of T in the first generated distribution.

Per stratum and magnitude: target inclusion (T among the generated tokens) native vs edited with Wilson CIs, the
first-step log-prob lift, the rank shift (native rank − edited rank; > 0 is an improvement) and the fraction of
trials whose rank improves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from writelens.edits import Install
from writelens.errors import ExperimentError
from writelens.experiments import stats as st
from writelens.experiments.base import ExperimentResult, JsonMixin, progress
from writelens.experiments.common import as_passages, site_tuple, token_direction, unembedding
from writelens.experiments.options import InstallOptions
from writelens.validate import check_int

__all__ = ["InstallOptions", "InstallCell", "InstallResult", "install_steering"]


@dataclass
class InstallCell(JsonMixin):
    """One (stratum, magnitude) cell: inclusion native / edited (Wilson CIs), mean first-step log-p lift, median
    rank shift and the fraction of trials whose first-step rank improves."""

    stratum: str
    magnitude: float
    n_trials: int
    inclusion_native: st.Interval
    inclusion_edited: st.Interval
    logp_lift_mean: float
    rank_shift_median: float
    frac_rank_improved: float


@dataclass
class InstallResult(ExperimentResult):
    """Per-trial columns: ``prompt``, ``target``, ``stratum``, ``magnitude``, ``native_rank``, ``edited_rank``
    (first step), ``logp_native``, ``logp_edited``, ``included_native``, ``included_edited``, ``generated``
    (edited continuations, token ids); ``cells``: per (stratum, magnitude)."""

    options: InstallOptions
    layer: int
    head: int
    n_prompts: int
    prompt_length: int
    install_positions: list[int]
    prompt: list[int]
    target: list[int]
    stratum: list[str]
    magnitude: list[float]
    native_rank: list[int]
    edited_rank: list[int]
    logp_native: list[float]
    logp_edited: list[float]
    included_native: list[bool]
    included_edited: list[bool]
    generated: list[list[int]]
    native_generated: list[list[int]]
    cells: list[InstallCell]
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def cell(self, stratum: str, magnitude: float) -> InstallCell:
        return next(c for c in self.cells if c.stratum == stratum and abs(c.magnitude - magnitude) < 1e-9)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"site": f"L{self.layer}H{self.head}", "n_trials": len(self.prompt),
                               "seed": self.options.seed, "key_side": self.options.key_side}
        for c in self.cells:
            tag = f"{c.stratum}@m{c.magnitude:g}"
            out[f"inclusion_native[{tag}]"] = c.inclusion_native.estimate
            out[f"inclusion_edited[{tag}]"] = c.inclusion_edited.estimate
            out[f"logp_lift[{tag}]"] = c.logp_lift_mean
            out[f"rank_shift_median[{tag}]"] = c.rank_shift_median
        return out


def _label(lo: int, hi: int) -> str:
    return f"{lo}-{hi}"


def _ranks(logits: torch.Tensor) -> torch.Tensor:
    """Rank (1 = argmax) of every token in each row of logits [n, V]."""
    order = logits.argsort(-1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(1, logits.shape[-1] + 1).expand_as(order))
    return ranks


def _check_targets(targets, n: int, vocab: int) -> list:
    """``targets`` as one list of ids for all prompts or one list per prompt, every id in 0..vocab-1."""
    listed = list(targets)
    per_prompt = bool(listed) and isinstance(listed[0], (list, tuple))
    if not listed or (per_prompt and len(listed) != n):
        raise ExperimentError(f"targets must be one non-empty list of token ids for every prompt or one list per "
                              f"prompt ({n} lists), got {targets!r}.")
    groups = listed if per_prompt else [listed]
    out = [[check_int(t, "install_steering targets", ExperimentError, 0, vocab - 1) for t in g] for g in groups]
    return out if per_prompt else out[0]


@torch.no_grad()
def install_steering(lens, site, prompts, targets=None, options: InstallOptions | None = None) -> InstallResult:
    """Install target directions at ``site`` in ``prompts`` (token ids [N, T]) and greedy-decode.

    Args:
        targets: None (draw from ``options.strata``), or explicit target ids: a list per prompt, or one list for
            all prompts (their stratum is labelled by the native rank bin, or ``"given"`` outside every bin).
    """
    options = options or InstallOptions()
    started = time.perf_counter()
    layer, head = site_tuple(site)
    lens.site(layer, head)  # a named error for a layer / head that is not a write site
    ids = as_passages(prompts)
    n, length = ids.shape
    if targets is not None:
        targets = _check_targets(targets, n, int(unembedding(lens).shape[0]))
    last = length - 1 - options.end_offset
    if last - options.n_consecutive + 1 < 0:
        raise ExperimentError(f"prompts of {length} tokens cannot hold {options.n_consecutive} install positions ending "
                              f"{options.end_offset} before the end; use longer prompts or fewer positions.")
    positions = tuple(range(last - options.n_consecutive + 1, last + 1))
    native = lens.generate(ids, max_new_tokens=options.max_new_tokens)
    first = native.logits[:, 0].float()  # [N, V]: the unedited first-step distribution
    ranks = _ranks(first)
    logp0 = torch.log_softmax(first.double(), -1)
    rng = np.random.default_rng(options.seed)
    trials = []  # (prompt, target, stratum)
    for p in range(n):
        if targets is not None:
            given = targets[p] if isinstance(targets[0], (list, tuple)) else targets
            for tok in given:
                r = int(ranks[p, int(tok)])
                lab = next((_label(lo, hi) for lo, hi in options.strata if lo <= r < hi), "given")
                trials.append((p, int(tok), lab))
            continue
        for lo, hi in options.strata:
            pool = ((ranks[p] >= lo) & (ranks[p] < hi)).nonzero().flatten().tolist()
            if pool:
                for tok in rng.choice(pool, size=min(options.targets_per_stratum, len(pool)), replace=False).tolist():
                    trials.append((p, int(tok), _label(lo, hi)))
    directions = token_direction(lens, layer, head, torch.tensor([t for _, t, _ in trials], dtype=torch.long))
    rows = [(i, m) for m in options.magnitudes for i in range(len(trials))]
    cols: dict[str, list] = {k: [] for k in ("prompt", "target", "stratum", "magnitude", "native_rank", "edited_rank",
                                             "logp_native", "logp_edited", "included_native", "included_edited",
                                             "generated", "native_generated")}
    for start in progress(range(0, len(rows), options.batch_rows), desc="install: generate", enabled=options.progress):
        chunk = rows[start : start + options.batch_rows]
        batch = ids[torch.tensor([trials[i][0] for i, _ in chunk])]
        edits = [Install(layer, head, positions, value=directions[i], magnitude=float(m), key_side=options.key_side,
                         batch=r) for r, (i, m) in enumerate(chunk)]
        out = lens.generate(batch, edits=edits, max_new_tokens=options.max_new_tokens)
        step0 = out.logits[:, 0].float()
        edited_ranks = _ranks(step0)
        logp1 = torch.log_softmax(step0.double(), -1)
        for r, (i, m) in enumerate(chunk):
            p, tok, lab = trials[i]
            gen = out.new_tokens[r].tolist()
            nat = native.new_tokens[p].tolist()
            for name, v in (("prompt", p), ("target", tok), ("stratum", lab), ("magnitude", float(m)),
                            ("native_rank", int(ranks[p, tok])), ("edited_rank", int(edited_ranks[r, tok])),
                            ("logp_native", float(logp0[p, tok])), ("logp_edited", float(logp1[r, tok])),
                            ("included_native", tok in nat), ("included_edited", tok in gen), ("generated", gen),
                            ("native_generated", nat)):
                cols[name].append(v)
    cells = []
    labels = [_label(lo, hi) for lo, hi in options.strata] + (["given"] if "given" in cols["stratum"] else [])
    for lab in labels:
        for m in options.magnitudes:
            ix = [k for k in range(len(cols["prompt"])) if cols["stratum"][k] == lab and cols["magnitude"][k] == m]
            if not ix:
                continue
            nr = np.array([cols["native_rank"][k] for k in ix])
            er = np.array([cols["edited_rank"][k] for k in ix])
            lift = np.array([cols["logp_edited"][k] - cols["logp_native"][k] for k in ix])
            cells.append(InstallCell(
                stratum=lab, magnitude=float(m), n_trials=len(ix),
                inclusion_native=st.proportion([cols["included_native"][k] for k in ix]),
                inclusion_edited=st.proportion([cols["included_edited"][k] for k in ix]),
                logp_lift_mean=float(lift.mean()), rank_shift_median=float(np.median(nr - er)),
                frac_rank_improved=float((er < nr).mean()),
            ))
    return InstallResult(
        options=options, layer=layer, head=head, n_prompts=n, prompt_length=length, install_positions=list(positions),
        cells=cells, elapsed_s=time.perf_counter() - started,
        notes=["v* = W_O^hᵀ W_U[T]/‖·‖ (gated norm, later layers, final norm ignored); native write kept; greedy",
               "ranks and log-probs are of the first generated distribution (logits at the last prompt position)"],
        **cols,
    )
