"""The ``torch.distributions`` face, with torch's own conventions: a distribution follows its
flow's dtype and device, works over a frozen flow, validates as ``validate_args`` says (torch's global
default when not given), and the ``Transform`` adapter caches exactly as ``cache_size`` says."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.distributions import ComposeTransform, Distribution, Independent, Normal, TransformedDistribution

from lunet import FlowDistribution, LUNet, TorchTransform

D = 3


def make_flow() -> LUNet:
    torch.manual_seed(0)
    flow = LUNet(D, 3, init_scale=0.5)
    flow.standardize(torch.randn(200, D) * 2 + 1)
    return flow


def standard_base(dtype=torch.float32) -> Distribution:
    return Independent(Normal(torch.zeros(D, dtype=dtype), torch.ones(D, dtype=dtype)), 1)


@pytest.fixture
def default_validation():
    """Torch's global ``validate_args`` default, restored after the test."""
    saved = Distribution._validate_args
    yield
    Distribution.set_default_validate_args(saved)


# -- a distribution made before a move -------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_a_distribution_made_before_a_move_follows_the_flow(temperature):
    flow = make_flow()
    dist = flow.distribution(temperature=temperature)
    assert dist.sample((3,)).dtype == torch.float32
    flow.double()
    drawn = dist.sample((3,))
    assert drawn.dtype == torch.float64 and drawn.shape == (3, D)
    assert dist.rsample((2,)).dtype == torch.float64
    x = torch.randn(2, 4, D, dtype=torch.float64)
    z, logdet = flow(x)
    scale = torch.tensor(temperature, dtype=torch.float64)
    expected = Normal(torch.zeros((), dtype=torch.float64), scale).log_prob(z).sum(-1) + logdet
    torch.testing.assert_close(dist.log_prob(x), expected, rtol=1e-12, atol=1e-12)
    flow.float()  # and back
    assert dist.sample().dtype == torch.float32


# -- a frozen flow ---------------------------------------------------------------------------
def test_a_distribution_over_a_frozen_flow():
    flow = make_flow()
    dist = FlowDistribution(flow.frozen())
    x = torch.randn(2, 3, D)
    torch.testing.assert_close(dist.log_prob(x), flow.log_prob(x), rtol=1e-5, atol=1e-5)
    assert dist.sample((4,)).shape == (4, D) and dist.event_shape == (D,)
    # a frozen flow computes without autograd: no draws that silently carry no gradient
    assert not dist.has_rsample
    with pytest.raises(NotImplementedError, match="frozen flow"):
        dist.rsample((2,))
    assert FlowDistribution(flow.double().frozen()).sample((2,)).dtype == torch.float64


# -- validate_args ---------------------------------------------------------------------------
def test_validate_args_false_validates_nothing():
    flow = make_flow()
    bad = torch.tensor([[0.0, float("nan"), 1.0]])
    with pytest.raises(ValueError):
        flow.log_prob(bad)  # the flow's own checks stand
    for dist in (FlowDistribution(flow, validate_args=False), flow.distribution(validate_args=False)):
        assert torch.isnan(dist.log_prob(bad)).all()
    with pytest.raises(ValueError):
        FlowDistribution(flow, validate_args=True).log_prob(bad)


def test_the_default_is_torchs_global_setting(default_validation):
    flow = make_flow()
    bad = torch.tensor([[0.0, float("nan"), 1.0]])
    Distribution.set_default_validate_args(True)
    assert flow.distribution()._validate_args and FlowDistribution(flow)._validate_args
    with pytest.raises(ValueError, match="support"):  # torch's own sample check
        flow.distribution().log_prob(bad)
    Distribution.set_default_validate_args(False)
    assert not flow.distribution()._validate_args
    assert torch.isnan(flow.distribution().log_prob(bad)).all()
    assert flow.distribution(validate_args=True)._validate_args


# -- the Transform adapter's cache -----------------------------------------------------------
def train_two_steps(dist: TransformedDistribution, flow: LUNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Two optimiser steps on ``-dist.log_prob(x)``, returning the log-densities before each and after."""
    optimiser = torch.optim.SGD(flow.parameters(), lr=1e-2)
    seen = []
    for _ in range(2):
        loss = -dist.log_prob(x).mean()
        seen.append(dist.log_prob(x).detach())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    seen.append(dist.log_prob(x).detach())
    return seen


def test_cache_size_zero_keeps_nothing():
    flow = make_flow()
    adapter = TorchTransform(flow)
    assert adapter._cache_size == 0
    dist = TransformedDistribution(standard_base(), [adapter])
    x = torch.randn(8, D)
    train_two_steps(dist, flow, x)  # the second step backpropagates through its own pass only
    torch.testing.assert_close(dist.log_prob(x), flow.log_prob(x), rtol=1e-6, atol=1e-6)
    assert adapter._last is None
    copy.deepcopy(dist).log_prob(x)  # a used distribution copies


def test_after_an_optimiser_step_the_log_det_is_the_new_one():
    """The same tensors asked again after a step: the log-det of the new weights, from a new graph."""
    flow = make_flow()
    adapter = TorchTransform(flow)
    z = torch.randn(6, D)
    with torch.no_grad():
        x = adapter(z)
    optimiser = torch.optim.SGD(flow.parameters(), lr=0.1)
    for _ in range(2):
        logdet = adapter.log_abs_det_jacobian(z, x)
        torch.testing.assert_close(logdet, -flow(x)[1], rtol=1e-6, atol=1e-6)
        optimiser.zero_grad()
        logdet.sum().backward()
        optimiser.step()


def test_with_cache_gives_torchs_one_entry_cache():
    flow = make_flow()
    cached = TorchTransform(flow).with_cache(1)
    assert isinstance(cached, TorchTransform) and cached._cache_size == 1 and cached.transform is flow
    assert cached.with_cache(1) is cached and cached.with_cache(0)._cache_size == 0
    z = torch.randn(5, D)
    x = cached(z)
    assert cached(z) is x and cached.inv(x) is z  # torch's identity cache
    torch.testing.assert_close(cached.log_abs_det_jacobian(z, x), flow.inverse(z)[1])
    dist = TransformedDistribution(standard_base(), ComposeTransform([TorchTransform(flow)], cache_size=1))
    data = torch.randn(4, D)
    torch.testing.assert_close(dist.log_prob(data), flow.log_prob(data), rtol=1e-6, atol=1e-6)
    drawn = dist.rsample((6,))
    torch.testing.assert_close(dist.log_prob(drawn), flow.log_prob(drawn), rtol=1e-5, atol=1e-5)
    # copies and pickles leave the cache (and its graph) behind
    for clone in (copy.deepcopy(cached), pickle.loads(pickle.dumps(cached))):
        assert clone._last is None and clone._cached_x_y == (None, None)
        torch.testing.assert_close(clone(z), x)
    copy.deepcopy(dist).log_prob(data)
