"""Plain MSE vs the read-aligned objective (``TrainConfig.read_weight``), same data, recipe and seed, per model.

    python examples/compare_objectives.py                       # gdn-tiny mamba2-tiny rwkv7-tiny gdn-mqar ...
    python examples/compare_objectives.py --models gdn-tiny --weights 0 1

For each model and weight w: extract states at the site, train a BilinearSAE with the main job's recipe
(examples/main_job.py), then on held-out passages report
- ``fve`` (Frobenius) and ``read_fve`` (the share of what the reads see, :func:`writelens.sae.read_fve`) on held-out
  states, ``dense`` (fire rate > 0.5) and ``never`` (never fired) features of the training run's health check;
- the replacement test's win rate (atom < delete, ties under the null-edit floor excluded) with its Wilson 95 %
  interval, at ``scale=coefficient`` and ``scale=matched_norm`` (KL at the last position, timing with_read);
- at the coefficient-mode firings, the median |cos| between the substituted atom and the native write β k̂ vᵀ and
  the median ‖atom‖ / ‖native write‖ (how well atoms line up with single writes).
Writes ``runs/compare_objectives/<model>.json`` and prints one table (every figure with its condition).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import main_job  # noqa: E402  (the main job's model loading, sites and recipe)

import writelens as wl  # noqa: E402
from writelens.experiments import ReplacementOptions, replacement_test  # noqa: E402
from writelens.extraction import query_metric  # noqa: E402
from writelens.sae import BilinearSAE, read_fve  # noqa: E402
from writelens.sae.data import StateDataset  # noqa: E402
from writelens.sae.train import TrainConfig, train_sae  # noqa: E402

#: organisms: the site the mechanism map locates (docs "Known answers") and the pair count of the passages
ORGANISM_SITES = {"gdn-mqar": (0, 0), "mamba2-mqar": (0, 0), "rwkv7-mqar": (0, 1)}
DEFAULT_MODELS = ("gdn-tiny", "mamba2-tiny", "rwkv7-tiny", "gdn-mqar", "mamba2-mqar", "rwkv7-mqar")


@dataclass
class CompareConfig:
    """Budget of the comparison (the main job's SAE recipe; fewer firings)."""

    weights: tuple[float, ...] = (0.0, 1.0)
    n_train_seqs: int = 256
    positions_per_seq: int = 16
    n_features: int = 512
    k: int = 16
    train_steps: int = 1000
    batch_size: int = 256
    n_metric_seqs: int = 64
    n_heldout_seqs: int = 48
    max_firings: int = 200
    seed: int = 2026


@dataclass
class Row:
    model: str
    site: str
    weight: float
    fve: float
    read_fve: float
    n_dense: int
    n_never: int
    win: dict[str, list[float]] = field(default_factory=dict)  # scale mode -> [estimate, lo, hi, n, n_ties]
    cos_median: float = float("nan")
    norm_ratio_median: float = float("nan")
    train_s: float = 0.0


def passages(name: str, cfg: CompareConfig):
    """(lens, train ids [n, T], held-out ids [m, T], site, rank)."""
    if name in ORGANISM_SITES:
        from writelens.tasks.mqar import make_batch

        model, _ = wl.zoo.load(name)
        task = wl.zoo.task(name)
        length = task.length_needed(16)  # no padding: the shortest N=16 passage

        def ids(n, seed):
            return make_batch(task, n, 16, torch.Generator().manual_seed(seed)).ids[:, :length]

        return wl.WriteLens(model), ids(cfg.n_train_seqs, 11), ids(cfg.n_heldout_seqs, 12), ORGANISM_SITES[name], 1
    lens, train_tokens, heldout_tokens, _ = main_job.load_model(name, random=False, quick=False)
    return (lens, train_tokens(cfg.n_train_seqs, 256), heldout_tokens(cfg.n_heldout_seqs, 128), main_job.SITES[name],
            main_job.SAE_RANK.get(name, 1))


def states_of(lens, ids, site, out: Path, positions: int) -> torch.Tensor:
    wl.extract(lens, ids, sites=[site], target="sampled_positions", out_dir=out, positions_per_seq=positions, seed=0,
               batch_size=16, min_position=1, overwrite=True, progress=False)
    return StateDataset.from_shards(out, *site)


def compare(name: str, cfg: CompareConfig, out: Path) -> list[Row]:
    lens, train_ids, heldout_ids, site, rank = passages(name, cfg)
    layer, head = site
    data = states_of(lens, train_ids, site, out / "states", cfg.positions_per_seq)
    test = states_of(lens, heldout_ids, site, out / "heldout_states", cfg.positions_per_seq)
    test_states = test.batch(0, len(test), 0)
    metric = query_metric(lens, train_ids[: cfg.n_metric_seqs], site, min_position=1)
    native = lens.run(heldout_ids, cache=True, sites=[site]).cache.write(layer, head)
    rows = []
    for w in cfg.weights:
        started = time.perf_counter()
        s = lens.site(layer, head)
        sae = BilinearSAE(d_k=s.d_k, d_v=s.d_v, n_features=cfg.n_features, k=cfg.k, rank=rank, seed=cfg.seed,
                          metadata={"layer": layer, "head": head, "target": "sampled_positions"})
        tc = TrainConfig(lr=3e-3, lr_min=3e-4, warmup_steps=50, batch_size=cfg.batch_size, steps=cfg.train_steps,
                         seed=cfg.seed, val_fraction=0.1, eval_every=cfg.train_steps // 3, log_every=100,
                         resample_every=250, progress=False, read_weight=w)
        trained = train_sae(sae, data, tc, read_metric=metric if w else None, out_dir=out / f"sae_w{w:g}", resume=False)
        sae = trained.sae.eval()
        with torch.no_grad():
            recon = sae(test_states).recon
        h = trained.health
        row = Row(name, f"L{layer}H{head}", w, 1 - float((recon - test_states).double().pow(2).sum()
                                                      / (test_states - test_states.mean(0)).double().pow(2).sum()),
                  read_fve(test_states, recon, metric), h.n_dense, h.n_dead, train_s=round(time.perf_counter() - started, 1))
        for mode in ("coefficient", "matched_norm"):
            rep = replacement_test(lens, sae, site, heldout_ids, ReplacementOptions(
                max_firings=cfg.max_firings, seed=cfg.seed, scale=mode, progress=False))
            wr = rep.stats.win_rate
            row.win[mode] = [wr.estimate, wr.lo, wr.hi, rep.stats.n_firings, rep.floor.n_ties if rep.floor else 0]
            if mode == "coefficient":
                p, t = torch.tensor(rep.passage), torch.tensor(rep.position)
                writes = (native.beta[p, t, None, None] * native.key[p, t, :, None] * native.value[p, t, None, :])
                atoms = sae.atoms(torch.tensor(rep.atom)).matrix()
                cos = torch.nn.functional.cosine_similarity(atoms.flatten(1), writes.flatten(1), dim=1).abs().detach()
                row.cos_median = float(cos.median())
                row.norm_ratio_median = float((torch.tensor(rep.scale) / torch.tensor(rep.native_norm)).median())
        rows.append(row)
        print(f"  {name} w={w:g}: {table_line(row)}", flush=True)
    (out.parent / f"{name}.json").write_text(json.dumps({"config": asdict(cfg), "rows": [asdict(r) for r in rows]},
                                                        indent=1))
    return rows


HEADER = ("model        site  w   | held-out FVE  read-FVE | dense never | win coefficient [95% CI] (n, ties)     "
          "| win matched-norm [95% CI] (n, ties)    | |cos(atom, write)|  ‖atom‖/‖write‖")


def table_line(r: Row) -> str:
    def win(mode):
        e, lo, hi, n, ties = r.win[mode]
        return f"{e:.3f} [{lo:.3f}, {hi:.3f}] (n={n}, ties={ties})".ljust(38)

    return (f"{r.model:<12} {r.site:<5} {r.weight:<3g} | {r.fve:12.3f}  {r.read_fve:8.3f} | {r.n_dense:5d} {r.n_never:5d} "
            f"| {win('coefficient')} | {win('matched_norm')} | {r.cos_median:18.3f}  {r.norm_ratio_median:14.2f}")


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--weights", nargs="+", type=float, default=list(CompareConfig.weights))
    parser.add_argument("--out", default="runs/compare_objectives")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = CompareConfig(weights=tuple(args.weights))
    rows = []
    for name in args.models:
        rows += compare(name, cfg, Path(args.out) / "work" / name)
    print(f"\nread-aligned objective vs plain MSE: BilinearSAE {cfg.n_features} features, k={cfg.k}, "
          f"{cfg.train_steps} steps, batch {cfg.batch_size}, {cfg.n_train_seqs}×{cfg.positions_per_seq} training "
          f"states; replacement on {cfg.n_heldout_seqs} held-out passages, ≤{cfg.max_firings} firings, KL at the last "
          "position, with_read, ties = both KLs under 10× the null edit's max; cos and norm ratio at the "
          "coefficient-mode firings (medians); threads {args.threads}\n" + HEADER)
    for r in rows:
        print(table_line(r))
    return rows


if __name__ == "__main__":
    main()
