"""Speed and samples of a trained peer (lunet.experiments.benchmarks.peers.speed): a grid of draws that
overflow."""

import pytest
import torch

from experiments.benchmarks.peers.test_spaces import _pixels
from experiments.benchmarks.peers.test_training import FAST, Sleepy
from lunet.experiments.benchmarks.peers import grid_samples, images_from_pixels

pytestmark = pytest.mark.usefixtures("one_thread")


class Overflowing(Sleepy):
    """Draws that overflow, as an autoregressive flow's may at T = 1."""

    def sample(self, n):
        return torch.full((n, self.mu.numel()), float("inf"))


def test_a_sample_grid_of_overflowing_draws_says_so_instead_of_failing():
    pixels = _pixels(40, 12)
    data = images_from_pixels("tiny", pixels[:20], pixels[20:30], pixels[30:])
    grid = grid_samples(Overflowing(12, step=0.0, evaluation=0.0), data, FAST)
    assert grid["pixels_b64"] is None and "non-finite" in grid["why"]
