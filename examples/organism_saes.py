"""WriteSAEs on the associative-recall organisms, against the writes known to hold each pair (issue: known answers).

    python examples/organism_saes.py                          # all three organisms, plain MSE and read-aligned
    python examples/organism_saes.py --models gdn-mqar --weights 1

Per organism and read weight w (``TrainConfig.read_weight``; 0 = plain MSE): one BilinearSAE (rank 1) per located
head, trained on that head's writes (``writelens.experiments.recall_sae``); then
- SAE recovery at each located cell: the top feature's |cos| with the write's own k̂ and v̂, the fraction of key
  tokens whose mean |cos| ≥ 0.9, and the ceiling of one fixed direction per key token;
- replacement at the pair-holding writes, effect at the target query's answer: atom beats delete (KL) with its
  Wilson 95 % interval and ties, recall under atom / delete / random / the best fixed (key token ⊗ value token) atom;
- attribution on the answer logit at ε = 0.01–0.1 × the write norm: R² of the linearised, direct-path and
  three-factor forms (zero fitted parameters).
Writes ``runs/organism_saes/<model>.json`` and prints one table, every figure with its condition.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import writelens as wl
from writelens.experiments.recall_sae import (
    RecallSAEOptions,
    answer_attribution,
    sae_recovery,
    sae_replacement_known,
    train_recall_saes,
)

#: the cells the mechanism map locates on each shipped organism (docs "Known answers"), most effective first
CELLS = {"gdn-mqar": [(0, 0, 1)], "mamba2-mqar": [(0, 0, 0), (0, 2, 0)], "rwkv7-mqar": [(0, 1, 0), (0, 0, 0)]}


def run(name: str, weight: float, options: RecallSAEOptions) -> dict:
    model, _ = wl.zoo.load(name)
    lens, task = wl.WriteLens(model), wl.zoo.task(name)
    cells = CELLS[name]
    o = RecallSAEOptions(**{**options.to_dict(), "read_weight": weight})
    started = time.perf_counter()
    saes = train_recall_saes(lens, task, sorted({(layer, h) for layer, h, _ in cells}), o, model_name=name)
    train_s = time.perf_counter() - started
    rec = sae_recovery(lens, task, cells, saes, o)
    reps = {s: sae_replacement_known(lens, task, cells, saes, o, scale=s) for s in ("coefficient", "matched_norm")}
    att = answer_attribution(lens, task, cells[0], saes[cells[0][:2]], o)
    c0 = rec.per_cell[0]
    row = {"model": name, "cells": cells, "read_weight": weight, "train_s": round(train_s, 1),
           "key_cos_median": c0.key_cos_median, "value_cos_median": c0.value_cos_median,
           "key_tokens_ge_09": c0.frac_key_tokens_ge_09, "ceiling_key_cos_median": c0.ceiling_key_cos_median,
           "ceiling_key_tokens_ge_09": c0.ceiling_frac_key_tokens_ge_09,
           "recovery": [c.to_dict() for c in rec.per_cell],
           "replacement": {s: r.summary() for s, r in reps.items()},
           "attribution": {**att.summary(), "epsilons": att.epsilons}}
    return row


def line(r: dict) -> str:
    c, m = r["replacement"]["coefficient"], r["replacement"]["matched_norm"]
    a = r["attribution"]

    def win(x):
        lo, hi = x["atom beats delete (KL) 95% CI"]
        return f"{x['atom beats delete (KL at the answer)']:.2f} [{lo:.2f}, {hi:.2f}] t={x['n_ties']}"

    return (f"{r['model']:<12} {r['read_weight']:<3g} | {r['key_cos_median']:5.2f} {r['value_cos_median']:5.2f} "
            f"{r['key_tokens_ge_09']:5.2f} ({r['ceiling_key_cos_median']:.2f}, {r['ceiling_key_tokens_ge_09']:.2f}) | "
            f"{win(c):<24} {win(m):<24} | {c['recall atom']:.2f} {m['recall atom']:.2f} {m['recall delete']:.2f} "
            f"{m['recall random']:.2f} {m['recall fixed (key-token ⊗ value-token directions)']:.2f} | "
            f"{a['r2_linearised']:6.3f} {a['r2_exact']:6.3f} {a['r2_three_factor']:6.3f}")


HEADER = ("model        w   | key|cos| val|cos| keys≥.9 (ceiling cos, ≥.9) | win coef [95% CI] ties    win matched [95% CI] "
          "ties | recall atom(coef, matched) delete random fixed | R² lin  direct  3-factor")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CELLS))
    parser.add_argument("--weights", nargs="+", type=float, default=[0.0, 1.0])
    parser.add_argument("--steps", type=int, default=RecallSAEOptions.steps)
    parser.add_argument("--features", type=int, default=RecallSAEOptions.n_features)
    parser.add_argument("--k", type=int, default=RecallSAEOptions.k)
    parser.add_argument("--n-train", type=int, default=RecallSAEOptions.n_train, help="training passages per N")
    parser.add_argument("--out", default="runs/organism_saes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    o = RecallSAEOptions(steps=args.steps, n_features=args.features, k=args.k, n_train=args.n_train)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        mine = [run(name, w, o) for w in args.weights]
        (out / f"{name}.json").write_text(json.dumps({"options": o.to_dict(), "rows": mine}, indent=1, default=str))
        rows += mine
        for r in mine:
            print(line(r), flush=True)
    print(f"\nWriteSAEs on the organisms' writes: BilinearSAE rank 1, {o.n_features} features, k={o.k}, {o.steps} "
          f"steps, batch {o.batch_size}, {o.n_train} passages per N in {o.pair_counts}; recovery on "
          f"{o.n_recovery_passages} probe passages (N={o.n_pairs}, key tokens with ≥{o.min_contexts} contexts), "
          f"replacement on {o.n_passages} (every located cell of the target pair edited; KL and recall at the target "
          "query; ties = atom and delete KL ≤ 10× the null edit's max), attribution at the first cell on the answer "
          f"logit, ε ∈ (0.01, 0.03, 0.1) × write norm; threads {args.threads}\n" + HEADER)
    for r in rows:
        print(line(r))
    return rows


if __name__ == "__main__":
    main()
