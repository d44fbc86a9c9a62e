"""Session-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    # Tiny models on a shared 2-core machine: OpenMP spin-waiting between two threads costs far more
    # than it gains (a ~1 ms forward becomes ~200 ms under contention). One thread keeps tests fast.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
