"""The no-autograd passes of the monotone rational-quadratic spline (:class:`lunet.spline.MonotoneSpline`),
which a module without autograd, the training forward (:mod:`lunet.fast.spline_training`) and the
frozen flows run: per-bin tables made once, the bin lookups, and the forward, inverse and sampling passes.
The plain formulas they agree with are in :mod:`lunet.fast.spline_plain`.

Conventions: rows ``(B, n)``; knot tables ``(n, K + 1)`` for ``K`` bins per feature (knots in ``x``
and ``y`` from ``-bound`` to ``bound``, slopes at the knots); per-bin tables flat ``(n * K,)``,
feature-major, indexed by ``j = f * K + bin``. Inputs outside ``[-bound, bound]`` pass unchanged
(log-derivative 0).

On the CPU the passes run as compiled loops where :mod:`lunet.fast.native` can build them (one
call for the rows of every group of stacked tables: :func:`grouped_passes`), else in torch ops.
The torch passes never expand a table over the batch: each entry's bin is found once, as a flat
index, and each per-bin quantity is read with one ``index_select``. Every pass runs over blocks of
rows into scratch buffers kept between calls. Comparisons are counted as sums of signs, which this
CPU build runs several times faster than comparisons that return booleans.
"""

from __future__ import annotations

import threading
from typing import Literal, Optional, overload

import torch

from lunet.fast import native
from lunet.fast.spline_tables import (
    MAX_COUNTED_BINS,
    BinGrid,
    BinTables,
    SamplingTables,
    bin_major,
    each_group,
    flat_bins,
    gather_into,
    grid_bins,
    group_of_rows,
)

__all__ = ["BLOCK_BYTES", "run_blocks", "SCRATCH_SHAPES", "spline_forward_fast", "spline_inverse_fast",
           "spline_sample_fast", "grouped_passes", "labelled_passes"]

# -- the no-autograd passes ------------------------------------------------------------------
# Rows per block of the no-autograd passes: about this many bytes per (rows, n) buffer, so that a
# block's dozen buffers stay in the caches, and each pass writes into buffers made once per call
# (fresh large tensors cost page faults on every operation).
BLOCK_BYTES = 1 << 18


class _Work:
    """Scratch buffers for blocks of up to ``rows`` rows of width ``n``: ``count`` floating, one
    int32 and one int64; :meth:`of` gives views of the first ``r`` rows (contiguous)."""

    def __init__(self, rows: int, like: torch.Tensor, count: int = 10) -> None:
        n = like.shape[1]
        self.rows = rows
        self.f = [like.new_empty(rows, n) for _ in range(count)]
        self.cell = torch.empty(rows, n, dtype=torch.int32, device=like.device)
        self.j = torch.empty(rows, n, dtype=torch.int64, device=like.device)

    def of(self, r: int):
        if r == self.rows:
            return self.f, self.cell, self.j
        return [b[:r] for b in self.f], self.cell[:r], self.j[:r]


# Scratch buffers kept between calls, per thread (two threads never share a buffer): making a
# dozen buffers is a large part of a pass over a few rows. A few shapes are kept, the most
# recently used first; their contents never outlive a call.
_SCRATCH = threading.local()
SCRATCH_SHAPES = 4


def _scratch(rows: int, like: torch.Tensor, count: int = 10) -> _Work:
    """``count`` buffers for blocks of ``rows`` rows like ``like`` (B, n), kept from an earlier call
    when one had the same shape, dtype and device."""
    kept: Optional[list[tuple[tuple, _Work]]] = getattr(_SCRATCH, "kept", None)
    if kept is None:
        kept = _SCRATCH.kept = []
    key = (rows, like.shape[1], like.dtype, like.device, count)
    for i, (k, work) in enumerate(kept):
        if k == key:
            if i:
                kept.insert(0, kept.pop(i))
            return work
    work = _Work(rows, like, count)
    kept.insert(0, (key, work))
    del kept[SCRATCH_SHAPES:]
    return work


@overload
def run_blocks(v: torch.Tensor, kernel, with_logdet: Literal[True], extras: tuple = ..., block_bytes: int = ...,
            buffers: int = ...) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def run_blocks(v: torch.Tensor, kernel, with_logdet: bool, extras: tuple = ..., block_bytes: int = ...,
            buffers: int = ...) -> tuple[torch.Tensor, Optional[torch.Tensor]]: ...
def run_blocks(v: torch.Tensor, kernel, with_logdet: bool, extras: tuple = (), block_bytes: int = BLOCK_BYTES,
            buffers: int = 10) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``kernel(rows, out, logdet_out, buffers, *extras)`` over blocks of rows of ``v`` (B, n), each
    of ``extras`` (B, ...) cut to the block's rows."""
    v = v.contiguous()
    b, n = v.shape
    rows = max(1, min(b, block_bytes // max(1, n * v.element_size())))
    out = torch.empty_like(v)
    logdet = v.new_empty(b) if with_logdet else None
    work = _scratch(rows, v, buffers)
    for start in range(0, b, rows):
        stop = min(b, start + rows)
        kernel(v[start:stop], out[start:stop], None if logdet is None else logdet[start:stop],
               work.of(stop - start), *(e[start:stop] for e in extras))
    return out, logdet


def _bins_into(v, tables: BinTables, grid: Optional["BinGrid"], rows: torch.Tensor, knots, b1, b2, cell, j):
    if grid is not None:
        return grid_bins(v, grid, b1, b2, cell, j)
    if tables.bins <= MAX_COUNTED_BINS or knots is None:
        # counted_bins into the buffers given
        if rows.shape[0] == 0:
            j.copy_(tables.base.expand(v.shape))
        else:
            acc = torch.sub(v, rows[0], out=b1).sign_()
            for row in rows[1:]:
                acc.add_(torch.sub(v, row, out=b2).sign_())
            j.copy_(acc.mul_(0.5).add_(tables.base))
    else:
        j.copy_(flat_bins(v, tables, rows, knots))
    return j.add_(tables.first) if tables.first else j


def spline_forward_fast(
    x: torch.Tensor, tables: BinTables, grid: Optional[BinGrid] = None, knots: Optional[torch.Tensor] = None,
    keep: tuple = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y`` (B, n) and ``log|det dy/dx|`` (B,) at ``x`` (B, n), without autograd; bins from ``grid``
    where given, else counted (or searched among ``knots`` (n, K + 1) for many bins). ``keep``:
    none, or int64 and floating tensors (B, n) that receive each entry's flat bin and its position
    ``t`` in the bin (for the backward pass).

    With ``u = 1 - t``, ``q0 = d0 / s``, ``q1 = d1 / s`` and ``D = 1 + (q0 + q1 - 2) t u`` (the
    rational quadratic's denominator over ``s``, at least 1/2): ``y = y0 + h t (t + q0 u) / D`` and
    ``y' = s (q1 t^2 + 2 t u + q0 u^2) / D^2``, sums of non-negative terms, so without
    cancellation. Entries are clamped to ``[-bound, bound]`` and ``t = (x - x0) / w`` is a
    quotient, so that an entry on or beyond an end has ``t`` exactly 0 or 1 and (by the end bins'
    ratios, :func:`slope_ratios`, over ``w / h``) a slope of exactly 1: the identity's
    log-derivative.
    """

    if _native_forward_ready(x, tables, keep):
        return _native_forward(x, tables, keep)

    def kernel(x, y, logdet, work, *kept):
        (b0, b1, b2, b3, b4, b5, b6, b7, b8, _b9), cell, j = work
        xc = torch.clamp(x, -tables.bound, tables.bound, out=b0)
        # the kept bins and positions are written in place, not copied
        j = _bins_into(xc, tables, grid, tables.x_rows, knots, b1, b2, cell, kept[0] if kept else j)
        w = gather_into(tables.w, j, b2)
        t = torch.sub(xc, gather_into(tables.x0, j, b1), out=kept[1] if kept else b1).div_(w)
        h = gather_into(tables.h, j, b3)
        s_inverse = torch.div(w, h, out=b2)
        u = torch.neg(t, out=b4).add_(1)
        q0, q1 = gather_into(tables.q0, j, b5), gather_into(tables.q1, j, b6)
        den = torch.add(q0, q1, out=b7).sub_(2).mul_(torch.mul(t, u, out=b8)).add_(1)
        num = torch.addcmul(t, q0, u, out=b5)  # t + q0 u
        # q1 t^2 + 2 t u + q0 u^2 = t (q1 t + u) + u (t + q0 u)
        slope = torch.addcmul(u, q1, t, out=b6).mul_(t).addcmul_(u, num)
        r = num.mul_(t).div_(den)
        torch.addcmul(gather_into(tables.y0, j, b8), h, r, out=y)
        y.add_(torch.sub(x, xc, out=b0))
        slope.div_(den.mul_(den).mul_(s_inverse))
        torch.sum(slope.log_(), dim=1, out=logdet)

    return run_blocks(x, kernel, True, keep)


@overload
def spline_inverse_fast(
    y: torch.Tensor, tables: BinTables, grid: Optional[BinGrid] = ..., knots: Optional[torch.Tensor] = ...,
    with_logdet: Literal[True] = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def spline_inverse_fast(
    y: torch.Tensor, tables: BinTables, grid: Optional[BinGrid] = ..., knots: Optional[torch.Tensor] = ...,
    with_logdet: bool = ...,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]: ...
def spline_inverse_fast(
    y: torch.Tensor, tables: BinTables, grid: Optional[BinGrid] = None, knots: Optional[torch.Tensor] = None,
    with_logdet: bool = True,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``x`` (B, n), exact (one quadratic per entry), and ``log|det dx/dy|`` (B,) (None without
    ``with_logdet``) at ``y`` (B, n), without autograd; bins from ``grid`` where given, else counted
    among the inner y-knots (or searched among ``knots`` (n, K + 1) for many bins)."""

    if native.usable(y, tables.x0) is not None:
        return _native_inverse(y, tables, with_logdet)

    def kernel(y, x, logdet, work):
        (b0, b1, b2, b3, b4, b5, b6, b7, b8, b9), cell, j = work
        yc = torch.clamp(y, -tables.limit, tables.limit, out=b0)
        j = _bins_into(yc, tables, grid, tables.y_rows, knots, b1, b2, cell, j)
        s, d0, d1 = gather_into(tables.s, j, b1), gather_into(tables.d0, j, b2), gather_into(tables.d1, j, b3)
        dy = torch.sub(yc, gather_into(tables.y0, j, b4), out=b4)
        h = gather_into(tables.h, j, b6)
        dyc = torch.add(d0, d1, out=b5).sub_(s, alpha=2).mul_(dy)
        # the quadratic qa t^2 + qb t + qc = 0 with qc = -s dy <= 0 < qb, and its root in [0, 1]
        # in the form without cancellation: t = 2 s dy / (qb + sqrt(qb^2 + 4 qa s dy))
        qa = torch.sub(s, d0, out=b7).mul_(h).add_(dyc)
        qb = torch.mul(h, d0, out=b8).sub_(dyc)
        sdy = dy.mul_(s)
        disc = qa.mul_(sdy).mul_(4).addcmul_(qb, qb).clamp_min_(0).sqrt_()
        t = sdy.mul_(2).div_(disc.add_(qb))
        torch.addcmul(gather_into(tables.x0, j, b5), t, gather_into(tables.w, j, b6), out=x)
        excess = torch.sub(y, yc, out=b0)
        x.add_(excess)
        if logdet is None:
            return
        inside = excess.sign_().abs_().neg_().add_(1)
        tu = torch.neg(t, out=b5).add_(1)  # u for now
        tt = torch.mul(t, t, out=b6)
        uu = torch.mul(tu, tu, out=b7)
        tu.mul_(t)
        den = torch.add(tt, uu, out=b8).mul_(s).addcmul_(torch.add(d0, d1, out=b9), tu)
        q = torch.mul(d1, tt, out=b9).addcmul_(s, tu, value=2).addcmul_(d0, uu)
        slope = s.mul_(s).mul_(q).div_(den.mul_(den))
        torch.sum(slope.log_().mul_(inside), dim=1, out=logdet).neg_()

    return run_blocks(y, kernel, with_logdet)


def spline_sample_fast(y: torch.Tensor, tables: BinTables, coefficients: SamplingTables,
                       grid: Optional[BinGrid] = None) -> torch.Tensor:
    """``x`` (B, n) at ``y`` (B, n) as :func:`spline_inverse_fast` computes it, without the log-det,
    from the coefficients of the quadratic made once (:class:`SamplingTables`); bins from ``grid``
    where given, else counted among the inner y-knots."""

    if native.usable(y, tables.x0, coefficients.a2) is not None:
        return _native_sample(y, tables, coefficients)

    def kernel(y, x, _, work):
        (b0, b1, b2, b3, b4, b5, b6, b7, _b8, _b9), cell, j = work
        yc = torch.clamp(y, -tables.limit, tables.limit, out=b0)
        j = _bins_into(yc, tables, grid, tables.y_rows, None, b1, b2, cell, j)
        dy = torch.sub(yc, gather_into(tables.y0, j, b1), out=b1)
        b2_ = gather_into(coefficients.b2, j, b2)
        qa2 = torch.addcmul(gather_into(coefficients.a2, j, b3), dy, b2_, out=b3)
        qb = torch.addcmul(gather_into(coefficients.c, j, b4), dy, b2_, value=-0.5, out=b4)
        sdy2 = torch.mul(dy, gather_into(coefficients.s2, j, b5), out=b5)
        # the root in [0, 1] without cancellation, as in spline_inverse_fast
        disc = qa2.mul_(sdy2).addcmul_(qb, qb).clamp_min_(0).sqrt_()
        t = sdy2.div_(disc.add_(qb))
        torch.addcmul(gather_into(tables.x0, j, b6), t, gather_into(tables.w, j, b7), out=x)
        x.add_(torch.sub(y, yc, out=b0))

    return run_blocks(y, kernel, False)[0]



# -- the compiled loops (lunet.fast.native) -----------------------------------------------------
def _native_forward_ready(x: torch.Tensor, tables: BinTables, keep: tuple) -> bool:
    return native.usable(x, tables.x0, *keep[1:]) is not None and (
        not keep or (keep[0].dtype == torch.int64 and keep[0].is_contiguous()))


def _native_forward(x: torch.Tensor, tables: BinTables, keep: tuple = (),
                    splines: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`spline_forward_fast` by the compiled loops; ``splines`` (B,) int64: each row's spline
    among the stacked ``tables`` (a :meth:`BinTables.group` of the stack's first spline)."""
    lib = native.kernels()
    assert lib is not None  # the callers asked native.usable first
    x = x.contiguous()
    y, logdet = torch.empty_like(x), x.new_empty(x.shape[0])
    run = lib.lunet_spline_forward_f32 if x.dtype == torch.float32 else lib.lunet_spline_forward_f64
    major = bin_major(tables, tables, "x0", "w", "y0", "h", "q0", "q1")

    def rows(a: int, b: int) -> None:
        run(b - a, x.shape[1], tables.bins, major[0].shape[1], tables.first,
            native.address(None if splines is None else splines[a:b]), tables.bound,
            *map(native.address, (*major, x[a:b], y[a:b], logdet[a:b])),
            *((native.address(keep[0][a:b]), native.address(keep[1][a:b])) if keep else (None, None)))

    native.split_rows(x.shape[0], x.shape[1], rows)
    return y, logdet


def _native_inverse(y: torch.Tensor, tables: BinTables, with_logdet: bool = True,
                    splines: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """:func:`spline_inverse_fast` by the compiled loops; ``splines`` as for :func:`_native_forward`."""
    lib = native.kernels()
    assert lib is not None  # the callers asked native.usable first
    y = y.contiguous()
    x, logdet = torch.empty_like(y), (y.new_empty(y.shape[0]) if with_logdet else None)
    run = lib.lunet_spline_inverse_f32 if y.dtype == torch.float32 else lib.lunet_spline_inverse_f64
    major = bin_major(tables, tables, "x0", "w", "y0", "h", "s", "d0", "d1")

    def rows(a: int, b: int) -> None:
        run(b - a, y.shape[1], tables.bins, major[0].shape[1],
            native.address(None if splines is None else splines[a:b]), tables.limit,
            *map(native.address, (*major, y[a:b], x[a:b], None if logdet is None else logdet[a:b])))

    native.split_rows(y.shape[0], y.shape[1], rows)
    return x, logdet


def _native_sample(y: torch.Tensor, tables: BinTables, coefficients: SamplingTables) -> torch.Tensor:
    lib = native.kernels()
    assert lib is not None  # the callers asked native.usable first
    y = y.contiguous()
    x = torch.empty_like(y)
    run = lib.lunet_spline_sample_f32 if y.dtype == torch.float32 else lib.lunet_spline_sample_f64
    major = [*bin_major(tables, tables, "x0", "w", "y0"), *bin_major(coefficients, tables, "a2", "b2", "c", "s2")]

    def rows(a: int, b: int) -> None:
        run(b - a, y.shape[1], tables.bins, major[0].shape[1], None, tables.limit,
            *map(native.address, (*major, y[a:b], x[a:b])))

    native.split_rows(y.shape[0], y.shape[1], rows)
    return x


def grouped_passes(
    h: torch.Tensor, stacked: BinTables, counts: list[int], splines: list[int], inverse: bool = False,
    keep: tuple = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``h`` (B, n) sorted into groups, group ``g`` the next ``counts[g]`` rows, each through
    spline ``splines[g]`` of the ``stacked`` tables (:meth:`BinTables.stacked`, ``n`` features
    each), forward or (``inverse``) inverse: values (B, n) and log-dets (B,). ``keep`` (forward
    only): as for :func:`spline_forward_fast`, with flat bins into the stack. The compiled loops
    take every group in one call; the torch passes go group by group."""
    n = h.shape[1]
    if (native.usable(h, stacked.x0) is not None) if inverse else _native_forward_ready(h, stacked.group(0, n), keep):
        return labelled_passes(h, stacked, group_of_rows(counts, h.device, splines), inverse, keep)
    if inverse:
        return each_group(h, counts, lambda g, part: spline_inverse_fast(part, stacked.group(splines[g], n)))
    kept = [k.split(counts) for k in keep]  # each group's views of the kept bins and positions
    return each_group(h, counts, lambda g, part: spline_forward_fast(
        part, stacked.group(splines[g], n), keep=tuple(k[g] for k in kept)))


def labelled_passes(
    h: torch.Tensor, stacked: BinTables, labels: torch.Tensor, inverse: bool = False, keep: tuple = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``h`` (B, n) in any order, row ``r`` through spline ``labels[r]`` (int64 (B,), each below the
    number of ``stacked`` splines) of the ``stacked`` tables, by the compiled loops, which the caller
    has found usable for the tables (``native.usable(stacked.x0)``) and rows of their dtype on the
    CPU (contiguous or not): values (B, n) and log-dets (B,). ``keep`` as for :func:`grouped_passes`."""
    first = stacked.group(0, h.shape[1])
    if inverse:
        x, logdet = _native_inverse(h, first, splines=labels)
        assert logdet is not None  # asked for
        return x, logdet
    return _native_forward(h, first, keep, splines=labels)
