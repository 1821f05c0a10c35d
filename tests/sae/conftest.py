import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_single_thread():
    """Seed, and run each SAE test on one intra-op thread: the tests are small, and with pytest-xdist's
    workers on a shared machine extra threads only add synchronisation stalls."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
