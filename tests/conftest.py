"""Fixtures shared by several test modules."""
import pytest


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread, restoring the previous count afterwards."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
