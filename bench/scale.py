"""writelens at published widths (a benchmark, not a test): every cost as a ratio to a plain forward, with peak RSS.

Per real config (``wl.zoo.random_init``: seeded random init of the real class, real widths, a slice of ``--layers``
layers with the same layer-type pattern), per dtype and passage length T, on one passage:

  forward          plain ``model(ids)`` (the baseline of every ratio)
  capture          ``lens.run(ids, cache=True)`` (every site)
  states           exact states at 4 positions of every site (``cache.layer_states``)
  native pass      ``NativePass`` of the passage from the middle recurrent layer on
  one edit         one ``Delete`` at the middle layer and position, native pass kept
  extract          ``wl.extract`` of ``--states`` states of one site to disk (states/s, bytes per state)
  sae train        BilinearSAE, d_k × d_v of the site, ``--features`` features, ``--sae-steps`` steps of 256 (states/s)
  replacement      ``replacement_test`` with ``--firings`` firings on ``--passages`` passages of T tokens

CPU time (process) and wall time; peak RSS growth over the step (resident set sampled every ms). Each step runs once
(they are seconds long at these widths); warm-up runs are excluded. Both edit paths are checked against the full
edited forward before timing.

Usage: python bench/scale.py --config qwen3.5-0.8b --layers 4 --seq 512 2048 --dtype float32 bfloat16
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import torch

import writelens as wl
from writelens.experiments import ReplacementOptions, replacement_test
from writelens.fastpath import NativePass
from writelens.sae import BilinearSAE
from writelens.sae.data import StateDataset
from writelens.sae.train import TrainConfig, train_sae


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20


def measure(fn):
    """(result, CPU s, wall s, peak RSS growth MB) of ``fn()``."""
    peak, done = [rss_mb()], threading.Event()
    base = peak[0]

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.001)

    t = threading.Thread(target=watch)
    t.start()
    c, w = time.process_time(), time.perf_counter()
    try:
        out = fn()
    finally:
        done.set()
        t.join()
    return out, time.process_time() - c, time.perf_counter() - w, max(peak[0], rss_mb()) - base


def run(args, dtype: torch.dtype, T: int) -> list[tuple[str, float, float, float, str]]:
    model = wl.zoo.random_init(args.config, layers=args.layers, dtype=dtype, overrides=args.overrides)
    lens = wl.WriteLens(model)
    L = lens.recurrent_layers
    layer, head = L[len(L) // 2], 0
    site = lens.site(layer, head)
    g = torch.Generator().manual_seed(0)
    vocab = lens.vocab_size
    x = torch.randint(3, vocab, (1, T), generator=g)
    rows: list[tuple[str, float, float, float, str]] = []
    with torch.no_grad():
        model(input_ids=x[:, :8])  # warm-up
        _, c0, w0, m0 = measure(lambda: model(input_ids=x))
        rows.append(("forward", c0, w0, m0, f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params"))
        cache, c, w, m = measure(lambda: lens.run(x, cache=True).cache)
        rows.append(("capture (every site)", c, w, m, f"{len(lens.sites)} sites"))
        pos = [T // 5, 2 * T // 5, 3 * T // 5, 4 * T // 5]
        _, c, w, m = measure(lambda: [cache.layer_states(i, pos) for i in L])
        rows.append(("exact states, 4 positions, every site", c, w, m, ""))
        cache = None  # (freed before the next step)
        native, c, w, m = measure(lambda: NativePass(lens, x, [layer]))
        rows.append((f"native pass (layer {layer} on)", c, w, m, ""))
        edit = [wl.Delete(layer, head, T // 2, timing="after_read")]
        got = native.run([(0, edit)], tail=1)[0]
        full = lens.run(x, edits=edit, _fast=False).logits[0, -1:]
        err = float((got.float() - full.float()).abs().max() / full.float().abs().max())
        _, c, w, m = measure(lambda: native.run([(0, edit)], tail=1))
        rows.append(("one edit (native pass kept, last logits)", c, w, m, f"rel. err vs full {err:.1e}"))
        native = None
    if "extract" in args.skip:
        return rows
    with tempfile.TemporaryDirectory() as tmp:
        per = max(1, min(T // 2, args.states))
        n_seq = -(-args.states // per)
        ids = torch.randint(3, vocab, (n_seq, T), generator=g)
        _, c, w, m = measure(lambda: wl.extract(lens, ids, sites=[(layer, head)], target="sampled_positions",
                                                out_dir=Path(tmp) / "states", positions_per_seq=per, seed=0,
                                                batch_size=1, progress=False))
        n_states = n_seq * per
        nbytes = sum(f.stat().st_size for f in (Path(tmp) / "states").rglob("*.safetensors"))
        rows.append(("extract", c, w, m, f"{n_states} states, {n_states / w:.0f} states/s, "
                                         f"{nbytes / n_states / 1024:.0f} KiB/state"))
        if "sae" in args.skip:
            return rows
        data = StateDataset.from_shards(Path(tmp) / "states", layer, head)
        sae = BilinearSAE(d_k=site.d_k, d_v=site.d_v, n_features=args.features, k=32, seed=0)
        cfg = TrainConfig(steps=args.sae_steps, batch_size=256, val_fraction=0.0, progress=False, log_every=10**9,
                          warmup_steps=1)
        _, c, w, m = measure(lambda: train_sae(sae, data, cfg, out_dir=Path(tmp) / "sae", resume=False))
        rows.append(("sae train", c, w, m, f"{site.d_k}x{site.d_v}, {args.features} features, "
                                           f"{args.sae_steps * 256 / w:.0f} states/s"))
    if "replacement" in args.skip:
        return rows
    passages = torch.randint(3, vocab, (args.passages, T), generator=g)
    opts = ReplacementOptions(max_firings=args.firings, progress=False, n_bootstrap=200, allow_foreign_sae=True,
                              batch_rows=args.passages)
    res, c, w, m = measure(lambda: replacement_test(lens, sae.eval(), (layer, head), passages, opts))
    rows.append(("replacement", c, w, m, f"{res.stats.n_firings} firings, {res.stats.n_firings / w:.1f} firings/s"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="qwen3.5-0.8b", choices=sorted(wl.zoo.real_configs()))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--states", type=int, default=4096)
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--sae-steps", type=int, default=20)
    ap.add_argument("--firings", type=int, default=64)
    ap.add_argument("--passages", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=None, help="override the vocabulary (default: the real one)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["extract", "sae", "replacement"],
                    help="leave out these (slow) steps")
    args = ap.parse_args()
    args.overrides = {"vocab_size": args.vocab} if args.vocab else None
    torch.set_num_threads(args.threads)
    print(f"{args.config} ({wl.zoo.real_configs()[args.config]}), first {args.layers} layers, "
          f"vocabulary {args.vocab or 'real'}, torch threads {torch.get_num_threads()}, one passage unless stated")
    for dtype_name in args.dtype:
        for T in args.seq:
            rows = run(args, getattr(torch, dtype_name), T)
            base = rows[0]
            print(f"\n{dtype_name}, T = {T}")
            print(f"{'step':44s} {'CPU s':>8s} {'wall s':>8s} {'x fwd':>7s} {'peak RSS +MB':>13s}  notes")
            for name, c, w, m, note in rows:
                print(f"{name:44s} {c:8.2f} {w:8.2f} {w / base[2]:7.2f} {m:13.0f}  {note}")


if __name__ == "__main__":
    main()
