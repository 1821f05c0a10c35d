"""The model card (``README.md``) of an associative-recall organism, from its ``metrics.json``, ``config.json`` and,
once measured, ``known_answers.json`` (which heads and write offsets carry the recall, found by deletion, and the
known-answer table: :func:`analyse`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_card(folder: Path) -> None:
    """Rewrite ``folder/README.md`` from the JSON files in ``folder`` (no model is run)."""
    m = json.loads((folder / "metrics.json").read_text())
    ka_path = folder / "known_answers.json"
    mech = json.loads(ka_path.read_text()) if ka_path.is_file() else None
    (folder / "README.md").write_text(card(m, json.loads((folder / "config.json").read_text()), mech))


def card(m: dict[str, Any], config: dict[str, Any], mech: dict[str, Any] | None) -> str:
    tr, task = m["train"], m["task"]
    ns = m["pair_counts"]
    recall_rows = "\n".join(f"| {n} | {m['heldout_recall'][str(n)]:.4f} |" for n in ns)
    curve_head = " | ".join(f"N={n}" for n in ns)
    curve_rows = "\n".join(
        f"| {p['step']} | {p['elapsed_s'] / 60:.1f} | " + " | ".join(f"{p['recall'][str(n)]:.3f}" for n in ns) + " |"
        for p in m["recall_curve"]
    )
    keys = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "layer_types", "intermediate_size",
                        "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                        "linear_value_head_dim", "linear_conv_kernel_dim", "expand", "num_heads", "head_dim",
                        "state_size", "n_groups", "conv_kernel", "tie_word_embeddings") if k in config]
    cfg_rows = "\n".join(f"| `{k}` | `{config[k]}` |" for k in keys)
    return f"""# {m["name"]} (writelens zoo: an associative-recall organism)

{m["description"]}.

A *model organism*: a tiny model of a real Hugging Face class (`{m["model_class"]}`) trained only on multi-query
associative recall (MQAR), so that which write holds which key → value pair is known by construction. It is the
ground truth the known-answer experiments (docs: "Known answers") are checked against. Load it with
`writelens.zoo.load("{m["name"]}")`; passages come from `writelens.tasks.mqar` with the config in `task.json`.

## Task
`BOS k₁ v₁ … k_N v_N [0–{task["max_gap"]} distractors] q₁ a₁ q₂ a₂ … PAD…`, {task["seq_len"]} tokens; keys from
{task["n_keys"]} key tokens and values from {task["n_values"]} value tokens, both without replacement; queries are a
random {task["query_frac"]:.0%} of the passage's keys in random order; the loss and recall count only the answers
(top-1 at the query position). Token ids: 0 PAD, 1 BOS, 2 EOS, keys 3–{2 + task["n_keys"]}, values
{3 + task["n_keys"]}–{2 + task["n_keys"] + task["n_values"]}, then distractors. No tokenizer.

## Architecture ({m["n_params"]:,} parameters, {m["checkpoint_bytes"] / 2**20:.2f} MiB safetensors, {m["dtype"]})
| key | value |
|---|---|
{cfg_rows}

## Training
{tr["steps"]:,} AdamW steps (betas 0.9/0.95, weight decay {tr["weight_decay"]} on matrices), batch {tr["batch"]}
passages per step mixing N ∈ {{{", ".join(map(str, ns))}}} pairs in equal shares, fresh seeded passages every step,
peak lr {tr["lr"]}, warmup {tr["warmup"]:.0%} of the steps, cosine decay to {tr["min_lr_ratio"]} × peak, clipping
{tr["grad_clip"]}, seed {tr["seed"]}, fp32 on CPU ({tr["threads"]} threads): {tr["train_wall_time_s"] / 60:.1f} min
(machine: {m["machine"]["cpu_count"]} cores shared with other jobs; 1-min load {m["machine"]["loadavg_1min_at_end"]}
at the end). Versions: torch {m["versions"]["torch"]}, transformers {m["versions"]["transformers"]}.
Reproduce: `python -m writelens.zoo.train --model {m["name"]}`.

## Held-out recall (the saved model reloaded; {m["heldout_passages_per_n"]} passages per N, seed {m["heldout_seed"]})
| N pairs | recall (top-1, per query) |
|---|---|
{recall_rows}

Curve during training (128 held-out passages per N):

| step | min | {curve_head} |
|---|---|{"---|" * len(ns)}
{curve_rows}
{mechanism_section(mech)}"""


def mechanism_section(ka: dict[str, Any] | None) -> str:
    if ka is None:
        return ("\n## Which writes hold the pairs\nNot measured yet: `python -m writelens.zoo.train --model NAME "
                "--recard` runs `writelens.experiments.known_answers` on the saved folder.\n")
    return ("\n## Which writes hold the pairs (found by deletion)\n" + ka["card_text"] +
            "\n\n## Known answers (`writelens.experiments.known_answers`)\n" + ka["table"] + "\n")


def load_folder(entry: Any, folder: Any) -> Any:
    """The saved organism in ``folder``, float32, eval mode (the Auto class, or the entry's own class)."""
    import torch
    from transformers import AutoModelForCausalLM

    loader = AutoModelForCausalLM if entry.module == "transformers" else entry.model_cls()
    return loader.from_pretrained(str(folder), dtype=torch.float32).eval()


def analyse(name: str, folder: Path) -> dict[str, Any]:
    """Run the known-answer experiments on the organism saved in ``folder``; write ``known_answers.json`` (the full
    result, its table and the card paragraph) and the card."""
    import torch

    import writelens as wl
    from writelens.experiments.known_answers import known_answers
    from writelens.tasks.mqar import MQARConfig

    from .registry import ENTRIES

    entry = ENTRIES[name]
    torch.manual_seed(0)
    lens = wl.WriteLens(load_folder(entry, folder))
    task = MQARConfig.from_json((folder / "task.json").read_text())
    res = known_answers(lens, task)
    out = {"result": res.to_dict(), "table": res.table(), "card_text": res.mechanism.card_text(),
           "passes": res.passes, "located": [list(c) for c in res.mechanism.located]}
    (folder / "known_answers.json").write_text(json.dumps(out, indent=1) + "\n")
    write_card(folder)
    return out
