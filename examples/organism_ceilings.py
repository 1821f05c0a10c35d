"""How fixed is each organism's pair-holding write: the best one-direction-per-group dictionary (docs "Known answers").

    python examples/organism_ceilings.py                    # all three organisms, 8,192 passages each (~1 min each)

Per organism, at its first located cell: every pair of 8,192 seeded passages (N = 8), grouped by key token, value
token or (key, value) pair; per group with ≥ 4 contexts the mean |cos| of the write's k̂ (and v̂) with the group's
top singular direction; printed: the median over groups and the share of groups at ≥ 0.9
(``writelens.experiments.recall_ceiling``).
"""

from __future__ import annotations

import argparse

import torch

import writelens as wl
from writelens.experiments.recall_ceiling import GROUPINGS, direction_ceilings

#: the first cell the mechanism map locates on each shipped organism (docs "Known answers")
CELLS = {"gdn-mqar": (0, 0, 1), "mamba2-mqar": (0, 0, 0), "rwkv7-mqar": (0, 1, 0)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(CELLS), choices=list(CELLS))
    ap.add_argument("--passages", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("organism (cell)        factor | " + " | ".join(f"by {g}: median (share >= 0.9)" for g in GROUPINGS))
    for name in args.models:
        model, _ = wl.zoo.load(name)
        res = direction_ceilings(wl.WriteLens(model), wl.zoo.task(name), CELLS[name], n_passages=args.passages)
        tag = "{} (L{}H{}{:+d})".format(name, *CELLS[name])
        for factor in ("key", "value"):
            cells = [res.get(factor, g) for g in GROUPINGS]
            print(f"{tag:<22} {factor:<6} | " + " | ".join(f"{c.median:.3f} ({c.share_ge_09:.2f}) of {c.n_groups}"
                                                            for c in cells), flush=True)
    print(f"\nevery pair of {args.passages} passages (N=8, seed 31000); groups with >= 4 contexts; mean |cos| with "
          f"the group's top singular direction; threads {args.threads}")


if __name__ == "__main__":
    main()
