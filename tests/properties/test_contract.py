"""The transform contract, checked the same way for every invertible piece.

Inputs ``(..., D)`` with any leading dimensions map to ``(y, log|det J|)`` with the
log-det of shape ``x.shape[:-1]``; ``inverse`` maps back. In float64, D = 5.
"""

from __future__ import annotations

import math

import pytest
import torch

from lunet import Composition, FlowDistribution, Inverse, LeakySoftplus, LULinear, LUNet, Sequential, Standardize
from lunet.spline import MonotoneSpline

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


class ShiftCoupling(torch.nn.Module):
    """A user's own transform: the second half of the features shifted by a function of the first."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(D // 2, D - D // 2)

    def forward(self, x):
        a, b = x[..., : D // 2], x[..., D // 2 :]
        return torch.cat([a, b + torch.tanh(self.net(a))], dim=-1), x.new_zeros(x.shape[:-1])

    def inverse(self, y):
        a, b = y[..., : D // 2], y[..., D // 2 :]
        return torch.cat([a, b - torch.tanh(self.net(a))], dim=-1), y.new_zeros(y.shape[:-1])


def make_spline_lunet() -> LUNet:
    torch.manual_seed(2)
    net = LUNet(D, 3, init_scale=0.5, activation="spline", bins=5, bound=3.0).double()
    net.standardize(torch.randn(200, D, dtype=torch.float64) * 2 + 1)
    return _perturbed(net, 9)


def make_input_spline_lunet() -> LUNet:
    torch.manual_seed(3)
    net = LUNet(D, 3, init_scale=0.5, activation="spline", bins=5, bound=3.0, input_spline=True).double()
    net.standardize(torch.randn(200, D, dtype=torch.float64) * 2 + 1)
    return _perturbed(net, 11)


def make_standardize() -> Standardize:
    return Standardize(D).double().fit(torch.randn(100, D, dtype=torch.float64) * 3 + 2)


def make_sequential() -> Sequential:
    torch.manual_seed(1)
    parts = (make_standardize(), _perturbed(LULinear(D).double(), 6), LeakySoftplus(0.2).double(),
             ShiftCoupling().double(), _perturbed(LULinear(D).double(), 7))
    return Sequential(*parts)


FACTORIES = {
    "LULinear-raw": lambda: _perturbed(LULinear(D, diag="raw").double(), 2),
    "LULinear-exp": lambda: _perturbed(LULinear(D, diag="exp").double(), 3),
    "LeakySoftplus-fixed": lambda: LeakySoftplus(0.1).double(),
    "LeakySoftplus-learnable": lambda: _perturbed(LeakySoftplus(0.3, learn_alpha=True).double(), 4),
    "Standardize": make_standardize,
    "Sequential": make_sequential,
    "LUNet": make_lunet,
    "LUNet-frozen": lambda: make_lunet().frozen(),
    "MonotoneSpline": lambda: _perturbed(MonotoneSpline(D, bins=5, bound=3.0).double(), 10),
    "LUNet-spline": make_spline_lunet,
    "LUNet-spline-frozen": lambda: make_spline_lunet().frozen(),
    "LUNet-input-spline": make_input_spline_lunet,
    "LUNet-input-spline-frozen": lambda: make_input_spline_lunet().frozen(),
    "Inverse-LULinear": lambda: Inverse(_perturbed(LULinear(D).double(), 8)),
    "Inverse-LeakySoftplus": lambda: Inverse(LeakySoftplus(0.1).double()),
    "Inverse-Sequential": lambda: Inverse(make_sequential()),
    "Inverse-LUNet": lambda: Inverse(make_lunet()),
}
ALL = pytest.mark.parametrize("name", list(FACTORIES))
MODULES = pytest.mark.parametrize("name", [n for n in FACTORIES if not n.endswith("-frozen")])


def inputs(leading: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return 2 * torch.randn(*leading, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_agree_both_ways(first, second, tol: float) -> None:
    """Two transforms give the same outputs and log-dets, forward and inverse."""
    x, z = inputs((2, 3)), inputs((5,), seed=3)
    for a, b in (*zip(first(x), second(x)), *zip(first.inverse(z), second.inverse(z))):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@ALL
@pytest.mark.parametrize("leading", LEADING, ids=str)
def test_shapes_and_rows_are_independent(name, leading):
    t = FACTORIES[name]()
    x = inputs(leading)
    y, logdet = t(x)
    assert y.shape == x.shape and logdet.shape == x.shape[:-1]
    x_back, inverse_logdet = t.inverse(y)
    assert x_back.shape == x.shape and inverse_logdet.shape == x.shape[:-1]
    rows = x.reshape(-1, D)
    for i, row in enumerate(rows):  # a batched call is the row-by-row calls
        y_row, ld_row = t(row)
        assert ld_row.shape == ()
        torch.testing.assert_close(y_row, y.reshape(-1, D)[i], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ld_row, logdet.reshape(-1)[i], rtol=1e-12, atol=1e-12)


@ALL
def test_round_trip_both_ways_and_the_log_dets_cancel(name):
    t = FACTORIES[name]()
    x = inputs((2, 3))
    y, logdet = t(x)
    x_back, inverse_logdet = t.inverse(y)
    torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet + inverse_logdet, torch.zeros_like(logdet), rtol=0, atol=1e-10)
    y2 = inputs((7,), seed=1)
    torch.testing.assert_close(t(t.inverse(y2)[0])[0], y2, rtol=1e-10, atol=1e-10)


@MODULES
def test_composed_with_its_inverse_it_is_the_identity(name):
    """nflows' check: ``Sequential(Inverse(t), t)`` gives back its input with log-det 0."""
    t = FACTORIES[name]()
    y = inputs((3, 2), seed=2)
    out, logdet = Sequential(Inverse(t), t)(y)
    torch.testing.assert_close(out, y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet, torch.zeros_like(logdet), rtol=0, atol=1e-10)


def test_a_sequential_is_its_parts_in_turn():
    seq = make_sequential()
    x = inputs((4,))
    h, total = x, torch.zeros(4, dtype=torch.float64)
    for part in seq:
        h, ld = part(h)
        total = total + ld
    y, logdet = seq(x)
    torch.testing.assert_close(y, h, rtol=0, atol=0)
    torch.testing.assert_close(logdet, total, rtol=0, atol=0)
    back, _ = seq.inverse(y)
    for part in reversed(list(seq)):
        y = part.inverse(y)[0]
    torch.testing.assert_close(back, y, rtol=0, atol=0)


def test_lunet_is_the_composition_of_its_parts():
    net = make_lunet()
    assert isinstance(net, Composition)
    parts = list(net)
    assert [type(p).__name__ for p in parts] == ["Standardize"] + ["LULinear", "LeakySoftplus"] * 2 + ["LULinear"]
    assert_agree_both_ways(net, Sequential(*parts), 1e-12)


@MODULES
def test_log_det_is_that_of_the_jacobian(name):
    t = FACTORIES[name]()
    x = inputs(())
    jacobian = torch.autograd.functional.jacobian(lambda v: t(v)[0], x)
    torch.testing.assert_close(t(x)[1], torch.linalg.slogdet(jacobian)[1], rtol=1e-10, atol=1e-10)
    y = t(x)[0].detach()
    inverse_jacobian = torch.autograd.functional.jacobian(lambda v: t.inverse(v)[0], y)
    torch.testing.assert_close(t.inverse(y)[1], torch.linalg.slogdet(inverse_jacobian)[1], rtol=1e-9, atol=1e-9)


def test_the_frozen_flow_is_the_flow():
    net = make_lunet()
    x = inputs((2, 3))
    z, logdet = net(x)
    z_frozen, logdet_frozen = net.frozen()(x)
    torch.testing.assert_close(z_frozen, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet_frozen, logdet, rtol=1e-10, atol=1e-10)
    for a, b in zip(net.frozen().inverse(z), net.inverse(z)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


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


def test_a_transformed_distribution_over_the_adapter_is_the_flows_density():
    from torch.distributions import Independent, Normal, TransformedDistribution

    from lunet import TorchTransform

    net = make_lunet()
    base = Independent(Normal(torch.zeros(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64)), 1)
    dist = TransformedDistribution(base, [TorchTransform(net)])
    x = inputs((2, 3))
    torch.testing.assert_close(dist.log_prob(x), net.log_prob(x), rtol=1e-10, atol=1e-10)
    drawn = dist.rsample((7,))
    assert drawn.shape == (7, D)
    torch.testing.assert_close(dist.log_prob(drawn), net.log_prob(drawn), rtol=1e-10, atol=1e-10)
    seq = make_sequential()  # a composition with a user's coupling adapts the same way
    torch.testing.assert_close(TransformedDistribution(base, [TorchTransform(seq)]).log_prob(x),
                               base.log_prob(seq(x)[0]) + seq(x)[1], rtol=1e-10, atol=1e-10)


def test_a_distribution_over_another_base():
    from torch.distributions import Independent, StudentT

    net = make_lunet()
    base = Independent(StudentT(3.0, torch.zeros(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64)), 1)
    dist = net.distribution(base=base)
    x = inputs((4,))
    z, logdet = net(x)
    torch.testing.assert_close(dist.log_prob(x), base.log_prob(z) + logdet, rtol=1e-12, atol=1e-12)
    assert dist.sample((3,)).shape == (3, D)
    with pytest.raises(ValueError, match="not both"):
        net.distribution(temperature=0.5, base=base)
    with pytest.raises(ValueError, match="event_shape"):
        net.distribution(base=Independent(StudentT(3.0, torch.zeros(D + 1, dtype=torch.float64)), 1))


def test_a_frozen_sequential_folds_its_lu_runs_and_copies_the_rest():
    from lunet import FrozenLUNet

    seq = make_sequential()  # Standardize, LU, activation, the user's coupling, LU
    frozen = seq.frozen()
    assert [type(s).__name__ for s in frozen.stages] == ["FrozenLUNet", "LeakySoftplus", "ShiftCoupling", "FrozenLUNet"]
    assert_agree_both_ways(frozen, seq, 1e-10)
    x = inputs((2, 3))
    before = frozen(x)[0]
    with torch.no_grad():
        seq[3].net.weight.data.mul_(2.0)  # the copied coupling is frozen too
        seq[1].lu.data.mul_(0.5)
    assert torch.equal(frozen(x)[0], before)
    # a whole LU-Net pattern folds into one frozen pass
    torch.manual_seed(2)
    chain = Sequential(*(_perturbed(m.double(), k) for k, m in enumerate(
        [LULinear(D), LeakySoftplus(0.1), LULinear(D), LeakySoftplus(0.1), LULinear(D)])))
    folded = chain.frozen()
    assert len(folded.stages) == 1 and isinstance(folded.stages[0], FrozenLUNet)
    for a, b in zip(folded(x), chain(x)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_freezing_a_pattern_it_cannot_fold_is_refused():
    from lunet import FrozenLUNet

    with pytest.raises(ValueError, match="folds"):
        FrozenLUNet(Sequential(LULinear(D).double(), LeakySoftplus(0.1).double()))
