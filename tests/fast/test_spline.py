"""The spline's no-autograd passes against its plain formulas (lunet.fast.spline): the forward, inverse
and sampling passes with bins counted, searched or looked up in a frozen flow's grid, in float32 and
float64, by the compiled loops and in torch ops; their scratch buffers between calls and threads;
torch.compile through the spline and its frozen copy. (The lookups themselves: test_spline_tables.py.)"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from lunet import LUNet
from lunet.fast import native
from lunet.fast.spline import spline_forward_fast, spline_inverse_fast
from lunet.fast.spline_plain import spline_forward_plain, spline_inverse_plain
from lunet.fast.spline_tables import BinGrid, BinTables
from lunet.spline import MonotoneSpline

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: {"atol": 2e-4, "rtol": 2e-4}, torch.float64: {"atol": 1e-10, "rtol": 1e-10}}


@pytest.fixture(autouse=True, params=["compiled loops", "torch ops"])
def passes(request):
    """Each test twice: the passes by the compiled loops (lunet.fast.native, where they build), and
    in torch ops. Modules that import this fixture run their tests both ways too."""
    if request.param == "torch ops":
        with native.disabled():
            yield request.param
    else:
        yield request.param


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


def test_a_spline_lunet_loss_and_its_frozen_copy_trace_as_one_graph():
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
def test_the_frozen_passes_of_a_few_rows_and_many_find_the_same_bins(dtype, rows):
    # up to SEARCHED_ROWS rows the bins are searched, beyond them looked up in the grid
    from lunet.fast.spline import spline_sample_fast
    from lunet.fast.spline_tables import SEARCHED_ROWS, SamplingTables

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
    from lunet.fast.spline import spline_sample_fast
    from lunet.fast.spline_tables import SamplingTables

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
