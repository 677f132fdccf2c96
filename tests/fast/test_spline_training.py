"""The spline's training forward against its plain formulas (lunet.fast.spline_training): the written-out
backward's gradients to the inputs and to the knot tables, in float32 and float64, the module taking it in
grad mode, and higher derivatives and torch.func taking the plain formulas instead."""

from __future__ import annotations

import pytest
import torch

from fast.test_spline import DTYPES, TOL, _inputs, _spline, passes  # noqa: F401 (passes: both ways)
from lunet.fast.spline_plain import spline_forward_plain
from lunet.fast.spline_training import SplineForward


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_written_out_backward_gives_autograds_gradients(dtype):
    spline = _spline(dtype)
    x = _inputs(dtype).requires_grad_(True)
    g_y = torch.randn(x.shape, dtype=dtype)
    g_ld = torch.randn(x.shape[0], dtype=dtype)
    params = list(spline.parameters())
    xk, yk, dk = spline._tables(x)
    y, ld = SplineForward.apply(x, xk, yk, dk, spline.bound)
    fast = torch.autograd.grad((y * g_y).sum() + (ld * g_ld).sum(), [x] + params)
    y_plain, ld_plain = spline_forward_plain(x, *spline._tables(x), spline.bound)
    plain = torch.autograd.grad((y_plain * g_y).sum() + (ld_plain * g_ld).sum(), [x] + params)
    torch.testing.assert_close(y, y_plain, **TOL[dtype])
    torch.testing.assert_close(ld, ld_plain, **TOL[dtype])
    for name, a, b in zip(["x", "widths", "heights", "slopes"], fast, plain):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=name)


def test_the_module_takes_the_fast_passes_and_gives_the_plain_figures():
    spline = _spline(torch.float64)
    x = _inputs(torch.float64)
    y, ld = spline.forward_rows(x)  # grad mode: the written-out backward
    assert "SplineForward" in type(y.grad_fn).__name__
    y_plain, ld_plain = spline_forward_plain(x, *spline.tables(), spline.bound)
    torch.testing.assert_close(y, y_plain)
    torch.testing.assert_close(ld, ld_plain)
    with torch.no_grad():
        back, inv_ld = spline.inverse(y)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(inv_ld, -ld)


def test_double_backward_and_torch_func_take_the_plain_formulas():
    spline = _spline(torch.float64, features=3)
    x = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(spline(x)[1].sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)

    def plain_logdet(v):
        return spline_forward_plain(v, *spline._tables(v), spline.bound)[1].sum()

    hessian = torch.autograd.functional.hessian(plain_logdet, x.detach())
    torch.testing.assert_close(gg, hessian.sum(dim=(0, 1)))
    jac = torch.func.jacrev(lambda v: spline(v)[0])(x.detach()[0])
    expected = torch.autograd.functional.jacobian(lambda v: spline_forward_plain(
        v.unsqueeze(0), *spline.tables(), spline.bound)[0][0], x.detach()[0])
    torch.testing.assert_close(jac, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bins", [1, 2, 8])
def test_the_written_out_backward_gives_the_knot_tables_gradients(dtype, bins):
    # the tables themselves as leaves: every knot's gradient, the ends' included
    spline = _spline(dtype, features=9, bins=bins, seed=10 + bins)
    tables = [t.requires_grad_(True) for t in spline.tables()]
    x = torch.cat([_inputs(dtype, 120, 9), torch.tensor([[3.0], [-3.0]], dtype=dtype).expand(2, 9)])
    x.requires_grad_(True)
    g_y = torch.randn(x.shape, dtype=dtype)
    g_ld = torch.randn(x.shape[0], dtype=dtype)
    y, ld = SplineForward.apply(x, *tables, spline.bound)
    fast = torch.autograd.grad((y * g_y).sum() + (ld * g_ld).sum(), [x] + tables)
    y_plain, ld_plain = spline_forward_plain(x, *tables, spline.bound)
    plain = torch.autograd.grad((y_plain * g_y).sum() + (ld_plain * g_ld).sum(), [x] + tables)
    for name, a, b in zip(["x", "xk", "yk", "dk"], fast, plain):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=name)
    torch.testing.assert_close(fast[0][-2:], g_y[-2:])  # on the ends: the identity
