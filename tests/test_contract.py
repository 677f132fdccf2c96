"""The transform contract, checked the same way for every invertible piece.

Inputs ``(..., D)`` with any leading dimensions map to ``(y, log|det J|)`` with the
log-det of shape ``x.shape[:-1]``; ``inverse`` maps back. In float64, D = 5.
"""

from __future__ import annotations

import math

import pytest
import torch

from lunet import FlowDistribution, LeakySoftplus, LULinear, LUNet

D = 5
LEADING = [(), (4,), (2, 3)]


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def make_lunet() -> LUNet:
    torch.manual_seed(0)
    net = LUNet(D, 3, init_scale=0.5).double()
    net.standardize(torch.randn(200, D, dtype=torch.float64) * 2 + 1)
    return _perturbed(net, 1)


FACTORIES = {
    "LULinear-raw": lambda: _perturbed(LULinear(D, diag="raw").double(), 2),
    "LULinear-exp": lambda: _perturbed(LULinear(D, diag="exp").double(), 3),
    "LeakySoftplus-fixed": lambda: LeakySoftplus(0.1).double(),
    "LeakySoftplus-learnable": lambda: _perturbed(LeakySoftplus(0.3, learnable=True).double(), 4),
    "LUNet": make_lunet,
    "LUNet-frozen": lambda: make_lunet().frozen(),
}
ALL = pytest.mark.parametrize("name", list(FACTORIES))
MODULES = pytest.mark.parametrize("name", [n for n in FACTORIES if n != "LUNet-frozen"])


def inputs(leading: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return 2 * torch.randn(*leading, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@ALL
@pytest.mark.parametrize("leading", LEADING, ids=str)
def test_shapes_and_rows_are_independent(name, leading):
    t = FACTORIES[name]()
    x = inputs(leading)
    y, logdet = t(x)
    assert y.shape == x.shape and logdet.shape == x.shape[:-1]
    assert t.inverse(y).shape == x.shape
    rows = x.reshape(-1, D)
    for i, row in enumerate(rows):  # a batched call is the row-by-row calls
        y_row, ld_row = t(row)
        assert ld_row.shape == ()
        torch.testing.assert_close(y_row, y.reshape(-1, D)[i], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ld_row, logdet.reshape(-1)[i], rtol=1e-12, atol=1e-12)


@ALL
def test_round_trip_both_ways(name):
    t = FACTORIES[name]()
    x = inputs((2, 3))
    y, _ = t(x)
    torch.testing.assert_close(t.inverse(y), x, rtol=1e-10, atol=1e-10)
    y2 = inputs((7,), seed=1)
    torch.testing.assert_close(t(t.inverse(y2))[0], y2, rtol=1e-10, atol=1e-10)


@MODULES
def test_log_det_is_that_of_the_jacobian(name):
    t = FACTORIES[name]()
    x = inputs(())
    jacobian = torch.autograd.functional.jacobian(lambda v: t(v)[0], x)
    torch.testing.assert_close(t(x)[1], torch.linalg.slogdet(jacobian)[1], rtol=1e-10, atol=1e-10)


def test_the_snapshot_is_the_flow():
    net = make_lunet()
    x = inputs((2, 3))
    z, logdet = net(x)
    z_frozen, logdet_frozen = net.frozen()(x)
    torch.testing.assert_close(z_frozen, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet_frozen, logdet, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sample_shape", [(), (7,), (2, 3), 4], ids=str)
@pytest.mark.parametrize("source", ["flow", "frozen", "distribution"])
def test_sample_shapes(source, sample_shape):
    net = make_lunet()
    draw = {"flow": net.sample, "frozen": net.frozen().sample, "distribution": net.distribution().sample}[source]
    expected = (sample_shape,) if isinstance(sample_shape, int) else sample_shape
    samples = draw(sample_shape)
    assert samples.shape == (*expected, D) and not samples.requires_grad
    flat = samples.reshape(-1, D)
    assert len(flat) < 2 or (flat[0] - flat[1]).abs().max() > 0  # distinct draws


def test_the_distribution_face():
    net = make_lunet()
    dist = net.distribution()
    assert isinstance(dist, torch.distributions.Distribution)
    assert dist.event_shape == (D,) and dist.batch_shape == ()
    x = inputs((2, 3))
    assert dist.log_prob(x).shape == (2, 3)
    torch.testing.assert_close(dist.log_prob(x), net.log_prob(x), rtol=1e-12, atol=1e-12)
    # a temperature scales the latent, and the density is that of the tempered draws
    cold = net.distribution(temperature=0.5)
    z, logdet = net(x)
    expected = torch.distributions.Normal(0.0, 0.5).log_prob(z).sum(-1) + logdet
    torch.testing.assert_close(cold.log_prob(x), expected, rtol=1e-9, atol=1e-9)
    drawn = dist.rsample((16,))
    drawn.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.blocks.parameters() if p.requires_grad)


def test_the_density_integrates_to_one():
    torch.manual_seed(0)
    net = LUNet(2, 3, alpha=0.5, init_scale=0.5).double()  # a slope of 0.5 keeps the mass near the box
    with torch.no_grad():
        for block in net.blocks:
            block.bias.normal_(0.0, 0.5)
    dist: FlowDistribution = net.distribution()
    side = torch.linspace(-15.0, 15.0, 601, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(side, side, indexing="ij"), dim=-1)  # (601, 601, 2): leading dims kept
    with torch.no_grad():
        density = dist.log_prob(grid).exp()
        outside = float((net.sample(100_000).abs() > 15).any(-1).double().mean())  # mass beyond the box
    cell = (side[1] - side[0]) ** 2
    assert outside < 2e-3
    assert float(density.sum() * cell) == pytest.approx(1.0 - outside, abs=2e-3)


def test_an_int_or_a_shape_but_nothing_else():
    net = make_lunet()
    for bad in (-1, (2, -3), "many", 2.5):
        with pytest.raises(ValueError, match="sample_shape"):
            net.sample(bad)
    assert math.prod(net.sample((0, 3)).shape) == 0
