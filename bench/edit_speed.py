"""Edit and capture speed on a shipped zoo model, measured side by side (a benchmark, not a test).

Every variant is timed in interleaved rounds (each round runs every variant once, in a rotated order), CPU time and
wall time, min and median over rounds, at the thread count given. Before timing, every variant's logits are
checked against the float64 oracle (``lens.run(..., oracle=True)``). Ratios are of medians.

Workloads (``Delete`` with ``timing="after_read"``, the edit a cache-branching user can express):
  (a) one edit at the middle layer and position of one passage (ratios to a plain forward of that passage);
  (b) the replacement test's shape: F firings at F different (passage, position) of 8 passages, one edited row
      per firing, at the site's layer;
  (c) capture: ``lens.run(cache=True)``; exact states at 4 positions of every site (``cache.layer_states``).

Baselines:
  fair rerun      what a careful user writes with transformers alone: the prefix [0, p] with ``use_cache=True``,
                  subtract the write from ``cache.layers[l].recurrent_states``, the suffix (p, T) in one call;
  token-by-token  the same branch stepped one token at a time (the reference code's habit; a second line);
  lens.run        writelens with a one-off native pass per call; ``_fast=False`` the full edited forward;
  NativePass      writelens with the native pass of the passages kept (built once: its cost is printed apart).

Usage: python bench/edit_speed.py [--model gdn-tiny] [--threads 1] [--seq 256] [--firings 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import writelens as wl
from writelens.fastpath import NativePass


def timed(fn) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def rounds(variants: dict, n: int) -> dict[str, dict[str, float]]:
    """Interleaved rounds: round r runs every variant once, starting at variant r mod len."""
    names = list(variants)
    cpu = {k: [] for k in names}
    wall = {k: [] for k in names}
    for r in range(n):
        for k in names[r % len(names):] + names[: r % len(names)]:
            c, w = timed(variants[k])
            cpu[k].append(c)
            wall[k].append(w)
    return {k: {"cpu_min": min(cpu[k]), "cpu_med": statistics.median(cpu[k]), "wall_min": min(wall[k]),
                "wall_med": statistics.median(wall[k])} for k in names}


def state_matrix(adapter, cache, layer: int) -> torch.Tensor:
    """The HF cache's recurrent state of ``layer`` in role order [B, H, d_k, d_v]."""
    s = cache.layers[layer].recurrent_states
    s = s[0] if isinstance(s, (list, tuple, dict)) else s
    return s if adapter.family != "mamba2" else s.transpose(-1, -2)


def fair_rerun(lens, passages, firings, writes, stepwise: bool = False) -> list[torch.Tensor]:
    """Suffix logits [T − p − 1, V] per firing (p, t, layer, head) via transformers' own cache."""
    model, adapter = lens.model, lens.adapter
    out = []
    kw = adapter.cache_keyword
    with torch.no_grad():
        for (p, t, layer, head), w in zip(firings, writes, strict=True):
            pre = model(input_ids=passages[p : p + 1, : t + 1], use_cache=True)
            cache = getattr(pre, "past_key_values", None) or getattr(pre, "cache_params", None)
            S = state_matrix(adapter, cache, layer)
            S[0, head] -= w.to(S.dtype)
            rest = passages[p : p + 1, t + 1 :]
            if stepwise:
                logits = [model(input_ids=rest[:, i : i + 1], **{kw: cache}, use_cache=True).logits[0]
                          for i in range(rest.shape[1])]
                out.append(torch.cat(logits))
            else:
                pos = torch.arange(t + 1, passages.shape[1])[None]
                extra = {"position_ids": pos} if adapter.family == "gdn" else {}
                out.append(model(input_ids=rest, **{kw: cache}, use_cache=True, **extra).logits[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gdn-tiny")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--passages", type=int, default=8)
    ap.add_argument("--firings", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--stepwise-sample", type=int, default=2, help="token-by-token firings timed (then scaled)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = wl.zoo.load(args.model)
    lens = wl.WriteLens(model)
    L = lens.recurrent_layers
    g = torch.Generator().manual_seed(0)
    vocab = lens.vocab_size
    x = torch.randint(3, vocab, (args.passages, args.seq), generator=g)
    mid_layer, mid_pos = L[len(L) // 2], args.seq // 2
    head = 1 % lens.adapter.num_heads
    native = lens.run(x, cache=True, sites=[(layer, h) for layer in L for h in range(lens.adapter.num_heads)]).cache

    # (a) one mid-layer mid-position edit of one passage (its ratios are to a plain forward of that passage)
    x1 = x[:1]
    one = [wl.Delete(mid_layer, head, mid_pos, batch=0, timing="after_read")]
    single = [(0, mid_pos, mid_layer, head)]
    w_single = [native.write_matrix(mid_layer, head, mid_pos)[0]]
    keep1 = NativePass(lens, x1, [mid_layer])
    keep = NativePass(lens, x, [mid_layer])
    # (b) F firings at distinct (passage, position), one row each, at the middle layer
    pos = torch.randperm(args.seq - 2, generator=g)[: args.firings] + 1
    firings = [(i % args.passages, int(pos[i]), mid_layer, int(torch.randint(lens.adapter.num_heads, (1,),
                                                                           generator=g))) for i in range(args.firings)]
    writes = [native.write_matrix(layer, h, t)[p] for p, t, layer, h in firings]
    rows = [(p, [wl.Delete(layer, h, t, timing="after_read")]) for p, t, layer, h in firings]
    row_ids = x[torch.tensor([p for p, *_ in firings])]
    batched = [wl.Delete(layer, h, t, batch=i, timing="after_read") for i, (p, t, layer, h) in enumerate(firings)]

    # checks before timing: every variant against the float64 oracle
    ref1 = lens.run(x[:1], edits=[wl.Delete(mid_layer, head, mid_pos, timing="after_read")], oracle=True).logits[0]
    checks = {
        "fair rerun": fair_rerun(lens, x, single, w_single)[0] - ref1[mid_pos + 1:],
        "lens.run": lens.run(x1, edits=one).logits[0] - ref1,
        "NativePass": keep1.run([(0, one)])[0] - ref1,
    }
    scale = ref1.abs().max()
    err_b = 0.0
    for i in range(0, args.firings, max(1, args.firings // 4)):
        p, t, layer, h = firings[i]
        ref = lens.run(x[p : p + 1], edits=rows[i][1], oracle=True).logits[0]
        err_b = max(err_b, float((keep.run([rows[i]])[0] - ref).abs().max() / ref.abs().max()),
                    float((fair_rerun(lens, x, [firings[i]], [writes[i]])[0] - ref[t + 1:]).abs().max()
                          / ref.abs().max()))
    print(f"model {args.model} ({type(model).__name__}), {args.passages} passages x {args.seq} tokens, "
          f"torch threads {torch.get_num_threads()}, {args.rounds} interleaved rounds, CPU time (wall in brackets)")
    print("checked against the float64 oracle: max rel. error " + ", ".join(
        f"{k} {float(v.abs().max() / scale):.1e}" for k, v in checks.items()) + f"; workload (b) {err_b:.1e}")

    with torch.no_grad():
        res = rounds({
            "plain forward, 1 passage": lambda: model(input_ids=x1),
            "(a) fair rerun": lambda: fair_rerun(lens, x, single, w_single),
            "(a) lens.run": lambda: lens.run(x1, edits=one),
            "(a) lens.run _fast=False": lambda: lens.run(x1, edits=one, _fast=False),
            "(a) NativePass.run (native pass kept)": lambda: keep1.run([(0, one)]),
            "plain forward": lambda: model(input_ids=x),
            "native pass (once per passage set)": lambda: NativePass(lens, x, [mid_layer]),
            "(b) fair rerun": lambda: fair_rerun(lens, x, firings, writes),
            "(b) lens.run, one row per firing": lambda: lens.run(row_ids, edits=batched),
            "(b) NativePass (incl. its native pass)": lambda: NativePass(lens, x, [mid_layer]).run(rows),
            "(b) NativePass rows only (native pass kept)": lambda: keep.run(rows),
            "(c) capture: lens.run(cache=True)": lambda: lens.run(x, cache=True),
            "(c) exact states, 4 positions, every site": lambda: _states(lens, x),
        }, args.rounds)
    print(f"{'variant':48s} {'CPU med':>9s} {'CPU min':>9s}   x forward: med   min  (wall med)")
    for k, r in res.items():
        base = res["plain forward, 1 passage" if k.startswith("(a)") else "plain forward"]
        print(f"{k:48s} {r['cpu_med'] * 1e3:8.1f}ms {r['cpu_min'] * 1e3:8.1f}ms  {r['cpu_med'] / base['cpu_med']:13.3f}"
              f" {r['cpu_min'] / base['cpu_min']:5.3f}  ({r['wall_med'] / base['wall_med']:.3f})")
    n = args.firings
    fair, mine = res["(b) fair rerun"]["cpu_med"], res["(b) NativePass (incl. its native pass)"]["cpu_med"]
    print(f"(b) per firing: fair rerun {fair / n * 1e3:.2f} ms, lens.run {res['(b) lens.run, one row per firing']['cpu_med'] / n * 1e3:.2f} ms, "
          f"NativePass {mine / n * 1e3:.2f} ms  ->  NativePass {fair / mine:.2f}x faster than the fair rerun "
          f"(min: {res['(b) fair rerun']['cpu_min'] / res['(b) NativePass (incl. its native pass)']['cpu_min']:.2f}x)")
    rows_only = res["(b) NativePass rows only (native pass kept)"]
    print(f"(b) with the native pass kept (as the experiments keep one for all conditions of a firing): "
          f"{rows_only['cpu_med'] / n * 1e3:.2f} ms per firing  ->  {fair / rows_only['cpu_med']:.2f}x faster than the "
          f"fair rerun (min: {res['(b) fair rerun']['cpu_min'] / rows_only['cpu_min']:.2f}x)")
    kept = sum(tensors_in(NativePass(lens, x, [mid_layer]).record).values()) / 2**20
    plain_peak = peak_rss_growth(args, "model(input_ids=x)")
    native_peak = peak_rss_growth(args, f"NativePass(lens, x, [{mid_layer}])")
    print(f"(d) memory, {args.passages} x {args.seq} tokens: plain forward peak RSS +{plain_peak:.0f} MB; building "
          f"the native pass (layer {mid_layer} on) peak +{native_peak:.0f} MB ({native_peak / plain_peak:.2f}x), "
          f"of which it keeps {kept:.0f} MB of tensors (logits, layer inputs, kernel and conv inputs, KV)")
    sample = firings[: args.stepwise_sample]
    c, w = timed(lambda: fair_rerun(lens, x, sample, writes[: len(sample)], stepwise=True))
    print(f"second baseline, token-by-token branch: {c / len(sample) * 1e3:.1f} ms CPU per firing "
          f"(timed on {len(sample)}, once)  ->  NativePass {c / len(sample) / (mine / n):.1f}x faster")


def tensors_in(obj, seen=None, depth=0):
    """Every tensor reachable from ``obj`` (dicts, lists, tuples, object attributes), each storage once."""
    seen = {} if seen is None else seen
    if isinstance(obj, torch.Tensor):
        seen.setdefault(obj.untyped_storage().data_ptr(), obj.untyped_storage().nbytes())
    elif depth < 12 and isinstance(obj, dict):
        for v in obj.values():
            tensors_in(v, seen, depth + 1)
    elif depth < 12 and isinstance(obj, (list, tuple)):
        for v in obj:
            tensors_in(v, seen, depth + 1)
    elif depth < 12 and hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
        tensors_in(vars(obj), seen, depth + 1)
    return seen


_MEASURE = """
import threading, time, torch, writelens as wl
from writelens.fastpath import NativePass
torch.set_num_threads({threads})
model, _ = wl.zoo.load({model!r}); lens = wl.WriteLens(model)
x = torch.randint(3, lens.vocab_size, ({passages}, {seq}), generator=torch.Generator().manual_seed(0))
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
peak, done = [0.0], threading.Event()
def watch():
    while not done.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.0005)
with torch.no_grad():
    model(input_ids=x[:1, :2]); lens.run(x[:1, :2])  # imports and one-off allocations
    before = rss(); t = threading.Thread(target=watch); t.start()
    keep = {what}
    done.set(); t.join()
    print(max(peak[0], rss()) - before)
"""


def peak_rss_growth(args, what: str) -> float:
    """MB a fresh process's resident set grows by at its peak (sampled every 0.5 ms) while it runs ``what`` on the
    bench's passages (after loading the model)."""
    import subprocess
    import sys

    code = _MEASURE.format(threads=args.threads, model=args.model, passages=args.passages, seq=args.seq, what=what)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _states(lens, x) -> None:
    cache = lens.run(x, cache=True).cache
    T = x.shape[1]
    for layer in lens.recurrent_layers:
        cache.layer_states(layer, [T // 5, 2 * T // 5, 3 * T // 5, 4 * T // 5])


if __name__ == "__main__":
    main()
