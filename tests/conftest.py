"""Fixtures shared by several test modules."""

import pytest
import torch


@pytest.fixture
def two_threads():
    """Two intra-op threads, so that ``FrozenAffine`` has shares to split into; restored after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)
