"""lunet.functional: the leaky softplus maths on tensors of any shape."""

import pytest
import torch

from lunet import functional as F


@pytest.mark.parametrize("shape", [(), (7,), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_any_shape_round_trips(shape, dtype):
    x = 8 * torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    y = F.leaky_softplus(x, 0.1)
    assert y.shape == x.shape and F.leaky_softplus_log_derivative(x, 0.1).shape == x.shape
    back = F.leaky_softplus_inverse(y, 0.1)
    eps = torch.finfo(dtype).eps
    assert ((back - x).abs() <= 8 * eps * x.abs().clamp_min(1)).all()


def test_the_definition_and_the_log_derivative():
    x = torch.linspace(-40, 40, 801, dtype=torch.float64, requires_grad=True)
    a = 0.3
    y = F.leaky_softplus(x, a)
    reference = a * x + (1 - a) * torch.log1p(torch.exp(-x.abs())) + (1 - a) * x.clamp_min(0)
    torch.testing.assert_close(y, reference, rtol=1e-14, atol=1e-14)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(F.leaky_softplus_log_derivative(x.detach(), a), grad.log(), rtol=1e-13, atol=1e-13)


def test_the_inverse_gradients_are_the_implicit_ones():
    y = torch.randn(6, dtype=torch.float64, requires_grad=True)
    slope = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, a: F.leaky_softplus_inverse(v, a), (y, slope))
    x = F.leaky_softplus_inverse(y, slope)
    (dx_dy,) = torch.autograd.grad(x.sum(), y)
    torch.testing.assert_close(dx_dy, 1 / F.leaky_softplus_derivative(x.detach(), 0.2), rtol=1e-12, atol=1e-12)


def test_a_slope_outside_the_exact_range_is_refused():
    with pytest.raises(ValueError, match=r"\[0.0001, 1\)"):
        F.leaky_softplus_inverse(torch.zeros(3), 1e-6)
