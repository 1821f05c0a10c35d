"""WriteSAEs on an associative-recall organism, checked against the writes known to hold each pair.

- :func:`organism_writes` / :func:`train_recall_saes`: the native writes ``coef · k̂ vᵀ`` of the recall heads at
  every non-pad position of seeded training passages (N mixed), and one BilinearSAE per head trained on them.
- :func:`sae_recovery`: at each probe passage's pair-holding write (the cells :func:`~.recall_map.mechanism_map`
  located), encode the write with its head's SAE and take the *top* feature (largest contribution ``a_i ‖A_i‖``).
  Reported: ``|cos|`` of its key factor with the write's own k̂ (in that context) and of its value factor with the
  write's v̂; the fraction of writes with key ``|cos| ≥ 0.9``; the same per key token (mean over its contexts); and
  the ceiling of a dictionary of one fixed direction per key token (the top singular direction of that token's
  k̂ over contexts), since on GDN and RWKV-7 the write's key is not a function of the key token alone.
- :func:`sae_replacement_known`: replace every located write of the target pair by its top atom (at the SAE's
  coefficient, or at the write's norm), against ``Delete``, a seeded random rank-1 of the same norm, and the
  null edit (``Delete`` + ``Add`` of the native write), and the best *fixed* atom of a dictionary with one atom per
  (key token, value token) (:func:`fixed_directions`, at the write's norm, with that pair's sign: a write fixes
  only k ⊗ v, and on RWKV-7 the key's sign depends on the value token); the effect is measured **at the target
  query's answer**:
  KL(native ‖ edited) of the next-token distribution there (float64), the answer's log-probability and top-1
  recall. A firing whose atom and delete KLs both sit under 10× the null edit's maximum is a tie.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from writelens.edits import Delete, Edit, RandomAtom, Replace
from writelens.errors import ExperimentError
from writelens.experiments import stats as st
from writelens.experiments.base import ExperimentResult, JsonMixin
from writelens.experiments.common import kl_from_logits, run_rows
from writelens.experiments.floor import NoiseFloor, noise_floor, null_edits
from writelens.experiments.recall_edits import _write_factors
from writelens.experiments.recall_map import cell_positions, probe_batch, target_pair
from writelens.provenance import check_sae_provenance, model_provenance
from writelens.tasks.mqar import PAD, MQARConfig, make_batch

__all__ = ["RecallSAEOptions", "organism_writes", "train_recall_saes", "RecoveryResult", "sae_recovery",
           "KnownReplacementResult", "sae_replacement_known", "top_features", "answer_attribution"]

Cell = tuple[int, int, int]


@dataclass
class RecallSAEOptions(JsonMixin):
    """Training passages (``n_train`` per pair count in ``pair_counts``), the SAE (BilinearSAE, rank 1) and its
    recipe, and the probe passages (``n_pairs`` pairs, ``seed``): ``n_passages`` for replacement, ``n_recovery_passages``
    for recovery, whose per-key-token figures use key tokens seen in ≥ ``min_contexts`` passages."""

    pair_counts: tuple[int, ...] = (4, 8, 16)
    n_train: int = 256
    n_features: int = 512
    k: int = 4
    steps: int = 1500
    batch_size: int = 256
    lr: float = 3e-3
    read_weight: float = 0.0
    n_pairs: int = 8
    n_passages: int = 64
    n_recovery_passages: int = 512
    min_contexts: int = 4
    seed: int = 23_000

    def train_config(self):
        """The :class:`~writelens.sae.train.TrainConfig` of these options (the trainer's defaults otherwise: atoms
        initialised at data, resampling every 250 steps at the input)."""
        from writelens.sae.train import TrainConfig

        return TrainConfig(lr=self.lr, lr_min=self.lr / 10, warmup_steps=50, batch_size=self.batch_size,
                           steps=self.steps, seed=self.seed, val_fraction=0.1, eval_every=self.steps,
                           log_every=max(1, self.steps // 10), resample_every=250, progress=False,
                           read_weight=self.read_weight)


def organism_writes(lens, task: MQARConfig, heads: list[tuple[int, int]], pair_counts: tuple[int, ...],
                    n_per_count: int, seed: int, batch: int = 64) -> dict[tuple[int, int], Tensor]:
    """The native writes ``coef · k̂ vᵀ`` [n, d_k, d_v] of each head at every non-pad position ≥ 1 of seeded passages
    (``n_per_count`` per pair count)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[tuple[int, int], list[Tensor]] = {h: [] for h in heads}
    for n_pairs in pair_counts:
        b = make_batch(task, n_per_count, n_pairs, gen)
        for start in range(0, len(b.ids), batch):
            ids = b.ids[start : start + batch]
            keep = ids != PAD
            keep[:, 0] = False
            cache = lens.run(ids, cache=True, sites=heads).cache
            for layer, head in heads:
                f = cache.write(layer, head)
                w = f.coef[..., None, None] * f.key[..., :, None] * f.value[..., None, :]
                out[(layer, head)].append(w[keep].float())
    return {h: torch.cat(v) for h, v in out.items()}


def train_recall_saes(lens, task: MQARConfig, heads: list[tuple[int, int]], options: RecallSAEOptions | None = None,
                      *, model_name: str = "") -> dict[tuple[int, int], object]:
    """One BilinearSAE (rank 1) per head, trained on that head's writes (:func:`organism_writes`)."""
    from writelens.sae import BilinearSAE
    from writelens.sae.data import StateDataset
    from writelens.sae.train import train_sae

    o = options or RecallSAEOptions()
    writes = organism_writes(lens, task, heads, o.pair_counts, o.n_train, o.seed + 1)
    saes = {}
    for layer, head in heads:
        data = writes[(layer, head)]
        site = lens.site(layer, head)
        sae = BilinearSAE(d_k=site.d_k, d_v=site.d_v, n_features=o.n_features, k=o.k, rank=1, seed=o.seed,
                          metadata={**model_provenance(lens.model, model_name), "layer": layer, "head": head,
                                    "target": "writes"})
        cfg = o.train_config()
        metric = None
        if o.read_weight:  # the head's query second moment over passages of the largest pair count
            from writelens.extraction import query_metric

            ids = make_batch(task, o.n_train, max(o.pair_counts), torch.Generator().manual_seed(o.seed + 2)).ids
            metric = query_metric(lens, ids, (layer, head), attention_mask=ids != PAD, min_position=1)
        saes[(layer, head)] = train_sae(sae, StateDataset.from_tensor(data), cfg, resume=False,
                                        read_metric=metric).sae.eval()
    return saes


def top_features(sae, writes: Tensor) -> tuple[Tensor, Tensor]:
    """Per write [n, d_k, d_v]: the feature with the largest contribution ``a_i ‖A_i‖`` and that contribution (the
    coefficient-mode scale, ‖·‖_F). (LongTensor [n], Tensor [n]; feature −1 and 0 where none fires.)"""
    with torch.no_grad():
        codes = sae.encode_sparse(writes)
        norms = sae.atoms(torch.arange(sae.cfg.n_features)).matrix().flatten(1).norm(dim=-1)
        contrib = codes.values * norms[codes.indices]
        best = contrib.argmax(-1)
        idx = codes.indices.gather(-1, best[:, None])[:, 0]
        val = contrib.gather(-1, best[:, None])[:, 0]
    return torch.where(val > 0, idx, -1), val.clamp_min(0.0)


def _check_saes(lens, cells: list[Cell], saes: dict, what: str) -> None:
    """Every located cell's head has an SAE, recorded (where it records it) for that site and for writes."""
    for layer, h, _off in cells:
        if (layer, h) not in saes:
            raise ExperimentError(f"{what}: no SAE for L{layer}H{h}; pass saes={{(layer, head): sae}} for every cell.")
        check_sae_provenance(saes[(layer, h)], lens.model, layer, h, target="writes", what=what)


def _cell_writes(lens, b, cells: list[Cell]) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Per cell: (key k̂ [B, d_k], value [B, d_v], coef [B], position [B]) of the target pair's write."""
    return [(key.float(), value.float(), coef.float(), cell_positions(b, off))
            for (_l, _h, off), (key, value, coef) in zip(cells, _write_factors(lens, b, cells), strict=True)]


def _abs_cos(a: Tensor, b: Tensor) -> Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).abs()


@dataclass
class CellRecovery(JsonMixin):
    """Recovery at one located cell over the probe writes (n of them)."""

    cell: Cell
    n: int
    n_unencoded: int
    key_cos_median: float
    value_cos_median: float
    write_cos_median: float
    frac_key_ge_09: float
    frac_value_ge_09: float
    n_key_tokens: int
    frac_key_tokens_ge_09: float
    ceiling_key_cos_median: float
    ceiling_frac_key_tokens_ge_09: float
    n_distinct_top_features: int


@dataclass
class RecoveryResult(ExperimentResult):
    """Per located cell, how well the head's top SAE feature matches the pair-holding write (see module doc)."""

    options: RecallSAEOptions
    cells: list[Cell]
    per_cell: list[CellRecovery] = field(default_factory=list)

    def summary(self) -> dict:
        o = self.options
        out: dict = {"condition": f"N={o.n_pairs}, {o.n_recovery_passages} probe passages (seed {o.seed}); BilinearSAE "
                                  f"{o.n_features} features, k={o.k}, rank 1, {o.steps} steps on the heads' writes"}
        for c in self.per_cell:
            tag = "L{}H{}{:+d}".format(*c.cell)
            out[f"{tag} key |cos| median"] = c.key_cos_median
            out[f"{tag} key tokens with mean |cos| >= 0.9"] = c.frac_key_tokens_ge_09
            out[f"{tag} ceiling (fixed direction per key token)"] = c.ceiling_key_cos_median
            out[f"{tag} value |cos| median"] = c.value_cos_median
        return out


@torch.no_grad()
def sae_recovery(lens, task: MQARConfig, cells: list[Cell], saes: dict, options: RecallSAEOptions | None = None
                 ) -> RecoveryResult:
    """Match each located pair-holding write with its head's top SAE feature (see the module docstring)."""
    o = options or RecallSAEOptions()
    _check_saes(lens, cells, saes, "sae_recovery")
    b = probe_batch(task, o.n_pairs, o.n_recovery_passages, o.seed)
    key_tok = b.keys[torch.arange(len(b.ids)), target_pair(b)]
    res = RecoveryResult(o, list(cells))
    for (layer, h, off), (key, value, coef, _p) in zip(cells, _cell_writes(lens, b, cells), strict=True):
        sae = saes[(layer, h)]
        writes = coef[:, None, None] * key[:, :, None] * value[:, None, :]
        feat, _ = top_features(sae, writes)
        ok = feat >= 0
        atoms = sae.atoms(feat.clamp_min(0))
        kc = torch.where(ok, _abs_cos(atoms.key[:, 0], key), 0.0)
        vc = torch.where(ok, _abs_cos(atoms.value[:, 0], value), 0.0)
        wc = torch.where(ok, _abs_cos(atoms.matrix().flatten(1), writes.flatten(1)), 0.0)
        per_tok, ceil = [], []
        for tok in key_tok.unique().tolist():
            rows = key_tok == tok
            if int(rows.sum()) < o.min_contexts:
                continue
            per_tok.append(float(kc[rows].mean()))
            u = torch.linalg.svd(key[rows].double(), full_matrices=False)[2][0]  # best fixed direction for the token
            ceil.append(float(_abs_cos(key[rows], u.expand_as(key[rows])).mean()))
        per_tok_t, ceil_t = torch.tensor(per_tok), torch.tensor(ceil)
        res.per_cell.append(CellRecovery(
            (layer, h, off), len(b.ids), int((~ok).sum()), float(kc.median()), float(vc.median()), float(wc.median()),
            float((kc >= 0.9).double().mean()), float((vc >= 0.9).double().mean()), len(per_tok),
            float((per_tok_t >= 0.9).double().mean()), float(ceil_t.median()), float((ceil_t >= 0.9).double().mean()),
            int(feat[ok].unique().numel())))
    return res


Scale = Literal["coefficient", "matched_norm"]


@dataclass
class KnownReplacementResult(ExperimentResult):
    """Per firing (one per probe passage; every located cell of its target pair edited): KL at the target query's
    answer position, the answer's log-probability and top-1 hit, under ``atom`` / ``delete`` / ``random`` /
    ``null`` (and the native log-probability and hit)."""

    options: RecallSAEOptions
    scale: str
    cells: list[Cell]
    kl: dict[str, list[float]]
    logprob: dict[str, list[float]]
    hit: dict[str, list[bool]]
    native_logprob: list[float]
    native_hit: list[bool]
    win_kl: st.Interval
    win_logprob: st.Interval
    random_worst: float  # the fraction of firings whose random-atom KL exceeds the atom's
    floor: NoiseFloor
    notes: list[str] = field(default_factory=list)

    def recall(self, condition: str) -> float:
        return float(np.mean(self.hit[condition]))

    def summary(self) -> dict:
        o = self.options
        return {"condition": f"N={o.n_pairs}, {o.n_passages} probe passages (seed {o.seed}); cells "
                             f"{[list(c) for c in self.cells]}; scale {self.scale}; effect at the target query",
                "atom beats delete (KL at the answer)": self.win_kl.estimate,
                "atom beats delete (KL) 95% CI": [self.win_kl.lo, self.win_kl.hi],
                "atom beats delete (answer log-prob)": self.win_logprob.estimate,
                "recall native": float(np.mean(self.native_hit)), "recall atom": self.recall("atom"),
                "recall delete": self.recall("delete"), "recall random": self.recall("random"),
                "recall fixed (key-token ⊗ value-token directions)": self.recall("fixed"),
                **{f"median KL {c}": float(np.median(self.kl[c])) for c in ("atom", "delete", "random", "fixed")},
                "random KL > atom KL (fraction of firings)": self.random_worst, "n": len(self.native_hit),
                "n_ties": self.floor.n_ties}


@torch.no_grad()
def fixed_directions(lens, task: MQARConfig, cell: Cell, options: RecallSAEOptions | None = None
                     ) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """The best fixed factors of a dictionary with one atom per (key token, value token): per key token the top
    singular direction of its writes' k̂ at ``cell`` over ``n_recovery_passages`` passages (seed + 3), per value
    token that of v̂, each signed along its mean. ({key token: [d_k]}, {value token: [d_v]})."""
    o = options or RecallSAEOptions()
    b = probe_batch(task, o.n_pairs, o.n_recovery_passages, o.seed + 3)
    key, value, _coef, _p = _cell_writes(lens, b, [cell])[0]
    rows = torch.arange(len(b.ids))
    out: tuple[dict[int, Tensor], dict[int, Tensor]] = ({}, {})
    for tokens, vecs, table in ((b.keys[rows, target_pair(b)], key, out[0]),
                                (b.values[rows, target_pair(b)], value, out[1])):
        for tok in tokens.unique().tolist():
            x = vecs[tokens == tok].double()
            u = torch.linalg.svd(x, full_matrices=False)[2][0]
            table[int(tok)] = (u if float((x @ u).sum()) >= 0 else -u).float()
    return out


@torch.no_grad()
def sae_replacement_known(lens, task: MQARConfig, cells: list[Cell], saes: dict,
                          options: RecallSAEOptions | None = None, *, scale: Scale = "coefficient",
                          batch_rows: int = 64) -> KnownReplacementResult:
    """Replace the target pair's located writes by their top atoms, measured at the answer (see module doc)."""
    o = options or RecallSAEOptions()
    _check_saes(lens, cells, saes, "sae_replacement_known")
    b = probe_batch(task, o.n_pairs, o.n_passages, o.seed + 1)
    rows_idx = torch.arange(len(b.ids))
    qpos, answer = b.query_pos[:, 0], b.answers[:, 0]
    factors = _cell_writes(lens, b, cells)
    chosen = []
    for (layer, h, _off), (key, value, coef, _p) in zip(cells, factors, strict=True):
        writes = coef[:, None, None] * key[:, :, None] * value[:, None, :]
        feat, contrib = top_features(saes[(layer, h)], writes)
        chosen.append((feat, contrib, saes[(layer, h)].atoms(feat.clamp_min(0)), writes.flatten(1).norm(dim=-1)))
    fixed = [fixed_directions(lens, task, cell, o) for cell in cells]
    rows_k, rows_v = b.keys[rows_idx, target_pair(b)], b.values[rows_idx, target_pair(b)]
    conditions = ("atom", "delete", "random", "fixed", "null")
    rows: list[tuple[int, list[Edit]]] = []
    for r in range(len(b.ids)):
        per: dict[str, list[Edit]] = {c: [] for c in conditions}
        for ci, ((layer, h, _off), (key, value, coef, pos)) in enumerate(zip(cells, factors, strict=True)):
            feat, contrib, atoms, wnorm = chosen[ci]
            t = int(pos[r])
            s = float(contrib[r]) if scale == "coefficient" else float(wnorm[r])
            if int(feat[r]) < 0 or s <= 0:
                per["atom"].append(Delete(layer, h, t))  # nothing fires: the SAE's reconstruction is the bias only
            else:
                per["atom"].append(Replace(layer, h, t, key=atoms.key[r, 0], value=atoms.value[r, 0], scale=s))
            per["delete"].append(Delete(layer, h, t))
            per["random"].append(RandomAtom(layer, h, t, scale=s if s > 0 else None,
                                            seed=o.seed * 1_000_003 + r * 16 + ci))
            per["null"].extend(null_edits(layer, h, t, key[r], value[r], float(coef[r])))
            ku, vw = fixed[ci][0].get(int(rows_k[r])), fixed[ci][1].get(int(rows_v[r]))
            if ku is not None and vw is not None:
                # one atom per (key token, value token) carries that pair's sign: a write fixes only k ⊗ v, and on
                # RWKV-7 the key's sign along u_K depends on the value token (docs "Known answers")
                sign = -1.0 if float((key[r].float() @ ku) * (value[r].float() @ vw)) < 0 else 1.0
                per["fixed"].append(Replace(layer, h, t, key=ku, value=sign * vw, scale=float(wnorm[r])))
            else:
                per["fixed"].append(Delete(layer, h, t))
        rows.extend((r, per[c]) for c in conditions)
    native = lens.run(b.ids).logits
    nat_lp = torch.log_softmax(native[rows_idx, qpos].double(), -1)

    def reduce(i: int, logits: Tensor):
        r = rows[i][0]
        q = int(qpos[r])
        lp = torch.log_softmax(logits[q].double(), -1)
        kl = float(kl_from_logits(native[r, q], logits[q]))
        return kl, float(lp[int(answer[r])]), bool(int(lp.argmax()) == int(answer[r]))

    out = run_rows(lens, b.ids, rows, reduce, batch_rows=batch_rows, desc="known replacement", show=False)
    kl = {c: [out[i][0] for i in range(k, len(out), len(conditions))] for k, c in enumerate(conditions)}
    lp = {c: [out[i][1] for i in range(k, len(out), len(conditions))] for k, c in enumerate(conditions)}
    hit = {c: [out[i][2] for i in range(k, len(out), len(conditions))] for k, c in enumerate(conditions)}
    floor = noise_floor(kl["null"], {c: kl[c] for c in conditions if c != "null"}, multiple=10.0, null_edit="restore",
                        metric="KL at the answer", headline=("atom", "delete"), what="known-answer replacement")
    a, d, rnd = (np.asarray(kl[c]) for c in ("atom", "delete", "random"))
    tie = (np.abs(a) <= floor.threshold) & (np.abs(d) <= floor.threshold) if np.isfinite(floor.threshold) else \
        np.zeros(a.size, dtype=bool)
    la, ld = np.asarray(lp["atom"]), np.asarray(lp["delete"])
    return KnownReplacementResult(
        options=o, scale=scale, cells=list(cells), kl=kl, logprob=lp, hit=hit,
        native_logprob=[float(nat_lp[r, int(answer[r])]) for r in range(len(b.ids))],
        native_hit=[bool(int(nat_lp[r].argmax()) == int(answer[r])) for r in range(len(b.ids))],
        win_kl=st.proportion((a < d)[~tie]), win_logprob=st.proportion(la > ld),
        random_worst=float((rnd > a).mean()), floor=floor,
        notes=["one firing per probe passage: every located cell of its target pair edited together",
               f"scale {scale}: " + ("the top feature's a_i‖A_i‖" if scale == "coefficient" else "the write's ‖·‖_F"),
               "ties (atom and delete KL both ≤ 10× the null edit's max) excluded from the KL win rate"]
        + ([floor.warning] if floor.warning else []))


def answer_attribution(lens, task: MQARConfig, cell: Cell, sae, options: RecallSAEOptions | None = None, *,
                       epsilons: tuple[float, ...] = (0.01, 0.03, 0.1), n_atoms: int = 8):
    """Logit attribution (:func:`~.logit_attribution.attribution`) on the organism's **answer logit**: at each probe
    passage, ``ε A/‖A‖_F`` (ε × the native write's norm) is added at the target pair's ``cell`` and the change of the
    logit of the native top-1 token at the target query (the answer where recalled) is predicted by the zero-fit
    forms. Atoms: the ``n_atoms`` most frequent top features of the probe passages' pair-holding writes."""
    from writelens.experiments.logit_attribution import AttributionOptions, attribution

    o = options or RecallSAEOptions()
    b = probe_batch(task, o.n_pairs, o.n_passages, o.seed + 2)
    layer, h, _off = cell
    key, value, coef, pos = _cell_writes(lens, b, [cell])[0]
    feat, _ = top_features(sae, coef[:, None, None] * key[:, :, None] * value[:, None, :])
    counts = torch.bincount(feat[feat >= 0], minlength=sae.cfg.n_features)
    atoms = [int(a) for a in counts.argsort(descending=True)[:n_atoms] if counts[a] > 0]
    horizons = [[int(q - p)] for q, p in zip(b.query_pos[:, 0], pos, strict=True)]
    return attribution(lens, sae, (layer, h), b.ids, atoms, list(epsilons),
                       AttributionOptions(target_ranks=(1,), epsilon_mode="write_norm", progress=False),
                       t0s=pos.tolist(), horizons=horizons)
