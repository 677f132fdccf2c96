"""The leaky softplus's fast passes (lunet.fast.activation) against its definition: the chunked log-det
products, the negated inference pass, the written-out gradients of a fixed and of a learned slope."""

import pytest
import torch

from lunet import LeakySoftplus, functional
from lunet.fast.activation import negated_forward
from test_layers import DTYPES, rel_err, wide_inputs


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("alpha,width", [(0.1, 784), (0.01, 784), (0.5, 7), (0.1, 3)])
def test_inference_log_det_by_chunked_products_matches_the_sum_of_logs(dtype, tol, alpha, width):
    """Without gradients the log-det is taken from products of a few slopes; with
    every slope at its minimum a (inputs far left) the products must not underflow."""
    act = LeakySoftplus(alpha).to(dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([20 * torch.randn(64, width, generator=gen, dtype=torch.float64),
                   torch.full((1, width), -1e4, dtype=torch.float64)]).to(dtype)
    with torch.no_grad():
        _, fast = act(x)
    _, reference = act(x.clone().requires_grad_())
    exact = torch.log(alpha + (1 - alpha) * torch.sigmoid(x.double())).sum(1)
    assert torch.isfinite(fast).all()
    assert ((fast.double() - exact).abs() / exact.abs().clamp_min(1)).max() < tol
    assert ((reference.double() - exact).abs() / exact.abs().clamp_min(1)).max() < tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.1, 0.01, 0.5])
def test_negated_inference_activation_matches_definition_within_its_range(dtype, alpha):
    """The density pass's activation: ``-g(-u)`` from one sigmoid of ``u``, exact to a few
    ulps of ``max(|g|, 1)`` wherever it says so, and saying so nowhere else."""
    x = wide_inputs(dtype)
    x = x[(x <= 80).all(dim=1)]  # sigmoid(-x) stays normal in both dtypes
    u = -x
    out, scratch = torch.empty_like(u), torch.empty_like(u)
    logdet, in_range = negated_forward(u, alpha, out, scratch)
    c = alpha / (1 - alpha)
    x64 = x.double()
    g = torch.nn.functional.softplus(x64, threshold=50) + c * x64
    ref_ld = torch.log(torch.sigmoid(x64) + c).sum(1)
    assert bool(in_range)
    assert rel_err(-out.double(), g) <= 8 * torch.finfo(dtype).eps
    assert rel_err(logdet.double(), ref_ld) <= 64 * torch.finfo(dtype).eps
    beyond = torch.full((2, 8), 1.0, dtype=dtype)
    beyond[1, 3] = 100.0 if dtype == torch.float32 else 750.0  # sigmoid(-x) is no longer normal
    flags = [negated_forward(-row[None], alpha, *torch.empty(2, 1, 8, dtype=dtype))[1] for row in beyond]
    assert [bool(f) for f in flags] == [True, False]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.1, 0.01, 0.5])
def test_fixed_slope_activation_gradients_match_the_definition(dtype, alpha):
    """The training path's written-out backward (value and log-det together, a fixed
    slope) against autograd through the definition in float64, over both branches
    and large magnitudes; and against finite differences (gradcheck)."""
    act = LeakySoftplus(alpha).to(dtype)
    x = wide_inputs(dtype).requires_grad_()
    gen = torch.Generator().manual_seed(0)
    g_value = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    g_logdet = torch.randn(x.shape[0], generator=gen, dtype=torch.float64)
    value, logdet = act(x)
    (got,) = torch.autograd.grad((value, logdet), x, (g_value.to(dtype), g_logdet.to(dtype)))
    x64 = x.detach().double().requires_grad_()
    ref_value = alpha * x64 + (1 - alpha) * torch.nn.functional.softplus(x64, threshold=50)
    ref_logdet = torch.log(alpha + (1 - alpha) * torch.sigmoid(x64)).sum(1)
    (want,) = torch.autograd.grad((ref_value, ref_logdet), x64, (g_value, g_logdet))
    assert rel_err(got.double(), want) <= 16 * torch.finfo(dtype).eps
    if dtype == torch.float64:
        small = (6 * torch.randn(3, 5, generator=gen, dtype=dtype)).requires_grad_()
        assert torch.autograd.gradcheck(lambda v: act(v), (small,))


@pytest.mark.parametrize("slope_shape", [(), (4,)], ids=["one-slope", "slope-per-feature"])
def test_the_learned_slope_pass_has_the_definitions_values_and_gradients(slope_shape):
    from lunet.fast.activation import LearnedAlphaForward

    torch.manual_seed(0)
    x = (3 * torch.randn(6, 4, dtype=torch.float64)).requires_grad_()
    a = (0.1 + 0.8 * torch.rand(slope_shape, dtype=torch.float64)).requires_grad_()
    value, logdet = LearnedAlphaForward.apply(x, a)
    torch.testing.assert_close(value, functional.leaky_softplus(x, a))
    torch.testing.assert_close(logdet, functional.leaky_softplus_log_derivative(x, a).sum(dim=1))
    assert torch.autograd.gradcheck(LearnedAlphaForward.apply, (x, a))
