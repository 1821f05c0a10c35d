"""Edit and capture speed on a tiny-but-real Qwen3.5 (not a test; prints ratios measured side by side).

(a) 64 single-position Delete edits evaluated with one batched ``lens.run`` vs branch-and-rerun (what the reference
    code does: prefill to t, deep-copy the cache, edit the cached state after step t, then step token by token to
    the end) — both give the final-position distribution; the bench checks they agree.
(b) capture overhead: ``lens.run(cache=True)`` vs a plain forward.

Usage: python bench/edit_speed.py [--layers 6 --hidden 256 --heads 4 --seq 256 --batch 8 --edits 64]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

import writelens as wl


def build(layers: int, hidden: int, heads: int) -> Qwen3_5ForCausalLM:
    cfg = Qwen3_5TextConfig(
        vocab_size=4096, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, linear_num_key_heads=heads // 2,
        linear_num_value_heads=heads, linear_key_head_dim=64, linear_value_head_dim=64, pad_token_id=0,
        eos_token_id=1, bos_token_id=2,
    )
    torch.manual_seed(0)
    model = Qwen3_5ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(layer, "linear_attn"):
                layer.linear_attn.dt_bias.normal_(0.0, 1.0)
                layer.linear_attn.A_log.uniform_(-2.0, 0.5)
    return model


def best_of(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--edits", type=int, default=64)
    ap.add_argument("--rerun-sample", type=int, default=8, help="branch-and-rerun edits timed (then scaled)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build(args.layers, args.hidden, args.heads)
    lens = wl.WriteLens(model)
    gen = torch.Generator().manual_seed(0)
    passages = torch.randint(3, 4096, (args.batch, args.seq), generator=gen)
    per = args.edits // args.batch
    rows = passages.repeat_interleave(per, 0)  # one row per edit
    layers = lens.recurrent_layers
    edits = []
    for r in range(rows.shape[0]):
        layer = layers[int(torch.randint(len(layers), (1,), generator=gen))]
        head = int(torch.randint(args.heads, (1,), generator=gen))
        pos = int(torch.randint(args.seq - 1, (1,), generator=gen))
        edits.append(wl.Delete(layer, head, pos, batch=r, timing="after_read"))
    native = lens.run(passages, cache=True)

    t_batched = best_of(lambda: lens.run(rows, edits=edits), n=2)
    batched = lens.run(rows, edits=edits).logits[:, -1]

    def rerun(i: int) -> torch.Tensor:
        e = edits[i]
        p = e.batch // per
        with torch.no_grad():
            out = model(passages[p : p + 1, : e.pos + 1], use_cache=True)
            cache = copy.deepcopy(out.past_key_values)
            write = native.cache.write_matrix(e.layer, e.head, e.pos)[p]
            cache.layers[e.layer].recurrent_states[0][0, e.head] -= write
            logits = out.logits[:, -1]
            for t in range(e.pos + 1, args.seq):
                logits = model(passages[p : p + 1, t : t + 1], past_key_values=cache, use_cache=True).logits[:, -1]
        return logits[0]

    sample = list(range(0, len(edits), max(1, len(edits) // args.rerun_sample)))[: args.rerun_sample]
    t0 = time.perf_counter()
    reruns = {i: rerun(i) for i in sample}
    t_rerun = (time.perf_counter() - t0) / len(sample) * len(edits)
    err = max(((batched[i] - reruns[i]).abs().max() / reruns[i].abs().max()).item() for i in sample)

    plain = best_of(lambda: model(passages, use_cache=False))
    capture = best_of(lambda: lens.run(passages, cache=True))
    print(f"model: {args.layers} layers, hidden {args.hidden}, {args.heads} value heads of 64, T={args.seq}")
    print(f"(a) {len(edits)} Delete edits: batched lens.run {t_batched:.2f}s vs branch-and-rerun "
          f"{t_rerun:.1f}s (timed on {len(sample)}, scaled)  ->  {t_rerun / t_batched:.1f}x faster "
          f"(max rel. diff of final logits {err:.1e})")
    print(f"(b) capture overhead: lens.run(cache=True) {capture * 1e3:.0f} ms vs plain forward {plain * 1e3:.0f} ms "
          f" ->  {100 * (capture / plain - 1):+.1f}%")


if __name__ == "__main__":
    main()
