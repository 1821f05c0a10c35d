"""Diagnostic of the WriteSAE trainer on a planted pair dictionary (the organisms' failure, reproduced in seconds).

    python examples/planted_pairs_sae.py                 # 16 keys x 16 values, d = 32, 512 features, k = 1

Writes ``norm(a_K + b_V) ⊗ v_V`` (plus 2 % key noise) for random (key, value) pairs: each pair is one fixed rank-1
matrix, so a dictionary of one atom per pair (256) reconstructs them with FVE ≈ 1. Printed: how many distinct top
features the trained SAE uses for 4,000 writes, their pair purity (the share of writes whose top feature's commonest
pair is theirs) and the FVE. On 2026-12-08 (1,500 steps, batch 256, lr 3e-3) BilinearSAE used 134 features at purity
0.57 and FVE 0.76 (FlatSAE 186, 0.75, 0.87): the trainer settles in per-value / per-key atoms, as on the organisms
(docs "Known answers").
"""

from __future__ import annotations

import argparse

import torch

from writelens.sae import BilinearSAE, FlatSAE
from writelens.sae.data import StateDataset
from writelens.sae.train import TrainConfig, train_sae


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=16)
    ap.add_argument("--values", type=int, default=16)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--value-share", type=float, default=0.8, help="scale of b_V against a_K in the key")
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--sae", choices=["bilinear", "flat"], default="bilinear")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    g, d, n = torch.Generator().manual_seed(0), args.dim, 40_000
    a, b = torch.randn(args.keys, d, generator=g), torch.randn(args.values, d, generator=g) * args.value_share
    v = torch.randn(args.values, d, generator=g)
    K, V = torch.randint(args.keys, (n,), generator=g), torch.randint(args.values, (n,), generator=g)
    k = torch.nn.functional.normalize(a[K] + b[V], dim=-1)
    k = torch.nn.functional.normalize(k + 0.02 * torch.randn(n, d, generator=g), dim=-1)
    writes = k[:, :, None] * v[V][:, None, :]
    cls = BilinearSAE if args.sae == "bilinear" else FlatSAE
    extra = {"rank": 1} if args.sae == "bilinear" else {}
    sae = cls(d_k=d, d_v=d, n_features=args.features, k=args.k, seed=0, **extra)
    cfg = TrainConfig(lr=args.lr, lr_min=args.lr / 10, warmup_steps=50, batch_size=256, steps=args.steps, seed=0,
                      val_fraction=0.1, eval_every=10**6, log_every=10**6, resample_every=250, progress=False)
    sae = train_sae(sae, StateDataset.from_tensor(writes), cfg, resume=False).sae.eval()
    w, pairs = writes[:4000], (K * args.values + V)[:4000]
    with torch.no_grad():
        top, recon = sae.encode_sparse(w).indices[:, 0], sae(w).recon
    purity = sum(int(torch.bincount(pairs[top == f]).max()) for f in top.unique()) / len(w)
    fve = 1 - float(((recon - w) ** 2).sum() / ((w - w.mean(0)) ** 2).sum())
    print(f"{args.sae} SAE, {args.features} features, k={args.k}, {args.steps} steps, lr {args.lr}: "
          f"{int(top.unique().numel())} distinct top features for {int(pairs.unique().numel())} planted pairs; "
          f"pair purity {purity:.3f}; FVE {fve:.3f} (4,000 writes, d={d}, value share {args.value_share})")


if __name__ == "__main__":
    main()
