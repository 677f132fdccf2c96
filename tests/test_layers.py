"""Exactness of LULinear and LeakySoftplus: round trips, log-determinants, structure."""

import math

import pytest
import torch

from lunet import LeakySoftplus, LULinear, functional

DTYPES = [torch.float32, torch.float64]
# Worst relative round-trip error we accept, in units of the dtype's epsilon.
ULPS = 64


def wide_inputs(dtype, n_cols=8):
    """Both activation branches, the kink, and large magnitudes of both signs."""
    base = torch.cat(
        [
            torch.linspace(-1e4, 1e4, 401, dtype=dtype),
            torch.linspace(-60.0, 60.0, 2001, dtype=dtype),
            torch.tensor([0.0, 1e-8, -1e-8, 36.0, -36.0, 1e6, -1e6], dtype=dtype),
        ]
    )
    pad = (-base.numel()) % n_cols
    return torch.cat([base, base[:pad]]).reshape(-1, n_cols)


def rel_err(a, b):
    return ((a - b).abs() / b.abs().clamp_min(1.0)).max().item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.1, 0.01, 0.5])
def test_leaky_softplus_round_trips_to_float_precision(dtype, alpha):
    act = LeakySoftplus(alpha).to(dtype)
    x = wide_inputs(dtype)
    y, _ = act(x)
    eps = torch.finfo(dtype).eps
    assert rel_err(act.inverse(y)[0], x) <= ULPS * eps
    # forward after inverse, starting from the output side
    y2, _ = act(act.inverse(y)[0])
    assert rel_err(y2, y) <= ULPS * eps


@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_leaky_softplus_matches_definition_and_is_stable(dtype, grad):
    """Both forward paths: with autograd, and the inference path that takes the
    value and the slopes from one sigmoid."""
    act = LeakySoftplus(0.1).to(dtype)
    x = wide_inputs(dtype)
    with torch.set_grad_enabled(grad):
        y, logdet = act(x)
    x64 = x.double()
    ref = 0.1 * x64 + 0.9 * torch.nn.functional.softplus(x64, threshold=50)
    ref_ld = torch.log(0.1 + 0.9 * torch.sigmoid(x64)).sum(1)
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
    assert rel_err(y.double(), ref) <= 8 * torch.finfo(dtype).eps
    assert torch.allclose(logdet.double(), ref_ld, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                          atol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("point", [-5.0, -0.3, 0.0, 0.7, 6.0])
def test_leaky_softplus_logdet_is_log_derivative(point):
    act = LeakySoftplus(0.1).double()
    x = torch.full((1, 3), point, dtype=torch.float64) + torch.tensor([[0.0, 0.01, -0.02]], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: act(v.unsqueeze(0))[0].squeeze(0), x[0])
    _, expected = torch.linalg.slogdet(jac)
    assert act(x)[1].item() == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize("diag", ["raw", "exp"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lu_linear_round_trips(diag, dtype):
    torch.manual_seed(0)
    layer = LULinear(16, diag=diag, init="random", init_scale=1.0).to(dtype)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(50, 16, dtype=dtype) * 100
    eps = torch.finfo(dtype).eps
    for grad_enabled in (True, False):  # with and without autograd
        with torch.set_grad_enabled(grad_enabled):
            y, _ = layer(x)
            assert rel_err(layer.inverse(y)[0], x) <= 1e4 * eps
            z = torch.randn(50, 16, dtype=dtype) * 100
            assert rel_err(layer(layer.inverse(z)[0])[0], z) <= 1e4 * eps


@pytest.mark.parametrize("diag", ["raw", "exp"])
def test_lu_linear_logdet_matches_autograd_jacobian(diag):
    torch.manual_seed(1)
    layer = LULinear(5, diag=diag, init="random", init_scale=1.0).double()
    x = torch.randn(1, 5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v.unsqueeze(0))[0].squeeze(0), x[0])
    _, expected = torch.linalg.slogdet(jac)
    y, logdet = layer(x)
    assert logdet.shape == (1,)
    assert logdet.item() == pytest.approx(expected.item(), abs=1e-12)
    # and the dense weight is exactly what the map applies
    assert torch.allclose(jac, layer.weight(), atol=1e-14)


@pytest.mark.parametrize("diag", ["raw", "exp"])
def test_triangles_stay_exact_after_optimiser_steps(diag):
    torch.manual_seed(2)
    layer = LULinear(6, diag=diag, init="random", init_scale=1.0)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(5):
        x = torch.randn(32, 6)
        y, logdet = layer(x)
        loss = (y**2).sum() - logdet.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    lower, upper = layer.matrix_l(), layer.matrix_u()
    assert torch.equal(torch.triu(lower, 1), torch.zeros_like(lower))
    assert torch.equal(torch.diagonal(lower), torch.ones(6))
    assert torch.equal(torch.tril(upper, -1), torch.zeros_like(upper))
    # the parameters did move, so the structure is not exact by accident
    assert torch.tril(layer.lu, -1).abs().sum() > 0 and torch.triu(layer.lu, 1).abs().sum() > 0
    assert torch.allclose(layer.weight(), lower @ upper)


def test_identity_init_is_identity_and_random_init_is_well_conditioned():
    ident = LULinear(32, init="identity")
    assert torch.equal(ident.weight(), torch.eye(32))
    torch.manual_seed(3)
    rand = LULinear(784, init="random")
    cond = torch.linalg.cond(rand.weight().double()).item()
    assert cond < 10.0
    assert not torch.equal(rand.weight(), torch.eye(784))


def test_parameter_counts():
    layer = LULinear(784)
    assert layer.num_parameters("free") == 784 * 784 + 784
    assert layer.num_parameters("stored") == 2 * 784 * 784 + 784
    with pytest.raises(ValueError, match="kind"):
        layer.num_parameters("dense")


def test_zero_diagonal_refuses_to_invert():
    layer = LULinear(4, diag="raw", init="identity")
    with torch.no_grad():
        layer.diag[2] = 0.0
    with pytest.raises(ValueError, match="not invertible.*indices \\[2\\]"):
        layer.inverse(torch.randn(3, 4))[0]
    with torch.no_grad(), pytest.raises(ValueError, match="not invertible"):
        layer.inverse(torch.randn(3, 4))[0]


@pytest.mark.parametrize(
    "bad, exc, pattern",
    [
        (torch.randn(3, 5), ValueError, r"shape \(\.\.\., 4\).*feature size 5"),
        (torch.randn(2, 3, 5), ValueError, r"shape \(\.\.\., 4\).*feature size 5"),
        (torch.tensor(1.0), ValueError, r"0-dim"),
        (torch.ones(3, 4, dtype=torch.int64), TypeError, r"floating dtype"),
        (torch.tensor([[0.0, float("nan"), 1.0, 2.0]]), ValueError, r"NaN or infinite"),
        (torch.tensor([[0.0, float("inf"), 1.0, 2.0]]), ValueError, r"NaN or infinite"),
        (torch.tensor([[float("inf"), float("-inf"), 1.0, 2.0]]), ValueError, r"holds 2 NaN or infinite"),
        ([[0.0, 1.0, 2.0, 3.0]], TypeError, r"torch.Tensor"),
    ],
)
def test_bad_input_is_named(bad, exc, pattern):
    layer = LULinear(4)
    act = LeakySoftplus()
    with pytest.raises(exc, match=pattern):
        layer(bad)
    with pytest.raises(exc, match=pattern):
        layer.inverse(bad)[0]
    if not (isinstance(bad, torch.Tensor) and bad.dim() >= 1 and bad.shape[-1] != 4):  # any width suits the activation
        with pytest.raises(exc, match=pattern):
            act(bad)


def test_input_of_another_dtype_or_device_than_the_model_is_named():
    from lunet import LUNet
    from lunet.baselines.realnvp import RealNVP

    modules = [(LULinear(4), 4), (LUNet(4, 2), 4), (RealNVP(mid_channels=4, num_res_blocks=1), 784)]
    for module, features in modules:
        for call in (module, module.inverse):
            with pytest.raises(TypeError, match=r"dtype torch.float64 but the model's weights are torch.float32"):
                call(torch.randn(2, features, dtype=torch.float64))
            # meta tensors stand in for another device: the check comes before any computation
            with pytest.raises(ValueError, match=r"is on meta but the model is on cpu"):
                call(torch.empty(2, features, device="meta"))


def test_finite_values_whose_sum_overflows_are_accepted():
    from lunet.checks import check_batch

    big = torch.full((2, 4), 3e38)  # finite in float32, but their sum is inf
    assert check_batch(big, 4) is big
    with pytest.raises(ValueError, match="holds 1 NaN"):
        check_batch(torch.cat([big, torch.tensor([[0.0, float("nan"), 0.0, 0.0]])]), 4)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="diag"):
        LULinear(3, diag="log")
    with pytest.raises(ValueError, match="init"):
        LULinear(3, init="zeros")
    with pytest.raises(ValueError, match="features"):
        LULinear(0)
    with pytest.raises(ValueError, match="alpha"):
        LeakySoftplus(1.0)
    with pytest.raises(ValueError, match="alpha"):
        LeakySoftplus(-0.1)


def test_learnable_alpha_gets_gradient_and_stays_in_range():
    act = LeakySoftplus(0.2, learn_alpha=True)
    x = torch.randn(10, 3)
    y, logdet = act(x)
    (y.sum() + logdet.sum()).backward()
    assert act.alpha_logit.grad is not None and act.alpha_logit.grad.abs() > 0
    assert math.isclose(act.alpha.item(), 0.2, rel_tol=1e-6)


@pytest.mark.parametrize("learnable", [False, True])
def test_inverse_gradients_are_the_implicit_function_gradients(learnable):
    act = LeakySoftplus(0.2, learn_alpha=learnable).double()
    y = (torch.randn(6, 4, dtype=torch.float64) * 5).requires_grad_()
    x = act.inverse(y)[0]
    x.sum().backward()
    fprime = act.alpha.detach() + (1 - act.alpha.detach()) * torch.sigmoid(x.detach())
    assert torch.allclose(y.grad, 1 / fprime, atol=1e-12)  # dx/dy = 1 / f'(x)
    assert torch.allclose(act(x.detach())[0], y.detach(), atol=1e-12)
    if learnable:
        # dx/da = -(df/da) / f'(x), df/da = x - softplus(x); chain through a = sigmoid(t)
        a = act.alpha.detach()
        dfda = x.detach() - torch.nn.functional.softplus(x.detach())
        expected = (-(dfda / fprime)).sum() * a * (1 - a)
        assert act.alpha_logit.grad.item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.02, 0.1, 0.3, 0.9])
def test_leaky_softplus_inverse_is_exact_between_table_points(dtype, alpha):
    """The fixed Newton count must cover the table's worst start: mid-cell, where
    a Hermite cubic errs most, across the kink and past both ends, against a
    float64 root polished far beyond the fast path's steps."""
    from lunet.functional import inverse_table

    act = LeakySoftplus(alpha).to(dtype)
    rows, h, first, _ = inverse_table(alpha, dtype, torch.device("cpu"))
    nodes = torch.arange(first - 8, first + rows.shape[0] + 8, dtype=torch.float64) * h
    y64 = torch.cat([nodes + h / 2, nodes + h / 3])
    y = y64[: y64.numel() // 64 * 64].to(dtype).reshape(-1, 64)
    root = polished_roots(y.double(), alpha)
    with torch.no_grad():
        x = act.inverse(y)[0]
    assert rel_err(x.double(), root) <= 8 * torch.finfo(dtype).eps


def test_inverse_table_needs_its_newton_steps():
    """The step count is no larger than it must be: one step fewer leaves float64
    far from exact, and float32 for a = 0.1 needs none."""
    from lunet.functional import inverse_table

    rows, h, first, steps = inverse_table(0.1, torch.float64, torch.device("cpu"))
    assert steps >= 1 and inverse_table(0.1, torch.float32, torch.device("cpu"))[3] == 0
    y = (torch.arange(first, first + rows.shape[0], dtype=torch.float64) + 0.5) * h
    x = functional.initial_guess(y.reshape(-1, 1) / h, rows, first)
    for _ in range(steps - 1):
        x = x - functional.newton_step(x, y.reshape(-1, 1), 0.1)
    assert rel_err(x, polished_roots(y.reshape(-1, 1), 0.1)) > 4 * torch.finfo(torch.float64).eps


def polished_roots(y, alpha):
    """f^{-1}(y) in float64 by 200 Newton steps from the asymptote min(y, y/alpha)."""
    root = torch.minimum(y, y / alpha)
    for _ in range(200):
        root = root - functional.newton_step(root, y, alpha)
    return root


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_nan_met_inside_a_pass_stays_nan_instead_of_indexing_out_of_range(dtype):
    """Inputs are screened, but values that overflow inside a pass reach an activation's
    inverse as NaN: the table lookup must not read out of range (on a GPU that aborts the device)."""
    from lunet.layers import LeakySoftplus

    act = LeakySoftplus(0.1)
    y = torch.tensor([[1.0, float("nan"), -3.0]], dtype=dtype)
    with torch.no_grad():
        x = act.inverse_rows(y)[0]
        expected = act.inverse_rows(y[:, [0, 2]])[0]
    assert torch.isnan(x[0, 1]) and torch.equal(x[:, [0, 2]], expected)


def test_set_factors_makes_the_layer_the_given_map_and_refuses_a_singular_u():
    torch.manual_seed(1)
    lower = torch.eye(4) + torch.randn(4, 4).tril(-1)
    upper = torch.randn(4, 4).triu(1) + torch.diag(torch.tensor([1.5, -0.5, 2.0, -3.0]))
    bias = torch.randn(4)
    for diag in ("raw", "exp"):
        layer = LULinear(4, diag=diag).set_factors(lower, upper, bias)
        torch.testing.assert_close(layer.matrix_l(), lower)
        torch.testing.assert_close(layer.matrix_u(), upper)
        torch.testing.assert_close(layer.bias.detach(), bias)
    with pytest.raises(ValueError, match="non-zero"):
        LULinear(4).set_factors(lower, upper.triu(1), bias)


def test_a_grouped_layer_maps_each_group_by_its_own_block():
    torch.manual_seed(1)
    layer = LULinear(6, groups=3, init_scale=1.0).double()
    weight = layer.weight()
    off_group = torch.block_diag(*[torch.ones(2, 2)] * 3).double() == 0
    assert torch.all(weight[off_group] == 0)
    x = torch.randn(4, 6, dtype=torch.float64)
    y, logdet = layer(x)
    torch.testing.assert_close(y, x @ weight.T + layer.bias)
    torch.testing.assert_close(logdet, torch.linalg.slogdet(weight)[1].expand(4))
    torch.testing.assert_close(layer.inverse(y)[0], x)
