"""Firings per second of ``replacement_test`` on a shipped zoo model (a benchmark, not a test).

The site's zoo WriteSAE where one ships (gdn-tiny), else a seeded untrained BilinearSAE of the site's shape (its
firings are as many and as spread; only the speed is measured). 16 held-out passages × 128 tokens, 200 firings,
4 conditions per firing (atom, delete, random, null edit), KL at the last position. CPU time, ``--rounds`` runs,
min and median. Run it on two checkouts to compare them (the script uses only the public API).

Usage: python bench/replacement_speed.py [--model gdn-tiny] [--threads 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import writelens as wl
from writelens.experiments import ReplacementOptions, replacement_test

SITES = {"gdn-tiny": (4, 1), "mamba2-tiny": (4, 0), "rwkv7-tiny": (4, 0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gdn-tiny", choices=sorted(SITES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--firings", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = wl.zoo.load(args.model)
    lens = wl.WriteLens(model)
    layer, head = SITES[args.model]
    if (layer, head) in wl.zoo.saes(args.model):
        sae, which = wl.zoo.load_sae(args.model, layer, head), "zoo SAE"
    else:
        s = lens.site(layer, head)
        rank = 2 if args.model == "rwkv7-tiny" else 1
        sae = wl.sae.BilinearSAE(d_k=s.d_k, d_v=s.d_v, n_features=512, k=16, rank=rank, seed=0)
        which = "untrained seeded BilinearSAE"
    ids = wl.zoo.heldout_passages(16, 128, tok)
    opts = ReplacementOptions(max_firings=args.firings, progress=False, n_bootstrap=200, allow_foreign_sae=True)
    times, result = [], None
    for _ in range(args.rounds):
        t = time.process_time()
        result = replacement_test(lens, sae, (layer, head), ids, opts)
        times.append(time.process_time() - t)
    n = result.stats.n_firings
    print(f"{args.model} L{layer}H{head} ({which}), 16 x 128 tokens, {n} firings x 4 conditions, KL at last, "
          f"torch threads {torch.get_num_threads()}: replacement_test CPU {statistics.median(times):.2f} s median, "
          f"{min(times):.2f} s min over {args.rounds}  ->  {n / statistics.median(times):.1f} firings/s "
          f"(median; {n / min(times):.1f} at the min); win rate {result.stats.win_rate.estimate:.3f}")


if __name__ == "__main__":
    main()
