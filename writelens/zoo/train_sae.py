"""Rebuild a shipped zoo SAE: ``python -m writelens.zoo.train_sae gdn-tiny --layer 4 --head 1``.

Steps: extract the states after the write at ``--positions-per-seq`` sampled positions of ``--n-seqs`` train-sample
passages (:func:`writelens.zoo.train_sample_passages`, seed 0) at the site, train a :class:`BilinearSAE`
(WriteSAE, TopK) on them with :func:`writelens.sae.train.train_sae`, evaluate it on states of held-out passages
(books never trained on), and save it with ``sae.save`` into ``writelens/zoo/models/<model>/saes/L<layer>H<head>/``
together with ``metrics.json`` and a ``README.md``. Load it with ``writelens.zoo.load_sae(model, layer, head)``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from writelens.extraction import extract
from writelens.lens import WriteLens
from writelens.sae import BilinearSAE
from writelens.sae.data import StateDataset
from writelens.sae.metrics import evaluate_sae
from writelens.sae.train import TrainConfig, train_sae

from . import entry, heldout_passages, load, train_sample_passages


def build(model: str, layer: int, head: int, *, n_seqs: int, seq_len: int, positions_per_seq: int, n_features: int,
          k: int, steps: int, batch_size: int, seed: int, out: Path | None = None, progress: bool = True) -> Path:
    """Train and save one zoo SAE; returns its folder."""
    started = time.perf_counter()
    folder = out or entry(model).folder / "saes" / f"L{layer}H{head}"
    net, tok = load(model)
    lens = WriteLens(net, tokenizer=tok)
    site = lens.site(layer, head)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        extract(lens, train_sample_passages(n_seqs, seq_len, seed=0), sites=[(layer, head)],
                target="sampled_positions", out_dir=tmp / "train", positions_per_seq=positions_per_seq, seed=0,
                batch_size=16, min_position=1, progress=progress)
        extract(lens, heldout_passages(64, seq_len, seed=0), sites=[(layer, head)], target="sampled_positions",
                out_dir=tmp / "heldout", positions_per_seq=positions_per_seq, seed=1, batch_size=16, min_position=1,
                progress=progress)
        data = StateDataset.from_shards(tmp / "train", layer, head)
        held = StateDataset.from_shards(tmp / "heldout", layer, head)
        sae = BilinearSAE(d_k=site.d_k, d_v=site.d_v, n_features=n_features, k=k, seed=seed,
                          metadata={"model": model, "layer": layer, "head": head, "target": "sampled_positions"})
        cfg = TrainConfig(lr=3e-3, lr_min=3e-4, warmup_steps=50, batch_size=batch_size, steps=steps, seed=seed,
                          val_fraction=0.1, eval_every=max(steps // 4, 1), log_every=100, resample_every=250,
                          progress=progress)
        result = train_sae(sae, data, cfg, out_dir=tmp / "run", resume=False)
        sae = result.sae.eval()
        held_metrics = evaluate_sae(sae, held)
        sae.save(folder)
        n_train = len(data)
    val = result.final_val
    metrics = {
        "model": model, "layer": layer, "head": head, "architecture": "bilinear", "n_features": n_features, "k": k,
        "data": {"train": f"train_sample_passages({n_seqs}, {seq_len}, seed=0)", "heldout": f"heldout_passages(64, "
                 f"{seq_len}, seed=0)", "positions_per_seq": positions_per_seq, "min_position": 1,
                 "n_train_states": n_train, "n_heldout_states": held_metrics.n_states},
        "train": {**cfg.to_dict(), "progress": None},
        "val": val.to_dict() if val is not None else None,
        "heldout": held_metrics.to_dict(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "torch_threads": torch.get_num_threads(),
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (folder / "README.md").write_text(_card(metrics))
    return folder


def _card(m: dict) -> str:
    h, v, d, t = m["heldout"], m["val"] or {}, m["data"], m["train"]
    return f"""# WriteSAE for {m['model']} L{m['layer']}H{m['head']} (writelens zoo)

A `BilinearSAE` (WriteSAE: rank-1 atoms `u wᵀ`, bilinear encoder, TopK k = {m['k']}) with {m['n_features']}
features for the state of layer {m['layer']}, value head {m['head']} of `{m['model']}` (d_k = d_v = 64). Shipped so that
the notebooks and docs can run the experiments without training an SAE first. It is small and trained briefly:
fine for demonstrations, not a reference dictionary.

Load: `sae = writelens.zoo.load_sae("{m['model']}", {m['layer']}, {m['head']})` (or `writelens.load_sae(folder)`).

## Data
States after the write (`target="sampled_positions"`) at {d['positions_per_seq']} seeded positions (≥ 1) of each of
`{d['train']}` (KJV train books): {d['n_train_states']:,} states; 10% of the passages held out for validation.
Test: {d['n_heldout_states']:,} states of `{d['heldout']}` (books the model never saw).

## Training
`train_sae` with `TrainConfig(lr={t['lr']}, lr_min={t['lr_min']}, warmup_steps={t['warmup_steps']},
batch_size={t['batch_size']}, steps={t['steps']}, seed={t['seed']}, resample_every={t['resample_every']})`
(AuxK λ = 1/32, decoder factors renormalised every step), fp32 on CPU, {m['torch_threads']} torch thread(s),
{m['wall_seconds']:.0f} s in all (extraction included).

## Results
| split | FVE | NMSE | L0 | dead |
|---|---|---|---|---|
| validation (train books) | {v.get('fve', float('nan')):.3f} | {v.get('nmse', float('nan')):.3f} | {v.get('l0', float('nan')):.1f} | {v.get('dead_fraction', float('nan')):.1%} |
| held-out books | {h['fve']:.3f} | {h['nmse']:.3f} | {h['l0']:.1f} | {h['dead_fraction']:.1%} |

FVE: 1 − squared error / per-entry variance of S. Dead: features that never fire on that split.

Reproduce: `python -m writelens.zoo.train_sae {m['model']} --layer {m['layer']} --head {m['head']}`
(seeded; bit-exact only for the same torch build and thread count).
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="gdn-tiny")
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--head", type=int, default=1)
    ap.add_argument("--n-seqs", type=int, default=384)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--positions-per-seq", type=int, default=32)
    ap.add_argument("--n-features", type=int, default=512)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = build(args.model, args.layer, args.head, n_seqs=args.n_seqs, seq_len=args.seq_len,
                   positions_per_seq=args.positions_per_seq, n_features=args.n_features, k=args.k, steps=args.steps,
                   batch_size=args.batch_size, seed=args.seed, out=args.out)
    print((folder / "README.md").read_text())


if __name__ == "__main__":
    main()
