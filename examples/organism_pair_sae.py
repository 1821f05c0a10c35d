"""Diagnostic: can the WriteSAE trainer find one atom per (key, value) pair when it sees only pair-holding writes?

    python examples/organism_pair_sae.py --model gdn-mqar --features 4096 --k 1 --steps 3000

The organisms' SAEs in examples/organism_saes.py train on a recall head's writes at *every* position and learn
one atom per value token (61–108 distinct top features over 512 pair-holding writes, at 512 to 8,192 features),
although the pair-holding write is one fixed k̂ ⊗ v̂ per pair (examples/organism_ceilings.py). This trains the same
BilinearSAE recipe on the located cell's writes only (every pair of ``--passages`` passages per N in 4 / 8 / 16,
seeded apart from the probes), then runs the same recovery and replacement at the answer. It is a diagnostic of
the trainer, not the known-answer SAE: the training data are chosen with the answer in hand.
"""

from __future__ import annotations

import argparse
import time

import torch

import writelens as wl
from writelens.experiments.recall_sae import RecallSAEOptions, sae_recovery, sae_replacement_known
from writelens.sae import BilinearSAE
from writelens.sae.data import StateDataset
from writelens.sae.train import train_sae
from writelens.tasks.mqar import make_batch

CELLS = {"gdn-mqar": (0, 0, 1), "mamba2-mqar": (0, 0, 0), "rwkv7-mqar": (0, 1, 0)}


def pair_writes(lens, task, cell, passages: int, seed: int) -> torch.Tensor:
    layer, head, off = cell
    gen, out = torch.Generator().manual_seed(seed), []
    for n_pairs in (4, 8, 16):
        b = make_batch(task, passages, n_pairs, gen)
        for s in range(0, passages, 256):
            w = lens.run(b.ids[s : s + 256], cache=True, sites=[(layer, head)]).cache.write(layer, head)
            rows, pos = torch.arange(w.key.shape[0])[:, None], b.value_pos[s : s + 256] + off
            k, v, c = w.key[rows, pos], w.value[rows, pos], w.coef[rows, pos]
            out.append((c[..., None, None] * k[..., :, None] * v[..., None, :]).reshape(-1, k.shape[-1], v.shape[-1]))
    return torch.cat(out).float()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gdn-mqar", choices=list(CELLS))
    ap.add_argument("--features", type=int, default=4096)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--passages", type=int, default=2048, help="training passages per N")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _ = wl.zoo.load(args.model)
    lens, task, cell = wl.WriteLens(model), wl.zoo.task(args.model), CELLS[args.model]
    o = RecallSAEOptions(n_features=args.features, k=args.k, steps=args.steps)
    started = time.perf_counter()
    data = pair_writes(lens, task, cell, args.passages, o.seed + 11)
    site = lens.site(*cell[:2])
    sae = BilinearSAE(d_k=site.d_k, d_v=site.d_v, n_features=o.n_features, k=o.k, rank=1, seed=o.seed,
                      metadata={"model": args.model, "layer": cell[0], "head": cell[1], "target": "writes"})
    sae = train_sae(sae, StateDataset.from_tensor(data), o.train_config(), resume=False).sae.eval()
    saes = {cell[:2]: sae}
    rec = sae_recovery(lens, task, [cell], saes, o).per_cell[0]
    rep = sae_replacement_known(lens, task, [cell], saes, o).summary()
    lo, hi = rep["atom beats delete (KL) 95% CI"]
    print(f"{args.model} L{cell[0]}H{cell[1]}{cell[2]:+d}: BilinearSAE rank 1, {o.n_features} features, k={o.k}, "
          f"{o.steps} steps, batch {o.batch_size}, trained on the cell's {len(data)} pair-holding writes only "
          f"({args.passages} passages per N in 4/8/16); {time.perf_counter() - started:.0f} s, threads {args.threads}")
    print(f"  recovery (512 probe passages, N=8): key |cos| median {rec.key_cos_median:.3f}, value |cos| median "
          f"{rec.value_cos_median:.3f}, key tokens with mean |cos| >= 0.9: {rec.frac_key_tokens_ge_09:.3f}, "
          f"distinct top features {rec.n_distinct_top_features}")
    print(f"  replacement at the answer (64 probe passages, coefficient): atom beats delete "
          f"{rep['atom beats delete (KL at the answer)']:.3f} [{lo:.3f}, {hi:.3f}], ties {rep['n_ties']}; recall under "
          f"the atom {rep['recall atom']:.3f} (delete {rep['recall delete']:.3f}, native 1.000)")


if __name__ == "__main__":
    main()
