"""The paper's 2-D Gaussian mixture (lunet.experiments.data.mixture2d): its density and entropy agree."""

import math

import pytest

from lunet.experiments.data.mixture2d import GaussianMixture2D


def test_mixture_density_and_entropy_are_consistent():
    mix = GaussianMixture2D()
    x = mix.sample(200000, seed=0).double()
    mc_entropy = -mix.log_prob(x).mean().item()
    assert mix.entropy() == pytest.approx(mc_entropy, abs=0.01)
    # well separated blobs: entropy ~ log 4 + entropy of one blob
    assert mix.entropy() == pytest.approx(math.log(4) + math.log(2 * math.pi * math.e * 0.04), abs=1e-3)
