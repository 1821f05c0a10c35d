import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Seed, and one intra-op thread: the models are tiny and the machine is shared (extra threads only stall)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
