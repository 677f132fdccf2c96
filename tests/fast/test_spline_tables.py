"""The spline's per-bin tables and bin lookups (lunet.fast.spline_tables): the tables of a knot table,
stacked splines and their groups, the slope ratios at the interval's ends, counted bins and the grid
lookup against the binary search, the sampling coefficients, bin-major copies for the compiled loops,
and rows sorted into groups."""

from __future__ import annotations

import pytest
import torch

from fast.test_spline import DTYPES, _inputs, _spline, passes  # noqa: F401 (passes: both ways)
from lunet.fast import native
from lunet.fast.spline import spline_forward_fast
from lunet.fast.spline_plain import bin_index, spline_forward_plain
from lunet.fast.spline_tables import (
    MAX_COUNTED_BINS,
    SEARCHED_ROWS,
    BinGrid,
    BinTables,
    SamplingTables,
    bin_major,
    counted_bins,
    each_group,
    flat_bins,
    gather_into,
    grid_bins,
    group_of_rows,
    inner_limit,
    slope_ratios,
)


def searched(knots: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The flat bin index of each entry by a binary search per feature."""
    k = knots.shape[1] - 1
    bins = torch.searchsorted(knots[:, 1:-1].contiguous(), x.t().contiguous(), right=True).t()
    return bins + torch.arange(knots.shape[0]) * k


# -- the lookups against the binary search ----------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_counted_and_grid_bins_are_those_of_the_binary_search(dtype):
    spline = _spline(dtype)
    xk, yk, dk = spline.tables()
    tables = BinTables.of(xk, yk, dk, spline.bound)
    x = _inputs(dtype).clamp(-3, 3)
    expected = torch.searchsorted(xk[:, 1:-1].contiguous(), x.t().contiguous(), right=True).t()
    expected = expected + torch.arange(7) * 6
    torch.testing.assert_close(counted_bins(x, tables.x_rows, tables.base), expected)
    torch.testing.assert_close(BinGrid(xk, spline.bound).bins(x), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_grid_finds_the_same_bins_with_the_cell_offsets_added_apart(dtype):
    # wide grids add each feature's cell offset as an integer instead of folding it into the shift
    spline = _spline(dtype, features=40, bins=8, seed=4)
    xk, yk, dk = spline.tables()
    x = _inputs(dtype, 500, 40).clamp(-3, 3)
    folded = BinGrid(xk, spline.bound)
    apart = BinGrid(xk, spline.bound)
    apart.shift = None
    assert folded.shift is not None
    expected = torch.searchsorted(xk[:, 1:-1].contiguous(), x.t().contiguous(), right=True).t() + torch.arange(40) * 8
    torch.testing.assert_close(folded.bins(x), expected)
    torch.testing.assert_close(apart.bins(x), expected)
    tables = BinTables.of(xk, yk, dk, spline.bound)
    torch.testing.assert_close(spline_forward_fast(x, tables, apart), spline_forward_fast(x, tables, folded))


def test_a_single_bin_is_counted_without_knots():
    spline = _spline(torch.float64, features=5, bins=1)
    tables = BinTables.of(*spline.tables(), spline.bound)
    assert tables.x_rows.shape == (0, 5)
    x = _inputs(torch.float64, 20, 5).clamp(-3, 3)
    assert torch.equal(counted_bins(x, tables.x_rows, tables.base), torch.arange(5).expand(20, 5))


@pytest.mark.parametrize("bins", [MAX_COUNTED_BINS, MAX_COUNTED_BINS + 4])
def test_flat_bins_count_up_to_the_limit_and_search_beyond_it(bins, monkeypatch):
    spline = _spline(torch.float64, features=6, bins=bins, seed=1)
    xk, yk, dk = spline.tables()
    tables = BinTables.of(xk, yk, dk, spline.bound)
    x = _inputs(torch.float64, 50, 6).clamp(-3, 3)
    calls = []
    monkeypatch.setattr("lunet.fast.spline_tables.bin_index", lambda *a: calls.append(1) or bin_index(*a))
    assert torch.equal(flat_bins(x, tables, tables.x_rows, xk), searched(xk, x))
    assert len(calls) == (bins > MAX_COUNTED_BINS)
    assert torch.equal(flat_bins(x, tables, tables.x_rows, None), searched(xk, x))  # no knots: counted


@pytest.mark.parametrize("rows", [1, SEARCHED_ROWS, SEARCHED_ROWS + 1, 30])
def test_grid_bins_search_a_few_rows_and_look_up_the_rest_alike(rows):
    spline = _spline(torch.float32, features=9, bins=7, seed=2)
    xk, _, _ = spline.tables()
    grid = BinGrid(xk, spline.bound)
    x = _inputs(torch.float32, 30, 9)[:rows].clamp(-3, 3).contiguous()
    buffers = (torch.empty_like(x), torch.empty_like(x), torch.empty(x.shape, dtype=torch.int32),
               torch.empty(x.shape, dtype=torch.int64))
    assert torch.equal(grid_bins(x, grid, *buffers), searched(xk, x))
    assert torch.equal(grid_bins(x, grid, *buffers, searched=0), searched(xk, x))


# -- the tables -------------------------------------------------------------------------------


def test_the_tables_are_each_bins_knots_widths_heights_and_slopes_feature_major():
    spline = _spline(torch.float64, features=4, bins=5)
    xk, yk, dk = spline.tables()
    tables = BinTables.of(xk, yk, dk, spline.bound)
    f, b = 2, 3
    j = f * 5 + b  # feature-major
    assert tables.x0[j] == xk[f, b] and tables.y0[j] == yk[f, b]
    torch.testing.assert_close(tables.w[j], xk[f, b + 1] - xk[f, b])
    torch.testing.assert_close(tables.iw[j] * tables.w[j], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(tables.s[j], (yk[f, b + 1] - yk[f, b]) / (xk[f, b + 1] - xk[f, b]))
    assert (tables.d0[j], tables.d1[j]) == (dk[f, b], dk[f, b + 1])
    assert torch.equal(tables.x_rows, xk[:, 1:-1].t()) and torch.equal(tables.y_rows, yk[:, 1:-1].t())
    assert (tables.bins, tables.bound, tables.first) == (5, spline.bound, 0)
    assert tables.limit < spline.bound


def test_stacked_tables_give_each_group_its_knots_and_an_offset_into_the_stack():
    splines = [_spline(torch.float64, features=3, bins=4, seed=s) for s in range(3)]
    knots = [torch.stack(t) for t in zip(*(s.tables() for s in splines))]  # (G, n, K + 1) each
    stack = BinTables.stacked(*knots, bound=3.0)
    x = _inputs(torch.float64, 40, 3).clamp(-3, 3)
    for g, spline in enumerate(splines):
        xk, yk, dk = spline.tables()
        group = stack.group(g, 3)
        assert group.first == g * 3 * 4
        j = counted_bins(x, group.x_rows, group.base) + group.first
        assert torch.equal(j, searched(xk, x) + group.first)
        assert torch.equal(stack.x0[j], BinTables.of(xk, yk, dk, 3.0).x0[j - group.first])


def test_the_end_slope_ratios_are_exactly_the_inverse_slope_where_the_end_slope_is_one():
    h = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    w = torch.tensor([[3.0, 2.0, 1.0]], dtype=torch.float64)
    dk = torch.tensor([[1.0, 0.5, 2.0, 1.0]], dtype=torch.float64)
    q0, q1 = slope_ratios(h, w, dk)
    torch.testing.assert_close(q0, dk[:, :-1] * w / h)
    torch.testing.assert_close(q1, dk[:, 1:] * w / h)
    assert q0[0, 0] == w[0, 0] / h[0, 0] and q1[0, -1] == w[0, -1] / h[0, -1]
    other = dk.clone()
    other[0, 0] = 0.7  # not 1: the product as it is
    assert slope_ratios(h, w, other)[0][0, 0] == 0.7 * (w[0, 0] / h[0, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_inner_limit_is_the_largest_number_below_the_bound(dtype):
    limit = inner_limit(3.0, dtype)
    assert limit < 3.0
    assert torch.nextafter(torch.tensor(limit, dtype=dtype), torch.tensor(4.0, dtype=dtype)) == 3.0


def test_the_sampling_coefficients_solve_the_inverse_quadratic():
    # an entry x of its bin, t = (x - x0) / w, and its value y = f(x) by the plain formulas: t is the root of
    # qa t^2 + qb t - s dy = 0 with 2 qa = a2 + b2 dy, qb = c - b2 dy / 2 and dy = y - y0 (SamplingTables' terms)
    spline = _spline(torch.float64, features=3, bins=4)
    xk, yk, dk = spline.tables()
    tables = BinTables.of(xk, yk, dk, spline.bound)
    coef = SamplingTables.of(tables)
    x = _inputs(torch.float64, 60, 3).clamp(-2.9, 2.9)
    j = searched(xk, x)
    t = (x - tables.x0[j]) / tables.w[j]
    dy = spline_forward_plain(x, xk, yk, dk, spline.bound)[0] - tables.y0[j]
    qa, qb = (coef.a2[j] + coef.b2[j] * dy) / 2, coef.c[j] - coef.b2[j] * dy / 2
    residual = qa * t * t + qb * t - coef.s2[j] / 2 * dy
    torch.testing.assert_close(residual, torch.zeros_like(residual), rtol=0, atol=1e-12)
    single = SamplingTables.of(BinTables.of(*(knots.float() for knots in spline.tables()), spline.bound))
    assert single.a2.dtype == torch.float32
    torch.testing.assert_close(single.a2, coef.a2.float())  # the same coefficients, in the tables' dtype


def test_bin_major_copies_are_padded_with_the_last_feature_and_kept():
    n, k = native.LANES + 3, 5
    spline = _spline(torch.float64, features=n, bins=k)
    tables = BinTables.of(*spline.tables(), spline.bound)
    [s] = bin_major(tables, tables, "s")
    padded = 2 * native.LANES
    assert s.shape == (k, padded) and s.is_contiguous()
    assert torch.equal(s[:, :n], tables.s.view(n, k).t())
    assert torch.equal(s[:, n:], tables.s.view(n, k)[-1:].t().expand(k, padded - n))
    assert ("s", n) in tables.major and bin_major(tables, tables, "s")[0].data_ptr() == s.data_ptr()  # made once


def test_gather_into_writes_the_entries_into_the_buffer_given():
    table = torch.arange(10.0) * 3
    j = torch.tensor([[9, 0], [4, 4]])
    out = torch.empty(2, 2)
    assert gather_into(table, j, out) is out
    assert torch.equal(out, table[j])


# -- rows sorted into groups ------------------------------------------------------------------


def test_the_groups_of_sorted_rows_and_a_function_run_on_each():
    assert group_of_rows([2, 0, 3], torch.device("cpu")).tolist() == [0, 0, 2, 2, 2]
    assert group_of_rows([1, 2], torch.device("cpu"), names=[7, 4]).tolist() == [7, 4, 4]
    h = torch.arange(10.0).view(5, 2)
    seen = []

    def fn(g, part):
        seen.append((g, part.shape[0]))
        return part * (g + 1), part.sum(1)

    values, logdets = each_group(h, [2, 0, 3], fn)
    assert seen == [(0, 2), (1, 0), (2, 3)]
    assert torch.equal(values, torch.cat([h[:2], 3 * h[2:]]))
    assert torch.equal(logdets, h.sum(1))
