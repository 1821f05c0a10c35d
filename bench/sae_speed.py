"""Training throughput of BilinearSAE (TopK) vs a dense implementation and vs FlatSAE. A script, not a test.

    python bench/sae_speed.py [--sizes 64 128] [--n-features 2048] [--k 32] [--batch 256] [--steps 5]

Each row is one Adam training step (forward, backward, optimizer step) on random states, timed over
``--steps`` steps after one warm-up step, all in the same process so the ratios are side by side:

- ``bilinear (writelens)``: BilinearSAE.forward: one-contraction encoder without gradients, pre-activations
  recomputed with gradients at the k selected features only, sparse rank-1 decode of the k gathered atoms.
- ``bilinear (dense)``: the same model computed like the reference code: all F pre-activations with
  gradients (``einsum("irk,bkv,irv->bi")``), dense codes, dense decode of all atoms
  (``einsum("bi,irk,irv->bkv")``), i.e. :func:`writelens.sae.naive.naive_forward`.
- ``flat (writelens)``: FlatSAE of the same width (dense encoder with gradients, ``embedding_bag`` decode).

All three use fused Adam (``torch.optim.Adam(fused=True)``), as the trainer does.

By default no feature is dead, so the AuxK pass (run only when some feature is dead) is not timed;
``--dead-fraction 0.5`` marks half the features dead before every step so both implementations also pay for
AuxK (k_aux = 256; the dense one decodes the auxiliary codes densely, as the reference code did).

On a machine shared with other jobs, multi-threaded timings of the sparse path (many small ops, one thread
barrier each) are unreliable; ``--threads 1 --cpu-time`` gives steady numbers.
"""

from __future__ import annotations

import argparse
import time

import torch

from writelens.sae import SAEConfig, build_sae
from writelens.sae.config import Objective
from writelens.sae.naive import naive_forward


def time_steps(step, n_steps: int, clock) -> float:
    step()
    start = clock()
    for _ in range(n_steps):
        step()
    return (clock() - start) / n_steps


def make_step(sae, states, dense: bool, dead_fraction: float):
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
    objective = Objective(lambda_aux=1 / 32 if dead_fraction > 0 else 0.0)
    n_dead = int(dead_fraction * sae.cfg.n_features)
    sae.train()

    def step():
        with torch.no_grad():
            sae.steps_since_active.zero_()
            sae.steps_since_active[:n_dead] = 10 * objective.dead_window
        optimizer.zero_grad(set_to_none=True)
        loss = naive_forward(sae, states, objective).total if dense else sae(states, objective).losses.total
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--n-features", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dead-fraction", type=float, default=0.0, help="features marked dead before each step (AuxK on)")
    parser.add_argument(
        "--cpu-time", action="store_true",
        help="time with process CPU time instead of wall time (steadier on a shared machine with --threads 1)",
    )
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"n_features {args.n_features}, k {args.k}, {args.steps} timed steps each, "
          f"{'CPU' if args.cpu_time else 'wall'} time, {args.dead_fraction:.0%} of features dead")
    print(f"{'d_k x d_v':>10} {'implementation':>22} {'s/step':>9} {'states/s':>10} {'vs dense':>9}")
    for size in args.sizes:
        states = torch.randn(args.batch, size, size) * 1e-2
        runs = {}
        for name, arch, dense in [
            ("bilinear (writelens)", "bilinear", False),
            ("bilinear (dense)", "bilinear", True),
            ("flat (writelens)", "flat", False),
        ]:
            sae = build_sae(SAEConfig(arch, size, size, args.n_features, k=args.k), seed=0)
            runs[name] = time_steps(make_step(sae, states, dense, args.dead_fraction), args.steps, clock)
        for name, seconds in runs.items():
            ratio = runs["bilinear (dense)"] / seconds
            print(f"{size:>4} x {size:<4} {name:>22} {seconds:>9.4f} {args.batch / seconds:>10.0f} {ratio:>8.2f}x")
        print(f"{'':>10} bilinear (writelens) is {runs['bilinear (dense)'] / runs['bilinear (writelens)']:.2f}x the dense "
              f"implementation and {runs['flat (writelens)'] / runs['bilinear (writelens)']:.2f}x FlatSAE")


if __name__ == "__main__":
    main()
