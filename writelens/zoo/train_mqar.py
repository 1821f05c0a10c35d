"""Train an associative-recall organism: ``python -m writelens.zoo.train --model gdn-mqar`` (or ``mamba2-mqar``,
``rwkv7-mqar``).

Every step draws fresh seeded MQAR passages (:mod:`writelens.tasks.mqar`, the task of
:data:`writelens.zoo.organisms.TASK`) whose rows mix N ∈ ``PAIR_COUNTS`` pairs, and minimises the cross-entropy
of the answers only (AdamW, warmup + cosine decay, gradient clipping, fp32 on CPU, seeded). Held-out recall is
measured on passages drawn from a generator seeded apart from training (seed + 10,000), per N, during training
(the curve) and on the saved folder reloaded with ``from_pretrained`` (the card's figures). The folder gets
``model.safetensors``, ``config.json``, ``task.json`` (the MQAR config), ``metrics.json`` and ``README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from writelens.tasks.mqar import IGNORE, MQARConfig, make_batch, recall, training_batch

from .organism_card import analyse, load_folder
from .organisms import PAIR_COUNTS, TASK
from .registry import ENTRIES, ZooEntry
from .training import build_model, lr_at, param_groups, strip_remote_code

HELDOUT_SEED_OFFSET = 10_000
EVAL_PASSAGES = 512  # per N, for the saved model's figures


def heldout_recall(model: torch.nn.Module, task: MQARConfig, n_pairs: int, n: int, seed: int,
                   batch: int = 128) -> float:
    """Fraction of queries answered correctly (top-1) on ``n`` held-out passages with ``n_pairs`` pairs."""
    gen = torch.Generator().manual_seed(seed + HELDOUT_SEED_OFFSET + 97 * n_pairs)
    hits = []
    with torch.no_grad():
        for start in range(0, n, batch):
            b = make_batch(task, min(batch, n - start), n_pairs, gen)
            hits.append(recall(model(input_ids=b.ids, use_cache=False).logits, b).flatten())
    return float(torch.cat(hits).float().mean())


def train(entry: ZooEntry, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``entry`` on the MQAR task and save it to ``args.out``; returns the metrics written."""
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = build_model(entry, TASK.vocab_size, args.seed).train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    warmup = max(1, int(args.warmup * args.steps))
    gen = torch.Generator().manual_seed(args.seed)
    curve: list[list[float]] = []
    probes: list[dict[str, Any]] = []
    ema = None
    with entry.kernel():
        pbar = tqdm(range(args.steps), desc=entry.name, mininterval=10.0, file=sys.stderr)
        for step in pbar:
            lr = lr_at(step, args.steps, args.lr, warmup, args.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            ids, labels = training_batch(TASK, args.batch, PAIR_COUNTS, gen)
            logits = model(input_ids=ids, use_cache=False).logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            opt.step()
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            pbar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.1e}", refresh=False)
            if (step + 1) % 25 == 0:
                curve.append([step + 1, round(ema, 4)])
            if args.eval_every and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
                model.eval()
                r = {n: round(heldout_recall(model, TASK, n, 128, args.seed), 4) for n in PAIR_COUNTS}
                model.train()
                probes.append({"step": step + 1, "elapsed_s": round(time.time() - t0, 1), "recall": r})
                tqdm.write(f"[zoo] step {step + 1}: loss(ema) {ema:.3f}  held-out recall {r}", file=sys.stderr)
    train_time = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out))
    if entry.module != "transformers":
        strip_remote_code(args.out)
    (args.out / "task.json").write_text(TASK.to_json() + "\n")
    return measure(entry, args, n_params, ema, curve, probes, train_time)


def measure(entry: ZooEntry, args: argparse.Namespace, n_params: int, ema: float | None,
            curve: list[list[float]], probes: list[dict[str, Any]], train_time: float) -> dict[str, Any]:
    """Reload the saved folder and measure held-out recall per N (``EVAL_PASSAGES`` passages each)."""
    import transformers

    model = load_folder(entry, args.out)
    with entry.kernel():
        final = {str(n): round(heldout_recall(model, TASK, n, EVAL_PASSAGES, args.seed), 4) for n in PAIR_COUNTS}
    size = sum(f.stat().st_size for f in args.out.glob("*.safetensors"))
    metrics: dict[str, Any] = {
        "name": entry.name, "description": entry.description, "model_class": entry.model_class,
        "n_params": n_params, "checkpoint_bytes": size, "dtype": "float32", "task": json.loads(TASK.to_json()),
        "pair_counts": list(PAIR_COUNTS),
        "train": {
            "steps": args.steps, "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
            "min_lr_ratio": args.min_lr_ratio, "weight_decay": args.weight_decay, "grad_clip": args.grad_clip,
            "betas": [0.9, 0.95], "seed": args.seed, "threads": args.threads,
            "train_wall_time_s": round(train_time, 1),
        },
        "final_train_loss_ema": round(ema, 4) if ema is not None else None,
        "heldout_recall": final,
        "heldout_passages_per_n": EVAL_PASSAGES,
        "heldout_seed": args.seed + HELDOUT_SEED_OFFSET,
        "recall_curve": probes,
        "loss_curve_ema": curve,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "machine": {"cpu_count": os.cpu_count(), "nice": os.nice(0),
                    "loadavg_1min_at_end": round(os.getloadavg()[0], 2)},
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    analyse(entry.name, args.out)  # the known-answer experiments on the saved folder, then the card
    return metrics


def main(args: argparse.Namespace) -> None:
    entry = ENTRIES[args.name]
    m = train(entry, args)
    print(json.dumps({k: m[k] for k in ("name", "n_params", "heldout_recall")}, indent=1))
