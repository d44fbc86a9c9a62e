"""Fixtures shared by the training tests (test_training, test_optim, test_time_budget)."""

import pytest
import torch

from bit_transformer.data import builtin_text


@pytest.fixture
def one_thread():
    # Tiny models run faster single-threaded, and the CPU is shared with other test workers.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def text() -> str:
    return builtin_text(max_bytes=4000)
