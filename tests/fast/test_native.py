"""lunet.fast.native: the spline's passes as compiled loops, against the same passes in torch ops
(values, log-dets, kept bins and positions, stacked tables' groups), and the build's fallbacks: no
compiler, a compiler that fails, a damaged cached library, LUNET_NATIVE=0."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch

from fast.test_spline import DTYPES, TOL
from lunet.fast import native
from lunet.fast.spline import spline_forward_fast, spline_inverse_fast, spline_sample_fast
from lunet.fast.spline_plain import spline_forward_plain
from lunet.fast.spline_tables import BinTables, SamplingTables
from lunet.spline import MonotoneSpline

# the loops sum a row's log-derivatives in double, the torch passes in the rows' dtype
EXACT = {torch.float32: TOL[torch.float32], torch.float64: {"atol": 1e-12, "rtol": 1e-12}}


def _tables(dtype, features, bins, bound=3.0, seed=0):
    torch.manual_seed(seed)
    spline = MonotoneSpline(features, bins, bound).to(dtype)
    with torch.no_grad():
        for p in spline.parameters():
            p.normal_(0.0, 1.0)
    xk, yk, dk = spline.tables()
    return BinTables.of(xk, yk, dk, bound), (xk, yk, dk)


def _inputs(dtype, rows, features, knots, bound=3.0):
    x = torch.randn(rows, features, dtype=dtype) * bound
    x[0], x[1], x[2] = bound, -bound, 4 * bound  # on the ends and beyond
    x[3, -1] = float("inf")
    if knots.shape[1] > 2:  # each feature on one of its inner knots
        f = torch.arange(features)
        x[4] = knots[f, 1 + f % (knots.shape[1] - 2)]
    return x


def _both(fn):
    """fn() by the compiled loops and in torch ops."""
    assert native.kernels() is not None, native.status()
    compiled = fn()
    with native.disabled():
        plain = fn()
    return compiled, plain


def test_the_loops_build_where_a_compiler_is_found(monkeypatch):
    monkeypatch.delenv("LUNET_NATIVE", raising=False)
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine: the spline runs in torch ops")
    assert native.kernels() is not None, native.status()
    assert native.status().startswith("compiled loops from ")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("features, bins", [(13, 6), (784, 8), (3, 1), (9, 20)])
def test_the_loops_give_the_torch_passes_figures(dtype, features, bins):
    if native.kernels() is None:
        pytest.skip(native.status())
    tables, (xk, yk, dk) = _tables(dtype, features, bins)
    x = _inputs(dtype, 37, features, xk)
    rows = x.shape[0]
    kept = {}

    def forward():
        j, t = torch.empty(rows, features, dtype=torch.int64), torch.empty(rows, features, dtype=dtype)
        y, logdet = spline_forward_fast(x, tables, keep=(j, t))
        kept.setdefault("runs", []).append((j, t))
        return y, logdet

    (y, logdet), (y_ops, logdet_ops) = _both(forward)
    torch.testing.assert_close(y, y_ops, **EXACT[dtype])
    torch.testing.assert_close(logdet, logdet_ops, **EXACT[dtype])
    (j, t), (j_ops, t_ops) = kept["runs"]
    finite = x.isfinite()
    assert torch.equal(j[finite], j_ops[finite])
    torch.testing.assert_close(t[finite], t_ops[finite], **EXACT[dtype])
    assert torch.equal(y[2], x[2]) and float(logdet[2]) == 0.0  # beyond the ends: the identity
    plain = spline_forward_plain(x[:3], xk, yk, dk, 3.0)
    torch.testing.assert_close(y[:3], plain[0], **EXACT[dtype])

    z = y_ops[torch.isfinite(y_ops).all(dim=1)]
    (back, logdet_back), (back_ops, logdet_back_ops) = _both(lambda: spline_inverse_fast(z, tables))
    torch.testing.assert_close(back, back_ops, **EXACT[dtype])
    torch.testing.assert_close(logdet_back, logdet_back_ops, **EXACT[dtype])
    torch.testing.assert_close(back, x[torch.isfinite(y_ops).all(dim=1)], **EXACT[dtype])
    no_logdet, _ = _both(lambda: spline_inverse_fast(z, tables, with_logdet=False))
    assert no_logdet[1] is None and torch.equal(no_logdet[0], back)
    coefficients = SamplingTables.of(tables)
    drawn, drawn_ops = _both(lambda: spline_sample_fast(z, tables, coefficients))
    torch.testing.assert_close(drawn, drawn_ops, **EXACT[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_each_group_of_stacked_tables_reads_its_own_splines(dtype):
    if native.kernels() is None:
        pytest.skip(native.status())
    features, bins, groups = 11, 5, 3
    parts = [_tables(dtype, features, bins, seed=g)[1] for g in range(groups)]
    stacked = BinTables.stacked(*(torch.stack([p[i] for p in parts]) for i in range(3)), 3.0)
    x = _inputs(dtype, 20, features, parts[0][0])
    for g in range(groups):
        own = BinTables.of(*parts[g], 3.0)
        j = torch.empty(20, features, dtype=torch.int64)
        y, logdet = spline_forward_fast(x, stacked.group(g, features), keep=(j, torch.empty_like(x)))
        with native.disabled():
            y_own, logdet_own = spline_forward_fast(x, own)
        torch.testing.assert_close(y, y_own, **EXACT[dtype])
        torch.testing.assert_close(logdet, logdet_own, **EXACT[dtype])
        finite = x.isfinite()
        assert bool(((j[finite] >= g * features * bins) & (j[finite] < (g + 1) * features * bins)).all())
        back, _ = spline_inverse_fast(y_own[1:3], stacked.group(g, features))
        torch.testing.assert_close(back, x[1:3], **EXACT[dtype])


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """The library built again, into an empty cache folder, by the compiler the test names."""
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("LUNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LUNET_NATIVE", raising=False)
    return tmp_path


def test_a_compiler_that_fails_leaves_the_torch_passes_and_says_why(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", shutil.which("false") or "/bin/false")
    tables, (xk, yk, dk) = _tables(torch.float64, 5, 4)
    x = _inputs(torch.float64, 8, 5, xk)
    assert native.kernels() is None
    assert "could not build spline_kernels.c" in native.status() and "torch ops" in native.status()
    y, logdet = spline_forward_fast(x, tables)
    torch.testing.assert_close(y, spline_forward_plain(x, xk, yk, dk, 3.0)[0])


def test_a_damaged_cached_library_is_built_again(fresh_build):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    path = native.library_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a library")
    assert native.kernels() is not None, native.status()
    assert path.read_bytes() != b"not a library"


def test_lunet_native_0_turns_the_loops_off(monkeypatch):
    monkeypatch.setenv("LUNET_NATIVE", "0")
    assert native.kernels() is None and native.usable(torch.zeros(2, 2)) is None
    assert native.status() == "turned off by LUNET_NATIVE=0: the spline runs in torch ops"


def test_only_contiguous_cpu_floats_of_one_dtype_take_the_loops():
    if native.kernels() is None:
        pytest.skip(native.status())
    a = torch.zeros(4, 4)
    assert native.usable(a, a) is not None
    assert native.usable(a.double(), a) is None  # mixed dtypes
    assert native.usable(a.t()[:, :2], a) is None  # not contiguous
    assert native.usable(a.half(), a.half()) is None  # another dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_split_among_threads_give_the_one_threads_figures(dtype, monkeypatch):
    if native.kernels() is None:
        pytest.skip(native.status())
    from lunet.fast.spline_training import SplineForward

    tables, (xk, yk, dk) = _tables(dtype, 21, 6)
    x = _inputs(dtype, 50, 21, xk)[5:]  # finite rows
    knots = [k.clone().requires_grad_() for k in (xk, yk, dk)]
    xg = x.clone().requires_grad_()

    def everything():
        y, logdet = spline_forward_fast(x, tables)
        back, back_logdet = spline_inverse_fast(y, tables)
        drawn = spline_sample_fast(y, tables, SamplingTables.of(tables))
        value, ld = SplineForward.apply(xg, *knots, 3.0)
        grads = torch.autograd.grad((value * torch.linspace(0, 1, 21, dtype=dtype)).sum() + ld.sum(), [xg, *knots])
        return (y, logdet, back, back_logdet, drawn, value, ld), grads

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone, alone_grads = everything()
        torch.set_num_threads(3)
        monkeypatch.setattr(native, "SPLIT_ENTRIES", 1)
        monkeypatch.setattr(native, "ROW_THREADS", 8)  # above torch's 3: torch's count caps it
        parts = []
        monkeypatch.setattr(native, "split_rows", lambda rows, f, run, split=native.split_rows:
                            parts.append(split(rows, f, run)) or parts[-1])
        split, split_grads = everything()
    finally:
        torch.set_num_threads(threads)
    assert parts and min(parts) == 3  # every pass went in three parts
    for a, b in zip(alone, split):
        assert torch.equal(a, b)  # row by row: the same arithmetic whatever the thread
    for a, b in zip(alone_grads, split_grads):  # the per-bin sums add in another order
        torch.testing.assert_close(a, b, **EXACT[dtype])


def test_by_default_a_call_keeps_its_rows_on_the_calling_thread():
    threads = torch.get_num_threads()
    seen = []
    try:
        torch.set_num_threads(3)
        parts = native.split_rows(4000, 784, lambda a, b: seen.append((a, b, threading.get_ident())))
    finally:
        torch.set_num_threads(threads)
    assert native.ROW_THREADS == 1 and parts == 1
    assert seen == [(0, 4000, threading.get_ident())]
