"""The trainer under torchrun with DDP: two CPU ranks (gloo) end with identical weights, equal to one process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import writelens as wl
from writelens.sae import build_sae
from writelens.sae.train import train_sae

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_rank_ddp_training_keeps_ranks_identical(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = wl.load_sae(tmp_path / "rank0"), wl.load_sae(tmp_path / "rank1")
    for name, tensor in rank0.state_dict().items():
        assert torch.equal(tensor, rank1.state_dict()[name]), name
    # averaging the two half-batch gradients is the full-batch gradient: same as one process from rank 0's init
    single = train_sae(build_sae(ddp_worker.SAE_CFG, seed=0), ddp_worker.make_data(), ddp_worker.CFG).sae
    for name, tensor in single.state_dict().items():
        torch.testing.assert_close(rank0.state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert (tmp_path / "run" / "final" / "cfg.json").is_file()
