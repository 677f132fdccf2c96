"""The spline's fast passes against its plain formulas: the training forward with its written-out
backward, the no-autograd passes (counted bins and a snapshot's grid lookup), their inverses,
in float32 and float64; higher derivatives, torch.func and torch.compile through the spline."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from lunet import LUNet
from lunet.fast.spline import (
    BinGrid,
    BinTables,
    SplineForward,
    counted_bins,
    spline_forward_fast,
    spline_forward_plain,
    spline_inverse_fast,
    spline_inverse_plain,
)
from lunet.spline import MonotoneSpline

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: {"atol": 2e-4, "rtol": 2e-4}, torch.float64: {"atol": 1e-10, "rtol": 1e-10}}


def _spline(dtype: torch.dtype, features: int = 7, bins: int = 6, bound: float = 3.0, seed: int = 0):
    torch.manual_seed(seed)
    spline = MonotoneSpline(features, bins, bound).to(dtype)
    with torch.no_grad():
        for p in spline.parameters():
            p.normal_(0.0, 1.0)
    return spline


def _inputs(dtype: torch.dtype, rows: int = 300, features: int = 7, bound: float = 3.0) -> torch.Tensor:
    x = torch.randn(rows, features, dtype=dtype) * bound
    x[0] = bound  # on the interval's ends and beyond
    x[1] = -bound
    x[2] = 4 * bound
    return x


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
@pytest.mark.parametrize("lookup", ["counted", "grid", "searched"])
def test_the_no_autograd_passes_give_the_plain_values_log_dets_and_inverse(dtype, lookup):
    bins = 20 if lookup == "searched" else 6  # beyond MAX_COUNTED_BINS the bins are searched
    spline = _spline(dtype, bins=bins)
    xk, yk, dk = spline.tables()
    tables = BinTables.of(xk, yk, dk, spline.bound)
    x = _inputs(dtype)
    y_plain, ld_plain = spline_forward_plain(x, xk, yk, dk, spline.bound)
    x_grid = BinGrid(xk, spline.bound) if lookup == "grid" else None
    y_grid = BinGrid(yk, spline.bound) if lookup == "grid" else None
    y, ld = spline_forward_fast(x, tables, x_grid, knots=xk)
    torch.testing.assert_close(y, y_plain, **TOL[dtype])
    torch.testing.assert_close(ld, ld_plain, **TOL[dtype])
    back, inv_ld = spline_inverse_fast(y_plain, tables, y_grid, knots=yk)
    back_plain, inv_ld_plain = spline_inverse_plain(y_plain, xk, yk, dk, spline.bound)
    torch.testing.assert_close(back, back_plain, **TOL[dtype])
    torch.testing.assert_close(inv_ld, inv_ld_plain, **TOL[dtype])
    torch.testing.assert_close(inv_ld, -ld_plain, **TOL[dtype])
    alone, none = spline_inverse_fast(y_plain, tables, y_grid, knots=yk, with_logdet=False)
    assert none is None
    torch.testing.assert_close(alone, back)
    # outside the interval exactly the identity, with log-derivative 0
    torch.testing.assert_close(y[2], x[2])


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
def test_a_spline_lunet_snapshot_matches_the_module(dtype):
    torch.manual_seed(2)
    net = LUNet(12, 3, activation="spline", bins=8, bound=3.0, init_scale=0.5).to(dtype)
    with torch.no_grad():
        for act in net.activations:
            for p in act.parameters():
                p.normal_(0.0, 0.7)
    net.standardize(torch.randn(200, 12, dtype=dtype) * 2 + 1)
    frozen = net.frozen()
    x = torch.randn(257, 12, dtype=dtype) * 2 + 1  # more rows than one block of the fast passes
    with torch.no_grad():
        torch.testing.assert_close(frozen.log_prob(x), net.log_prob(x), **TOL[dtype])
        z, ld = frozen.forward(x)
        back, inv_ld = frozen.inverse(z)
    torch.testing.assert_close(back, x, **TOL[dtype])
    torch.testing.assert_close(inv_ld, -ld, **TOL[dtype])
    torch.manual_seed(5)
    drawn = frozen.sample(9)
    torch.manual_seed(5)
    torch.testing.assert_close(drawn, net.sample(9), **TOL[dtype])


def test_a_spline_lunet_loss_and_its_snapshot_trace_as_one_graph():
    dynamo.reset()
    torch.manual_seed(0)
    net = LUNet(6, 3, activation="spline", bins=5, bound=3.0)
    x = torch.randn(16, 6)
    explanation = dynamo.explain(lambda v: -net.log_prob(v).mean())(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    frozen = net.frozen()
    for fn in (frozen.log_prob, frozen.inverse):
        explanation = dynamo.explain(fn)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(lambda v: -net.log_prob(v).mean(), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), -net.log_prob(x).mean())
    dynamo.reset()


@pytest.mark.parametrize("dtype", DTYPES)
def test_scratch_buffers_kept_between_calls_leave_every_result_its_own(dtype):
    spline = _spline(dtype)
    xk, yk, dk = spline.tables()
    tables, grid = BinTables.of(xk, yk, dk, spline.bound), BinGrid(xk, spline.bound)
    # batches of one block, of several blocks and of one row, each twice, in both directions
    batches = [_inputs(dtype, 20000)[:rows].clone() for rows in (1, 300, 20000, 1, 300)]
    results = [(x, spline_forward_fast(x, tables, grid), spline_inverse_fast(x, tables, knots=yk)) for x in batches]
    for x, (y, ld), (xi, ldi) in results:
        y_ref, ld_ref = spline_forward_plain(x, xk, yk, dk, spline.bound)
        xi_ref, ldi_ref = spline_inverse_plain(x, xk, yk, dk, spline.bound)
        torch.testing.assert_close(y, y_ref, **TOL[dtype])
        torch.testing.assert_close(ld, ld_ref, **TOL[dtype])
        torch.testing.assert_close(xi, xi_ref, **TOL[dtype])
        torch.testing.assert_close(ldi, ldi_ref, **TOL[dtype])


def test_threads_running_the_passes_at_once_get_their_own_results():
    from concurrent.futures import ThreadPoolExecutor

    spline = _spline(torch.float64)
    xk, yk, dk = spline.tables()
    tables, grid = BinTables.of(xk, yk, dk, spline.bound), BinGrid(xk, spline.bound)
    inputs = [_inputs(torch.float64, 2000) for _ in range(8)]

    def run(x):
        return [spline_forward_fast(x, tables, grid)[0] for _ in range(20)]

    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(run, inputs))
    for x, ys in zip(inputs, outputs):
        y_ref, _ = spline_forward_plain(x, xk, yk, dk, spline.bound)
        for y in ys:
            torch.testing.assert_close(y, y_ref, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 40])
def test_the_snapshot_passes_of_a_few_rows_and_many_find_the_same_bins(dtype, rows):
    # up to SEARCHED_ROWS rows the bins are searched, beyond them looked up in the grid
    from lunet.fast.spline import SEARCHED_ROWS, SamplingTables, spline_sample_fast

    assert 1 <= SEARCHED_ROWS < 5
    spline = _spline(dtype)
    xk, yk, dk = spline.tables()
    tables = BinTables.of(xk, yk, dk, spline.bound)
    x = _inputs(dtype, 40)[:rows].clone()
    x[0, :3] = xk[:3, 2]  # entries on knots
    y_ref, ld_ref = spline_forward_plain(x, xk, yk, dk, spline.bound)
    y, ld = spline_forward_fast(x, tables, BinGrid(xk, spline.bound))
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    torch.testing.assert_close(ld, ld_ref, **TOL[dtype])
    x_ref, _ = spline_inverse_plain(y_ref, xk, yk, dk, spline.bound)
    y_grid = BinGrid(yk, spline.bound)
    torch.testing.assert_close(spline_inverse_fast(y_ref, tables, y_grid)[0], x_ref, **TOL[dtype])
    torch.testing.assert_close(spline_sample_fast(y_ref, tables, SamplingTables.of(tables), y_grid), x_ref,
                               **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lookup", ["counted", "grid"])
def test_sampling_from_the_coefficients_gives_the_exact_inverse(dtype, lookup):
    from lunet.fast.spline import SamplingTables, spline_sample_fast

    spline = _spline(dtype)
    xk, yk, dk = spline.tables()
    tables = BinTables.of(xk, yk, dk, spline.bound)
    x = _inputs(dtype, 3000)
    y, _ = spline_forward_plain(x, xk, yk, dk, spline.bound)
    grid = BinGrid(yk, spline.bound) if lookup == "grid" else None
    x_back = spline_sample_fast(y, tables, SamplingTables.of(tables), grid)
    x_ref, _ = spline_inverse_plain(y, xk, yk, dk, spline.bound)
    torch.testing.assert_close(x_back, x_ref, **TOL[dtype])
    torch.testing.assert_close(x_back, x, **TOL[dtype])
    assert torch.equal(x_back[2], y[2])  # beyond the interval: the identity, exactly


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lookup", ["counted", "grid"])
def test_entries_on_and_beyond_the_ends_get_a_log_derivative_of_exactly_zero(dtype, lookup):
    # no mask: t is exactly 0 or 1 there and the end bins' slope ratios make the slope exactly 1
    spline = _spline(dtype, features=50, bins=8, seed=3)
    xk, yk, dk = spline.tables()
    tables = BinTables.of(xk, yk, dk, spline.bound)
    grid = BinGrid(xk, spline.bound) if lookup == "grid" else None
    ends = torch.tensor([-3.0, 3.0, -7.5, 1e6, -1e6, 3.5], dtype=dtype)
    x = ends.unsqueeze(1).expand(6, 50).contiguous()
    y, ld = spline_forward_fast(x, tables, grid)
    assert torch.equal(ld, torch.zeros_like(ld))
    torch.testing.assert_close(y, x, atol=4 * torch.finfo(dtype).eps * 3, rtol=0)
    inverse = tables.w.view(50, 8) / tables.h.view(50, 8)
    assert torch.equal(tables.q0.view(50, 8)[:, 0], inverse[:, 0])
    assert torch.equal(tables.q1.view(50, 8)[:, -1], inverse[:, -1])


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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bins", [1, 2, 8])
def test_the_forward_pass_matches_the_plain_formulas_for_few_bins_and_at_the_ends(dtype, bins):
    spline = _spline(dtype, features=30, bins=bins, seed=bins)
    xk, yk, dk = spline.tables()
    tables = BinTables.of(xk, yk, dk, spline.bound)
    x = torch.cat([_inputs(dtype, 200, 30), torch.full((2, 30), 3.0, dtype=dtype) * torch.tensor([[1.0], [-1.0]],
                                                                                                   dtype=dtype)])
    y, ld = spline_forward_fast(x, tables)
    y_ref, ld_ref = spline_forward_plain(x, xk, yk, dk, spline.bound)
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    torch.testing.assert_close(ld, ld_ref, **TOL[dtype])
    assert torch.equal(ld[-2:], torch.zeros(2, dtype=dtype))


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
