"""Feature cards: what one SAE feature of a site responds to and what its atom writes.

``feature_card(lens, sae, site, passages, feature)`` scans per-position states and returns the top-activating
contexts (the firing token highlighted), every nonzero activation (for a histogram), the firing rate, and the tokens
the atom's value side promotes and suppresses along the direct path (``W_U W_O^h w_i``; gated norm, later layers and
the final norm ignored). Plot it with :func:`writelens.plot.feature_card`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from writelens.errors import ExperimentError
from writelens.experiments.base import ExperimentResult, JsonMixin
from writelens.experiments.common import (
    as_passages,
    out_proj_slice,
    scan_site,
    single_head_sae,
    site_tuple,
    unembedding,
)
from writelens.validate import check_int

__all__ = ["Context", "FeatureCard", "feature_card"]


@dataclass
class Context(JsonMixin):
    """A window of tokens around a firing: ``tokens`` (strings), ``highlight`` (index of the firing token within
    the window), its ``activation``, ``passage`` and ``position``."""

    tokens: list[str]
    highlight: int
    activation: float
    passage: int
    position: int


@dataclass
class FeatureCard(ExperimentResult):
    """One feature of one site: top contexts, all nonzero activations, firing rate, and top promoted / suppressed
    tokens of its atom (``promoted`` [(token string, id, score)], score = ⟨W_U[tok], W_O^h w⟩)."""

    layer: int
    head: int
    feature: int
    n_positions: int
    firing_rate: float
    activations: list[float]
    contexts: list[Context]
    promoted: list[tuple[str, int, float]]
    suppressed: list[tuple[str, int, float]]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"site": f"L{self.layer}H{self.head}", "feature": self.feature, "firing_rate": self.firing_rate,
                "n_firings": len(self.activations),
                "max_activation": max(self.activations) if self.activations else 0.0,
                "top_promoted": [p[0] for p in self.promoted[:5]]}


def _decode_one(tokenizer, tok: int) -> str:
    return tokenizer.decode([tok]) if tokenizer is not None else f"<{tok}>"


@torch.no_grad()
def feature_card(lens, sae, site, passages, feature: int, *, n_contexts: int = 12, window: int = 12,
                 n_tokens: int = 10, tokenizer=None, scan=None, progress: bool = True,
                 allow_foreign_sae: bool = False) -> FeatureCard:
    """Build the card of ``feature`` at ``site`` from ``passages`` (token ids [N, T]).

    Args:
        window: tokens shown before the firing token (and ``window // 3`` after).
        n_tokens: promoted / suppressed tokens listed.
        scan: a :class:`writelens.experiments.common.Scan` of the same passages to reuse (saves a pass).
    """
    layer, head = site_tuple(site)
    for name, value, lo in (("n_contexts", n_contexts, 0), ("window", window, 0), ("n_tokens", n_tokens, 0)):
        check_int(value, f"feature_card {name}", ExperimentError, lo)
    sae = single_head_sae(sae, head, lens=lens, layer=layer, allow_foreign=allow_foreign_sae, what="feature_card")
    check_int(feature, "feature_card feature", ExperimentError, 0, sae.cfg.n_features - 1)
    tokenizer = tokenizer if tokenizer is not None else lens.tokenizer
    ids = as_passages(passages)
    if scan is None:
        scan = scan_site(lens, sae, (layer, head), ids, keep_logits=False, show=progress, desc="feature card")
    coef = (scan.values * (scan.indices == feature)).sum(-1)  # [N, T]
    nz = coef[coef > 0]
    flat = coef.flatten()
    top = flat.argsort(descending=True)[: min(n_contexts, int((flat > 0).sum()))]
    contexts = []
    n, length = ids.shape
    for idx in top.tolist():
        p, t = divmod(idx, length)
        lo, hi = max(0, t - window), min(length, t + window // 3 + 1)
        contexts.append(Context([_decode_one(tokenizer, int(x)) for x in ids[p, lo:hi]], t - lo, float(coef[p, t]),
                                p, t))
    atom = sae.atoms([feature])
    scores = unembedding(lens) @ (out_proj_slice(lens, layer, head) @ atom.value[0, 0].float())  # [V]
    order = scores.argsort(descending=True)

    def listing(ix):
        return [(_decode_one(tokenizer, int(i)), int(i), float(scores[i])) for i in ix]

    return FeatureCard(
        layer=layer, head=head, feature=int(feature), n_positions=int(coef.numel()),
        firing_rate=float((coef > 0).float().mean()), activations=[float(x) for x in nz.tolist()],
        contexts=contexts, promoted=listing(order[:n_tokens].tolist()),
        suppressed=listing(order.flip(0)[:n_tokens].tolist()),
        notes=["activations of per-position states (after each write); promoted tokens along the direct path "
               "W_U W_O^h w (gated norm, later layers and final norm ignored)"],
    )
