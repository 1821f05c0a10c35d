"""Feature amplification during generation (method.md §6, "newline amplification"), with §9.4's label bug fixed.

1. **Select** features by a token property from *per-position* states of selection passages: a position is a
   boundary when its next token (or itself, ``label='current_token'``) is in ``property_tokens``; score each
   feature by ``mean_boundary − mean_other`` of its coefficient; keep the top ``n_features`` by |score|.
2. **Push**: ``P = Σ_i sign(score_i) · |mean_boundary_i| · A_i`` (A_i the decoded atom), added as ``dose · P`` to the
   state at every generated position (``Add`` edits at generated positions; with ``start='last_prompt'`` also at
   the last prompt position, so the first generated token is steered too). The SAE error is untouched.
3. **Control**: ``n_features`` random alive features not selected, pushed the same way and rescaled to ‖P‖_F.
4. **Generate** with seeded sampling, the same seed and batch for every condition (common random numbers).
5. **Surface metrics** per continuation: the rate of property tokens; with a tokenizer the decoded newlines,
   paragraphs (count("\\n\\n") + 1) and mean word length. Paired vs native: mean difference with a bootstrap CI
   over prompts and a Wilcoxon test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from writelens.edits import Add
from writelens.errors import ExperimentError
from writelens.experiments import stats as st
from writelens.experiments.base import ExperimentResult, JsonMixin
from writelens.experiments.common import as_passages, scan_site, single_head_sae, site_tuple
from writelens.experiments.options import NONNEG, POS, POS_OR_NONE, check_options

__all__ = ["AmplifyOptions", "AmplifyResult", "Comparison", "feature_amplification", "tokens_matching",
           "surface_metrics"]


@dataclass
class AmplifyOptions(JsonMixin):
    """Options of :func:`feature_amplification`.

    Attributes:
        n_features: features selected (and random control features).
        label: ``"next_token"`` (boundary = the next token has the property) or ``"current_token"``.
        doses: push multipliers. control: ``"matched_random"`` or ``"none"``.
        start: ``"last_prompt"`` (edit from the last prompt position on) or ``"first_generated"`` (the reference
            code's order: the first generated token is never affected).
        max_new_tokens, temperature, top_k: sampling; seed: sampling, control choice.
        min_position: first position used for selection statistics.
        n_bootstrap: bootstrap resamples. scan_batch: passages per native pass. progress: bars.
    """

    n_features: int = 10
    label: Literal["next_token", "current_token"] = "next_token"
    doses: tuple[float, ...] = (2.0, 5.0)
    control: Literal["matched_random", "none"] = "matched_random"
    start: Literal["last_prompt", "first_generated"] = "last_prompt"
    max_new_tokens: int = 40
    temperature: float = 0.7
    top_k: int | None = None
    seed: int = 2026
    min_position: int = 1
    n_bootstrap: int = 2000
    scan_batch: int = 8
    progress: bool = True
    #: use an SAE recorded for another site / target / model anyway (see writelens.provenance)
    allow_foreign_sae: bool = False

    def __post_init__(self) -> None:
        check_options(self, {"n_features": POS, "doses": ("nums",), "max_new_tokens": POS, "top_k": POS_OR_NONE,
                             "seed": NONNEG, "min_position": NONNEG, "n_bootstrap": NONNEG, "scan_batch": POS})
        if not (isinstance(self.temperature, (int, float)) and not isinstance(self.temperature, bool)
                and 0 < self.temperature < float("inf")):
            raise ExperimentError(f"AmplifyOptions.temperature={self.temperature!r} must be a finite number > 0.")


@dataclass
class Comparison(JsonMixin):
    """A condition's metric vs native over the same prompts: mean difference (bootstrap CI over prompts), Wilcoxon."""

    condition: str
    metric: str
    mean_native: float
    mean_condition: float
    difference: st.BootstrapCI
    wilcoxon: st.WilcoxonResult


@dataclass
class AmplifyResult(ExperimentResult):
    """Selected and control features with their scores and pushes, the generations per condition (token ids) and
    per-condition metric columns (``metrics[condition][metric]`` → one value per prompt), and comparisons."""

    options: AmplifyOptions
    layer: int
    head: int
    n_boundary: int
    n_other: int
    features: list[int]
    scores: list[float]
    pushes: list[float]
    control_features: list[int]
    push_norm: float
    generations: dict[str, list[list[int]]]
    metrics: dict[str, dict[str, list[float]]]
    comparisons: list[Comparison]
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"site": f"L{self.layer}H{self.head}", "features": self.features,
                               "n_boundary": self.n_boundary, "seed": self.options.seed}
        for c in self.comparisons:
            out[f"{c.metric}[{c.condition}]"] = c.mean_condition
            out[f"{c.metric}[native]"] = c.mean_native
            out[f"{c.metric}_p[{c.condition}]"] = c.wilcoxon.p_value
        return out


def tokens_matching(tokenizer, substring: str = "\n") -> list[int]:
    """Ids of every token whose decoded text contains ``substring``."""
    vocab = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(vocab)])
    return [i for i, s in enumerate(texts) if substring in s]


def surface_metrics(tokens: list[int], property_tokens: set[int], tokenizer=None) -> dict[str, float]:
    """``property_rate`` (share of tokens in ``property_tokens``) and, with a tokenizer, ``newlines``,
    ``paragraphs`` and ``mean_word_length`` of the decoded text."""
    out = {"property_rate": float(np.mean([t in property_tokens for t in tokens])) if tokens else 0.0}
    if tokenizer is not None:
        text = tokenizer.decode(tokens)
        words = text.split()
        out["newlines"] = float(text.count("\n"))
        out["paragraphs"] = float(text.count("\n\n") + 1)
        out["mean_word_length"] = float(np.mean([len(w) for w in words])) if words else 0.0
    return out


@torch.no_grad()
def feature_amplification(lens, sae, site, selection_passages, prompts, property_tokens,
                          options: AmplifyOptions | None = None, tokenizer=None) -> AmplifyResult:
    """Select features for a token property on ``selection_passages`` ([N, T] ids) and amplify them while sampling
    continuations of ``prompts`` ([P, T'] ids); see the module doc. ``tokenizer`` (default ``lens.tokenizer``)
    adds the text metrics."""
    options = options or AmplifyOptions()
    started = time.perf_counter()
    layer, head = site_tuple(site)
    sae = single_head_sae(sae, head, lens=lens, layer=layer, allow_foreign=options.allow_foreign_sae,
                          what="amplify")
    tokenizer = tokenizer if tokenizer is not None else lens.tokenizer
    sel = as_passages(selection_passages)
    prop = {int(t) for t in property_tokens}
    scan = scan_site(lens, sae, (layer, head), sel, min_position=options.min_position, batch_size=options.scan_batch,
                     keep_logits=False, show=options.progress)
    codes = scan.dense_codes(sae.cfg.n_features)  # [N, T, F]
    in_prop = torch.tensor([[int(t) in prop for t in row] for row in sel.tolist()])
    if options.label == "next_token":
        boundary = torch.zeros_like(in_prop)
        boundary[:, :-1] = in_prop[:, 1:]
        usable = torch.ones_like(in_prop)
        usable[:, -1] = False
    else:
        boundary, usable = in_prop, torch.ones_like(in_prop)
    usable[:, : options.min_position] = False
    b, o = boundary & usable, ~boundary & usable
    if not bool(b.any()) or not bool(o.any()):
        raise ExperimentError("no boundary (or no non-boundary) positions in the selection passages for these "
                              "property tokens; pass other tokens or more selection passages.")
    mean_b, mean_o = codes[b].mean(0), codes[o].mean(0)
    score = mean_b - mean_o
    alive = (codes.flatten(0, 1) > 0).any(0)
    ranked = torch.where(alive, score.abs(), torch.full_like(score, -1.0)).argsort(descending=True)
    chosen = [int(i) for i in ranked[: options.n_features] if bool(alive[i])]
    atoms = sae.atoms(chosen).matrix() if chosen else torch.zeros(0, sae.cfg.d_k, sae.cfg.d_v)
    pushes = [float(torch.sign(score[i]) * mean_b[i].abs()) for i in chosen]
    push = torch.einsum("n,nkv->kv", torch.tensor(pushes), atoms) if chosen else torch.zeros(sae.cfg.d_k, sae.cfg.d_v)
    rng = np.random.default_rng(options.seed)
    pool = [i for i in alive.nonzero().flatten().tolist() if i not in set(chosen)]
    control_ids: list[int] = []
    conditions: dict[str, torch.Tensor | None] = {"native": None}
    for d in options.doses:
        conditions[f"amplify_x{d:g}"] = d * push
    if options.control == "matched_random" and pool:
        control_ids = sorted(rng.choice(pool, size=min(len(chosen), len(pool)), replace=False).tolist())
        c_pushes = torch.tensor([float(torch.sign(score[i]) * mean_b[i].abs()) for i in control_ids])
        c_push = torch.einsum("n,nkv->kv", c_pushes, sae.atoms(control_ids).matrix())
        c_push = c_push * (push.norm() / c_push.norm().clamp_min(1e-30))
        for d in options.doses:
            conditions[f"random_x{d:g}"] = d * c_push
    ids = as_passages(prompts)
    length = ids.shape[1]
    first = length - 1 if options.start == "last_prompt" else length
    positions = range(first, length + options.max_new_tokens - 1)
    generations, metrics = {}, {}
    for name, matrix in conditions.items():
        edits = [] if matrix is None else [Add(layer, head, p, matrix=matrix) for p in positions]
        out = lens.generate(ids, edits=edits, max_new_tokens=options.max_new_tokens, do_sample=True,
                            temperature=options.temperature, top_k=options.top_k, seed=options.seed)
        generations[name] = out.new_tokens.tolist()
        rows = [surface_metrics(g, prop, tokenizer) for g in generations[name]]
        metrics[name] = {k: [r[k] for r in rows] for k in rows[0]}
    comparisons = []
    for name in conditions:
        if name == "native":
            continue
        for metric, values in metrics[name].items():
            x, y = np.asarray(values), np.asarray(metrics["native"][metric])
            comparisons.append(Comparison(
                name, metric, float(y.mean()), float(x.mean()),
                st.cluster_bootstrap(x - y, range(x.size), n_resamples=options.n_bootstrap, seed=options.seed),
                st.paired_wilcoxon(x, y)))
    return AmplifyResult(
        options=options, layer=layer, head=head, n_boundary=int(b.sum()), n_other=int(o.sum()), features=chosen,
        scores=[float(score[i]) for i in chosen], pushes=pushes, control_features=control_ids,
        push_norm=float(push.norm()), generations=generations, metrics=metrics, comparisons=comparisons,
        elapsed_s=time.perf_counter() - started,
        notes=["labels from per-position states of the selection passages (method.md §9.4 fixed)",
               "same sampling seed and batch for every condition; control rescaled to the push's Frobenius norm"],
    )
