"""MonotoneSpline: identity start, exact inverse, log-det against autograd, tails, refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lunet import LUNet
from lunet.spline import MIN_SLOPE, MonotoneSpline


def random_spline(features: int = 4, bins: int = 6, bound: float = 3.0, seed: int = 0) -> MonotoneSpline:
    torch.manual_seed(seed)
    spline = MonotoneSpline(features, bins, bound).double()
    with torch.no_grad():
        for p in spline.parameters():
            p.normal_(0.0, 1.5)
    return spline


def test_starts_as_the_identity():
    x = torch.randn(50, 3) * 4
    y, logdet = MonotoneSpline(3, bins=5, bound=2.0)(x)
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(logdet, torch.zeros(50), atol=1e-6, rtol=0)


@pytest.mark.parametrize("leading", [(), (7,), (2, 3)])
def test_inverse_is_exact_and_log_dets_cancel(leading):
    spline = random_spline()
    x = torch.randn(*leading, 4, dtype=torch.float64) * 3
    y, logdet = spline(x)
    back, inverse_logdet = spline.inverse(y)
    assert y.shape == x.shape and logdet.shape == leading
    torch.testing.assert_close(back, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(inverse_logdet, -logdet, atol=1e-12, rtol=0)


def test_log_det_is_that_of_the_jacobian():
    spline = random_spline(features=3)
    x = torch.tensor([[-3.5, -1.0, 0.2], [2.9, 3.2, -2.99], [0.0, 1.7, -0.4]], dtype=torch.float64)
    _, logdet = spline(x)
    for row, value in zip(x, logdet):
        jacobian = torch.autograd.functional.jacobian(lambda v: spline(v)[0], row)
        torch.testing.assert_close(value, torch.logdet(jacobian), atol=1e-10, rtol=0)


def test_is_increasing_and_the_identity_outside_the_bound():
    spline = random_spline(features=2, bound=2.0)
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64).unsqueeze(1).expand(-1, 2)
    y, _ = spline(x)
    assert bool((y.diff(dim=0) > 0).all())
    outside = x.abs() >= 2.0
    torch.testing.assert_close(y[outside], x[outside])


def test_slopes_stay_above_the_floor():
    spline = random_spline(features=2)
    with torch.no_grad():
        spline.slopes.fill_(-50.0)
    x = torch.linspace(-2.9, 2.9, 500, dtype=torch.float64).unsqueeze(1).expand(-1, 2)
    y = x.clone().requires_grad_(True)
    out, _ = spline(y)
    (grad,) = torch.autograd.grad(out.sum(), y)
    assert float(grad.min()) >= MIN_SLOPE * 0.5


def test_gradients_reach_every_parameter():
    spline = random_spline()
    x = torch.randn(20, 4, dtype=torch.float64) * 2
    y, logdet = spline(x)
    (y.square().sum() + logdet.sum()).backward()
    for name, p in spline.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_second_derivatives_match_finite_differences():
    spline = random_spline(features=2)
    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(lambda v: spline(v)[1], x)
    eps = 1e-5
    for i in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[i] = eps
        g_plus = torch.autograd.functional.jacobian(lambda v: spline(v)[1], x + step)
        g_minus = torch.autograd.functional.jacobian(lambda v: spline(v)[1], x - step)
        torch.testing.assert_close(hessian[i], (g_plus - g_minus) / (2 * eps), atol=1e-5, rtol=1e-5)
    assert bool(hessian.abs().sum() > 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"features": 0}, "features"), ({"features": 3, "bins": 0}, "bins"),
     ({"features": 3, "bound": -1.0}, "bound"), ({"features": 3, "bound": float("nan")}, "bound"),
     ({"features": 3, "bins": 5000}, "bins")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MonotoneSpline(**kwargs)


def test_wrong_feature_size_is_refused():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        MonotoneSpline(3)(torch.randn(4, 5))


def spline_lunet(groups: int = 1) -> LUNet:
    torch.manual_seed(1)
    net = LUNet(6, 3, activation="spline", bins=5, bound=3.0, groups=groups).double()
    with torch.no_grad():
        for spline in net.activations:
            for p in spline.parameters():
                p.normal_(0.0, 1.0)
    return net


def test_groups_of_a_spline_lunet_split_into_flows_that_add_up():
    net = spline_lunet(groups=2)
    x = torch.randn(5, 6, dtype=torch.float64)
    first, second = net.split_groups()
    torch.testing.assert_close(first.log_prob(x[:, :3]) + second.log_prob(x[:, 3:]), net.log_prob(x))


def test_a_gaussian_start_with_splines_is_the_gaussian_fit():
    """Splines start as the identity, so the start is that of a single LU layer: the Gaussian fit."""
    data = torch.randn(400, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)
    net = LUNet(6, 3, activation="spline").double().init_gaussian(data)
    gaussian = LUNet(6, 1).double().init_gaussian(data)
    x = data[:20] + 0.5
    torch.testing.assert_close(net.log_prob(x), gaussian.log_prob(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"activation": "relu"}, "activation"), ({"activation": "spline", "learn_alpha": True}, "learn_alpha")],
)
def test_a_lunet_refuses_an_unknown_activation_or_a_slope_for_splines(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LUNet(4, 2, **kwargs)


def test_a_spline_of_many_bins_takes_memory_in_proportion_to_its_rows_not_its_bins():
    # before, each pass compared every entry with every knot: 4096 rows x 20 features x 998 knots
    # held 82 million booleans and their integer sums, about 0.7 GB
    probe = (
        "import resource, torch\n"
        "from lunet.spline import MonotoneSpline\n"
        "spline = MonotoneSpline(20, bins=999)\n"
        "x = torch.randn(4096, 20) * 3\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "with torch.no_grad():\n"
        "    y, _ = spline(x)\n"
        "    back, _ = spline.inverse(y)\n"
        "assert torch.allclose(back, x, atol=1e-4)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    grown = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    assert grown < 100e6
