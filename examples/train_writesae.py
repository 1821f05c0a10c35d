"""End to end: extract states from a small recurrent LM, train a WriteSAE (BilinearSAE) per head, evaluate.

    python examples/train_writesae.py [--out runs/writesae_example] [--steps 400]

Model: the zoo's ``gdn-tiny`` (Qwen3.5 trained on the KJV) when it is installed, else a tiny random-init
Qwen3.5 on random tokens (the SAE then learns generic structure only), else, without a working lens,
synthetic states with planted rank-1 atoms. Runs in well under 3 minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import writelens as wl
from writelens.sae import BilinearSAE
from writelens.sae.data import StateDataset
from writelens.sae.train import TrainConfig, train_sae


def model_and_tokens(n_seqs: int, seq_len: int):
    """(lens, token ids [n_seqs, seq_len], description), or None when no lens can be built."""
    try:
        model, tokenizer = wl.zoo.load("gdn-tiny")
        lens = wl.WriteLens(model, tokenizer=tokenizer)
        return lens, wl.zoo.train_sample_passages(n_seqs, seq_len), "zoo gdn-tiny on KJV passages"
    except Exception as exc:  # noqa: BLE001  (the zoo model may not be installed)
        print(f"zoo model unavailable ({type(exc).__name__}); using a tiny random-init Qwen3.5")
    try:
        from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

        cfg = Qwen3_5TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                num_attention_heads=2, num_key_value_heads=1, head_dim=16, linear_num_key_heads=2,
                                linear_num_value_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
                                linear_conv_kernel_dim=4, pad_token_id=0, eos_token_id=1, bos_token_id=2)
        torch.manual_seed(0)
        lens = wl.WriteLens(Qwen3_5ForCausalLM(cfg).eval())
        tokens = torch.randint(3, 256, (n_seqs, seq_len), generator=torch.Generator().manual_seed(0))
        return lens, tokens, "random-init Qwen3.5 on random tokens"
    except Exception as exc:  # noqa: BLE001
        print(f"no lens available ({type(exc).__name__}: {exc}); using planted synthetic states")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/writesae_example")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--n-seqs", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 suits these tiny models; 0 keeps torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    started = time.perf_counter()

    found = model_and_tokens(args.n_seqs, args.seq_len)
    if found is not None:
        lens, tokens, description = found
        layer = lens.sites[0].layer
        heads = [s.head for s in lens.sites if s.layer == layer]
        print(f"{description}: extracting layer {layer}, heads {heads} ({tokens.numel()} tokens)")
        wl.extract(lens, tokens, sites=[(layer, h) for h in heads], target="sampled_positions",
                   out_dir=out / "states", positions_per_seq=16, seed=0, batch_size=16)
        data = StateDataset.from_shards(out / "states", layer, heads)
    else:
        from writelens.sae.synthetic import planted_states

        planted = planted_states(4096, 16, 16, n_atoms=64, active=3, noise=0.01)
        data, heads, layer = StateDataset.from_tensor(planted.states[:, None]), [0], 0
    d_k, d_v = data.state_shape[-2:]
    print(f"{len(data)} states of {d_k} x {d_v} per head ({time.perf_counter() - started:.1f}s)")

    sae = BilinearSAE(d_k=d_k, d_v=d_v, n_features=8 * max(d_k, d_v), k=8, n_heads=len(heads),
                      metadata={"layer": layer, "heads": heads, "target": "sampled_positions"}, seed=0)
    cfg = TrainConfig(lr=3e-3, lr_min=3e-4, warmup_steps=20, batch_size=128, steps=args.steps, seed=0,
                      val_fraction=0.2, eval_every=100, log_every=50, resample_every=100)
    result = train_sae(sae, data, cfg, out_dir=out / "sae")
    val = result.final_val
    print(f"trained {result.steps} steps in {time.perf_counter() - started:.1f}s total")
    print(f"val: mse {val.mse:.3e}  nmse {val.nmse:.4f}  FVE {val.fve:.4f}  L0 {val.l0:.2f}  dead {val.dead_fraction:.1%}")
    for h, head in enumerate(heads):
        print(f"  head {head}: FVE {val.per_head['fve'][h]:.4f}  L0 {val.per_head['l0'][h]:.2f}  "
              f"dead {val.per_head['dead_fraction'][h]:.1%}")

    one_head = wl.load_sae(out / "sae" / "final").head(0)
    one_head.save(out / f"writesae_L{layer}_H{heads[0]}")
    atoms = wl.load_sae(out / f"writesae_L{layer}_H{heads[0]}").atoms([0, 1, 2])
    print(f"head {heads[0]} saved alone; atoms 0-2: key {tuple(atoms.key.shape)}, value {tuple(atoms.value.shape)}, "
          f"scale {atoms.scale.squeeze(-1).tolist()}")


if __name__ == "__main__":
    main()
