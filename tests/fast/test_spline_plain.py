"""The plain formulas of the monotone spline (lunet.fast.spline_plain): the bin search for one knot table
per feature or one per row, the forward values and log-derivatives against autograd, the exact inverse,
and the identity outside the interval."""

from __future__ import annotations

import pytest
import torch

from fast.test_spline import _inputs, _spline
from lunet.fast.spline_plain import bin_index, spline_forward_plain, spline_inverse_plain

BOUND = 3.0


def tables(features: int = 5, bins: int = 6, seed: int = 0):
    return _spline(torch.float64, features, bins, BOUND, seed).tables()


def test_the_bin_of_each_entry_is_the_number_of_inner_knots_at_or_below_it():
    xk, _, _ = tables()
    x = _inputs(torch.float64, 40, 5).clamp(-BOUND, BOUND)
    x[3, :] = xk[:, 2]  # on a knot: the bin to its right
    expected = (x.unsqueeze(-1) >= xk[:, 1:-1]).sum(-1)
    assert torch.equal(bin_index(xk, x), expected)
    assert bin_index(xk, x[:4].reshape(2, 2, 5)).shape == (2, 2, 5)
    ends = bin_index(xk, torch.tensor([[-10.0] * 5, [10.0] * 5], dtype=torch.float64))
    assert ends.tolist() == [[0] * 5, [5] * 5]  # outside the interval: an end bin


def test_a_table_per_row_finds_each_rows_own_bins():
    per_row = [tables(seed=s)[0] for s in range(4)]
    x = _inputs(torch.float64, 4, 5).clamp(-BOUND, BOUND)
    stacked = torch.stack(per_row)  # (B, n, K + 1)
    expected = torch.stack([bin_index(xk, x[i : i + 1])[0] for i, xk in enumerate(per_row)])
    assert torch.equal(bin_index(stacked, x), expected)
    assert torch.equal(bin_index(per_row[0].unsqueeze(0), x), bin_index(per_row[0], x))  # (1, n, K + 1) broadcasts


def test_the_log_derivative_is_that_of_the_values():
    xk, yk, dk = tables(features=3)
    x = _inputs(torch.float64, 12, 3)
    x[0, 0] = 5.0  # beyond the interval
    y, logdet = spline_forward_plain(x, xk, yk, dk, BOUND)
    jacobian = torch.autograd.functional.jacobian(lambda v: spline_forward_plain(v, xk, yk, dk, BOUND)[0], x)
    jacobian = jacobian.reshape(x.numel(), x.numel())
    assert torch.equal(jacobian, torch.diag(torch.diagonal(jacobian)))  # each entry on its own
    diagonal = torch.diagonal(jacobian).view_as(x)
    assert bool((diagonal > 0).all())  # increasing
    torch.testing.assert_close(logdet, diagonal.log().sum(-1))
    assert y[0, 0] == 5.0 and diagonal[0, 0] == 1.0  # the identity outside


def test_the_knots_are_met_exactly_and_the_ends_are_fixed():
    xk, yk, dk = tables()
    y, _ = spline_forward_plain(xk[:, 1:-1].t().contiguous(), xk, yk, dk, BOUND)
    torch.testing.assert_close(y, yk[:, 1:-1].t(), rtol=0, atol=1e-12)
    outside = torch.tensor([[-BOUND] * 5, [BOUND] * 5, [-7.0] * 5], dtype=torch.float64)
    y, logdet = spline_forward_plain(outside, xk, yk, dk, BOUND)
    assert torch.equal(y, outside) and torch.equal(logdet, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_the_inverse_is_exact_and_its_log_det_the_negative(dtype, tol):
    xk, yk, dk = (t.to(dtype) for t in tables(features=7, bins=9, seed=2))
    x = _inputs(dtype, 200, 7)
    y, logdet = spline_forward_plain(x, xk, yk, dk, BOUND)
    back, inverse_logdet = spline_inverse_plain(y, xk, yk, dk, BOUND)
    torch.testing.assert_close(back, x, rtol=tol, atol=tol)
    torch.testing.assert_close(inverse_logdet, -logdet, rtol=tol, atol=tol)


def test_tables_per_row_give_each_row_its_own_spline_both_ways():
    per_row = [tables(features=4, seed=s) for s in range(3)]
    x = _inputs(torch.float64, 3, 4)
    stacked = [torch.stack(t) for t in zip(*per_row)]
    y, logdet = spline_forward_plain(x, *stacked, BOUND)
    for i, own in enumerate(per_row):
        yi, li = spline_forward_plain(x[i : i + 1], *own, BOUND)
        torch.testing.assert_close(y[i : i + 1], yi)
        torch.testing.assert_close(logdet[i : i + 1], li)
    back, _ = spline_inverse_plain(y, *stacked, BOUND)
    torch.testing.assert_close(back, x)
