"""Run by tests/sae/test_ddp.py under torchrun (2 CPU processes, gloo): train a few steps, save the weights."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from writelens.sae import SAEConfig, build_sae
from writelens.sae.data import StateDataset
from writelens.sae.io import save_sae
from writelens.sae.train import TrainConfig, train_sae


def make_data():
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(10, 5, 4, generator=g)
    codes = torch.rand(128, 10, generator=g) * (torch.rand(128, 10, generator=g) < 0.3)
    return StateDataset.from_tensor(torch.einsum("nf,fkv->nkv", codes, atoms) + 0.01 * torch.randn(128, 5, 4, generator=g))


CFG = TrainConfig(lr=1e-2, warmup_steps=2, batch_size=16, steps=8, seed=0, val_fraction=0.0, dead_window=3, k_aux=4,
                  log_every=4, progress=False)
SAE_CFG = SAEConfig("bilinear", 5, 4, 16, k=2)


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    sae = build_sae(SAE_CFG, seed=rank)  # different init per rank: DDP must broadcast rank 0's
    result = train_sae(sae, make_data(), CFG, out_dir=Path(out_dir) / "run")  # rank 0 writes, every rank can resume
    save_sae(result.sae, Path(out_dir) / f"rank{rank}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
