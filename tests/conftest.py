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


@pytest.fixture
def interrupt_at(monkeypatch):
    """``interrupt_at(n)``: every training from now on stops as on Ctrl-C when it has trained ``n``
    epochs (``None``: no more stops), through the run log's hook before each epoch."""
    from lunet.experiments.run_log import RunLog

    def at(epochs_done):
        def epoch_begins(self, epoch):
            if epoch == epochs_done:
                raise KeyboardInterrupt

        monkeypatch.setattr(RunLog, "epoch_begins", epoch_begins)

    return at
