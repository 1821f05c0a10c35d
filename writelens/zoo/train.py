"""Rebuild a zoo model from scratch: ``python -m writelens.zoo.train gdn-tiny`` (or ``mamba2-tiny``).

Steps: read the KJV through Debian's ``bible`` (``apt-get update && apt-get install -y bible-kjv``, or pass
``--corpus kjv.txt``), split it by whole books (:mod:`writelens.zoo.corpus`), train the byte-level BPE
tokenizer on the train split (:mod:`writelens.zoo.tokenizer`), train the model on random windows of the train
token stream (AdamW, linear warmup + cosine decay, gradient clipping, fp32 on CPU, seeded), then save
``model.safetensors`` + ``config.json`` + tokenizer files, ``metrics.json`` and a model card ``README.md``
into ``--out`` (default: the shipped folder ``writelens/zoo/models/<name>``). The metrics are measured on the
*saved* folder, reloaded with ``AutoModelForCausalLM.from_pretrained``.

The shipped models were trained on a shared 2-core machine with
``OMP_WAIT_POLICY=PASSIVE nice -n 10 python -m writelens.zoo.train NAME`` (PASSIVE keeps two OpenMP threads from
spin-waiting each other into a 10x slowdown when other jobs hold the cores). Results are seeded, but bit-exact
only for the same torch build and thread count. ``--recard`` rewrites ``README.md`` from a folder's
``metrics.json`` and ``config.json`` without training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import corpus
from .evaluate import (
    SAMPLE_PROMPTS,
    greedy_samples,
    mean_loss,
    ratio,
    stream_loss,
    stream_windows,
    unigram_entropy,
)
from .registry import ENTRIES, ZooEntry
from .tokenizer import VOCAB_SIZE, encode_stream, save_tokenizer, train_tokenizer
from .training import build_model, lr_at, param_groups, strip_remote_code

QUALITY_BAR = 0.7  # held-out CE must be ≤ QUALITY_BAR × held-out unigram entropy
SNIPPET = dict(n=8, n_tokens=128, seed=0)  # the fixed held-out snippet the tests recompute
SNIPPET_MARGIN = 0.02  # nats/token of slack the tests allow around the recorded snippet loss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m writelens.zoo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("name", nargs="?", choices=sorted(ENTRIES), help="which zoo model to build")
    p.add_argument("--model", dest="model", choices=sorted(ENTRIES), help="the same as NAME")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the shipped model's)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per training window")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--warmup", type=float, default=0.05, help="warmup steps, as a fraction of --steps")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr of the cosine decay")
    p.add_argument(
        "--weight-decay", type=float, default=0.1, help="AdamW decay on matrices (not norms/biases)"
    )
    p.add_argument("--grad-clip", type=float, default=1.0, help="max global gradient norm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--eval-every", type=int, default=200, help="log a held-out loss every N steps (0: never)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the shipped folder)")
    p.add_argument("--corpus", type=Path, default=None, help='a `bible -f "Gen1:1-Rev22:21"` dump')
    p.add_argument(
        "--recard", action="store_true", help="only rewrite README.md of --out from its metrics.json (organisms: also rerun the known-answer experiments)"
    )
    args = p.parse_args(argv)
    args.name = args.name or args.model
    if args.name is None or (args.model and args.model != args.name):
        p.error("name one zoo model, as NAME or --model NAME")
    for k, v in ENTRIES[args.name].train_defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = ENTRIES[args.name].folder
    return args


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.name`` and save it to ``args.out``; returns the metrics written to ``metrics.json``."""
    from tqdm import tqdm

    entry = ENTRIES[args.name]
    torch.set_num_threads(args.threads)
    t0 = time.time()
    train_text, held_text = corpus.load_split(args.corpus)
    tok = train_tokenizer(train_text, VOCAB_SIZE)
    train_ids = torch.tensor(encode_stream(tok, train_text), dtype=torch.long)
    held_ids = torch.tensor(encode_stream(tok, held_text), dtype=torch.long)
    print(f"[zoo] corpus: {len(train_ids):,} train / {len(held_ids):,} held-out tokens", file=sys.stderr)

    model = build_model(entry, len(tok), args.seed)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    warmup = max(1, int(args.warmup * args.steps))
    gen = torch.Generator().manual_seed(args.seed)
    offsets = torch.arange(args.seq_len + 1)
    held_probe = stream_windows(held_ids, args.seq_len)[:24]
    t_train = time.time()
    pbar = tqdm(range(args.steps), desc=args.name, mininterval=5.0, file=sys.stderr)
    with entry.kernel():
        curve, probes, ema = train_loop(args, model, opt, pbar, train_ids, held_probe, warmup, gen, offsets)
    train_time = time.time() - t_train

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out))
    if entry.module != "transformers":
        strip_remote_code(args.out)
    save_tokenizer(tok, args.out)
    return measure(
        args, entry, train_ids, held_ids, n_params, ema, curve, probes, train_time, time.time() - t0
    )


def train_loop(
    args: argparse.Namespace,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    pbar: Any,
    train_ids: torch.Tensor,
    held_probe: torch.Tensor,
    warmup: int,
    gen: torch.Generator,
    offsets: torch.Tensor,
) -> tuple[list[list[float]], list[list[float]], float | None]:
    """The optimizer steps of :func:`train`; returns the EMA loss curve, the held-out probes and the final EMA."""
    from tqdm import tqdm

    ema: float | None = None
    curve: list[list[float]] = []
    probes: list[list[float]] = []
    for step in pbar:
        lr = lr_at(step, args.steps, args.lr, warmup, args.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train_ids) - args.seq_len - 1, (args.batch,), generator=gen)
        win = train_ids[starts[:, None] + offsets]
        logits = model(input_ids=win[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), win[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        pbar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.1e}", gnorm=f"{gnorm:.2f}", refresh=False)
        if (step + 1) % 25 == 0:
            curve.append([step + 1, round(ema, 4)])
        if args.eval_every and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            h = mean_loss(model, held_probe)
            probes.append([step + 1, round(h, 4)])
            tqdm.write(
                f"[zoo] step {step + 1}: train(ema) {ema:.3f}  held-out(probe) {h:.3f}", file=sys.stderr
            )
    return curve, probes, ema


def measure(
    args: argparse.Namespace,
    entry: ZooEntry,
    train_ids: torch.Tensor,
    held_ids: torch.Tensor,
    n_params: int,
    ema: float | None,
    curve: list[list[float]],
    probes: list[list[float]],
    train_time: float,
    total_time: float,
) -> dict[str, Any]:
    """Reload the saved folder (``AutoModelForCausalLM``, or the entry's class when the Auto classes do not map
    it) and measure everything the model card reports. The train and held-out losses run under the entry's
    training kernel; the test snippet and the samples run on the model's own code path, as the tests do."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .text import heldout_passages

    loader = AutoModelForCausalLM if entry.module == "transformers" else entry.model_cls()
    model = loader.from_pretrained(str(args.out), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(args.out))
    gen = torch.Generator().manual_seed(args.seed + 1)
    starts = torch.randint(0, len(train_ids) - args.seq_len - 1, (64,), generator=gen)
    with entry.kernel():
        train_loss = mean_loss(model, train_ids[starts[:, None] + torch.arange(args.seq_len + 1)])
        held_loss = stream_loss(model, held_ids, args.seq_len)
    h_uni = unigram_entropy(held_ids)
    snippet = heldout_passages(SNIPPET["n"], SNIPPET["n_tokens"], tok, seed=SNIPPET["seed"])
    snip_loss = mean_loss(model, snippet)
    samples = greedy_samples(model, tok, SAMPLE_PROMPTS, max_new_tokens=40)
    size = sum(f.stat().st_size for f in args.out.glob("*.safetensors"))
    metrics: dict[str, Any] = {
        "name": entry.name,
        "description": entry.description,
        "model_class": entry.model_class,
        "n_params": n_params,
        "checkpoint_bytes": size,
        "dtype": "float32",
        "train": {
            "steps": args.steps,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "lr": args.lr,
            "warmup_steps": max(1, int(args.warmup * args.steps)),
            "min_lr_ratio": args.min_lr_ratio,
            "weight_decay": args.weight_decay,
            "grad_clip": args.grad_clip,
            "betas": [0.9, 0.95],
            "seed": args.seed,
            "threads": args.threads,
            "tokens_seen": args.steps * args.batch * args.seq_len,
            "train_split_tokens": len(train_ids),
            "heldout_tokens": len(held_ids),
            "train_wall_time_s": round(train_time, 1),
            "total_wall_time_s": round(total_time, 1),
        },
        "final_train_loss_ema": round(ema, 4) if ema is not None else None,
        "final_train_loss": round(train_loss, 4),
        "heldout_loss": round(held_loss, 4),
        "heldout_unigram_entropy": round(h_uni, 4),
        "heldout_ratio": round(ratio(held_loss, h_uni), 4),
        "quality_bar": QUALITY_BAR,
        "passes_quality_bar": ratio(held_loss, h_uni) <= QUALITY_BAR,
        "snippet": {**SNIPPET, "loss": round(snip_loss, 5), "bound": round(snip_loss + SNIPPET_MARGIN, 5)},
        "samples": dict(zip(SAMPLE_PROMPTS, samples, strict=True)),
        "loss_curve_ema": curve,
        "heldout_probe": probes,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            **(
                {entry.module.split(".")[0]: package_version(entry.module)}
                if entry.module != "transformers"
                else {}
            ),
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "nice": os.nice(0),
            "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
        },
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (args.out / "README.md").write_text(model_card(metrics, model.config.to_dict()))
    return metrics


def package_version(module: str) -> str:
    """The installed version of ``module``'s top-level package (``"unknown"`` if it has none)."""
    import importlib

    return str(getattr(importlib.import_module(module.split(".")[0]), "__version__", "unknown"))


def model_card(m: dict[str, Any], config: dict[str, Any]) -> str:
    """The model card (``README.md``) of a zoo folder, from its metrics and config."""
    tr = m["train"]
    keys = [
        k
        for k in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "layer_types",
            "intermediate_size",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "linear_num_key_heads",
            "linear_num_value_heads",
            "linear_key_head_dim",
            "linear_value_head_dim",
            "linear_conv_kernel_dim",
            "expand",
            "num_heads",
            "state_size",
            "n_groups",
            "conv_kernel",
            "chunk_size",
            "decay_low_rank_dim",
            "a_low_rank_dim",
            "v_low_rank_dim",
            "gate_low_rank_dim",
            "norm_eps",
            "tie_word_embeddings",
        )
        if k in config
    ]
    cfg_rows = "\n".join(f"| `{k}` | `{config[k]}` |" for k in keys)
    samples = "\n".join(
        f"- **{p!r}** →\n  ```\n  {s.replace(chr(10), chr(10) + '  ')}\n  ```"
        for p, s in m["samples"].items()
    )
    verdict = "passes" if m["passes_quality_bar"] else "**FAILS**"
    entry = ENTRIES.get(m["name"])
    note = f"\n{entry.card_note}\n" if entry is not None and entry.card_note else ""
    auto = entry is None or entry.module == "transformers"
    loader = "AutoModelForCausalLM" if auto else f"{entry.module}.{entry.model_class}"
    extra_versions = "".join(
        f", {k} {v}" for k, v in m["versions"].items() if k not in ("torch", "transformers", "python")
    )
    return f"""# {m["name"]} (writelens zoo)

{m["description"]}.

A *toy* language model that writelens trains and ships so that tests and examples run offline on the exact
Hugging Face code path of real checkpoints (`{m["model_class"]}`). It knows only King James English and is
not useful as a language model. Load it with `writelens.zoo.load("{m["name"]}")` or
`{loader}.from_pretrained(writelens.zoo.path("{m["name"]}"))`.

## Data
King James Bible (public domain), from Debian's `bible-kjv`; one verse per line, a blank line between
books. Held out (never trained on): whole books {", ".join(corpus.HELDOUT_BOOKS)}
({tr["heldout_tokens"]:,} tokens); train: every other book ({tr["train_split_tokens"]:,} tokens).
Tokenizer: byte-level BPE, {config["vocab_size"]:,} ids, trained on the train split; no BOS/EOS added.

## Architecture ({m["n_params"]:,} parameters, {m["checkpoint_bytes"] / 2**20:.1f} MiB safetensors, {m["dtype"]})
| key | value |
|---|---|
{cfg_rows}

## Training
{tr["steps"]:,} AdamW steps (betas 0.9/0.95, weight decay {tr["weight_decay"]} on matrices), batch
{tr["batch"]} × {tr["seq_len"]} tokens of random windows of the train stream, peak lr {tr["lr"]} with
{tr["warmup_steps"]} warmup steps and cosine decay to {tr["min_lr_ratio"]} × peak, gradient clipping
{tr["grad_clip"]}, seed {tr["seed"]}, fp32 on CPU ({tr["threads"]} threads).
Tokens seen: {tr["tokens_seen"]:,} ({tr["tokens_seen"] / tr["train_split_tokens"]:.1f} epochs).
Wall time: {tr["train_wall_time_s"] / 60:.1f} min of training ({tr["total_wall_time_s"] / 60:.1f} min in all).
Versions: torch {m["versions"]["torch"]}, transformers {m["versions"]["transformers"]}{extra_versions}.{machine_note(m)}
{note}
Reproduce: `python -m writelens.zoo.train {m["name"]}` (needs `apt-get install -y bible-kjv`).

## Results (nats/token, same tokenizer)
| metric | value |
|---|---|
| final train loss (64 random train windows) | {m["final_train_loss"]:.3f} |
| held-out loss (all held-out books, windows of {tr["seq_len"]}) | {m["heldout_loss"]:.3f} |
| held-out unigram entropy | {m["heldout_unigram_entropy"]:.3f} |
| ratio held-out loss / unigram entropy | {m["heldout_ratio"]:.3f} ({verdict} the bar ≤ {m["quality_bar"]}) |
| test snippet loss ({m["snippet"]["n"]} × {m["snippet"]["n_tokens"]} held-out tokens, seed {m["snippet"]["seed"]}) | {m["snippet"]["loss"]:.4f} (tests require ≤ {m["snippet"]["bound"]:.4f}) |

## Greedy samples (40 new tokens)
{samples}
"""


def machine_note(m: dict[str, Any]) -> str:
    """One sentence on the machine the wall time was measured on (empty when not recorded)."""
    mc = m.get("machine")
    if not mc:
        return ""
    note = (
        f"\nMachine: {mc['cpu_count']} CPU cores shared with other jobs, nice {mc['nice']}, "
        f"OMP_WAIT_POLICY={mc['OMP_WAIT_POLICY']}"
    )
    if mc.get("loadavg"):
        note += f", load average {mc['loadavg']} during training"
    elif mc.get("loadavg_1min_at_end") is not None:
        note += f", 1-min load average {mc['loadavg_1min_at_end']} at the end"
    return note + " (the wall time depends on that load)."


def recard(folder: Path) -> None:
    """Rewrite ``folder/README.md`` from its ``metrics.json`` and ``config.json`` (no training)."""
    m = json.loads((folder / "metrics.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    (folder / "README.md").write_text(model_card(m, config))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.recard and ENTRIES[args.name].task == "mqar":
        from .organism_card import analyse

        analyse(args.name, args.out)
        print(f"[zoo] rewrote {args.out / 'README.md'}")
        return
    if args.recard:
        recard(args.out)
        print(f"[zoo] rewrote {args.out / 'README.md'}")
        return
    if ENTRIES[args.name].task == "mqar":
        from .train_mqar import main as train_organism

        return train_organism(args)
    try:
        m = train(args)
    except FileNotFoundError as e:
        sys.exit(f"[zoo] {e}")
    print(json.dumps({k: m[k] for k in ("name", "n_params", "heldout_loss", "heldout_ratio")}, indent=1))


if __name__ == "__main__":
    main()
