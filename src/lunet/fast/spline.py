"""The no-autograd passes of the monotone rational-quadratic spline (:class:`lunet.spline.MonotoneSpline`),
which a module without autograd, the training forward (:mod:`lunet.fast.spline_training`) and the
snapshots run: per-bin tables made once, the bin lookups, and the forward, inverse and sampling passes.
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

import math
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Optional, overload

import torch

from lunet.fast import native
from lunet.fast.spline_plain import bin_index

__all__ = ["MAX_COUNTED_BINS", "each_group", "group_of_rows", "BinTables",
           "counted_bins", "SamplingTables", "BinGrid", "BLOCK_BYTES", "gather_into",
           "run_blocks", "SCRATCH_SHAPES", "SEARCHED_ROWS", "spline_forward_fast", "spline_inverse_fast",
           "spline_sample_fast", "grouped_passes", "bin_major"]

# Up to this many bins the training pass finds bins by counting knots below each entry (one
# subtraction and sign per inner knot); beyond it, by binary search (but for stacked tables'
# groups, whose knots the passes do not take: counted).
MAX_COUNTED_BINS = 16


# -- rows sorted into groups, each group its own spline ---------------------------------------
def each_group(
    h: torch.Tensor, counts: list[int], fn: Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(g, rows of group g)`` -> (values, log-dets) for every group of the sorted rows ``h``
    (B, D), group ``g`` the next ``counts[g]`` rows, joined: (B, D'), (B,)."""
    parts = [fn(g, part) for g, part in enumerate(h.split(counts))]
    return torch.cat([value for value, _ in parts]), torch.cat([logdet for _, logdet in parts])


def group_of_rows(counts: list[int], device: torch.device, names: Optional[list[int]] = None) -> torch.Tensor:
    """The group of each of the sorted rows (int64, (sum(counts),)), group ``g`` the next ``counts[g]``;
    with ``names``, ``names[g]`` in place of ``g``."""
    groups = torch.arange(len(counts), device=device) if names is None else torch.tensor(names, device=device)
    return torch.repeat_interleave(groups, torch.tensor(counts, device=device))


# -- per-bin tables ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BinTables:
    """A spline's per-bin quantities, each flat (n * K,): left knots ``x0``, ``y0``, widths ``w`` and
    their inverses ``iw``, heights ``h``, slopes ``s = h / w``, the end slopes ``d0``, ``d1`` and
    the same divided by ``s`` (``q0``, ``q1``: see :func:`spline_forward_fast`); and for the bin
    search the inner knots in ``x`` and ``y`` as rows (K - 1, n), and ``base`` (n,),
    ``f * K + (K - 1) / 2`` (see :func:`counted_bins`). ``K`` bins, ``bound`` the interval's end,
    ``limit`` the largest number of the dtype below it; ``first``, an integer offset added to every
    flat index found (a :meth:`group`'s, into stacked tables)."""

    x0: torch.Tensor
    w: torch.Tensor
    iw: torch.Tensor
    y0: torch.Tensor
    h: torch.Tensor
    s: torch.Tensor
    d0: torch.Tensor
    d1: torch.Tensor
    q0: torch.Tensor
    q1: torch.Tensor
    x_rows: torch.Tensor
    y_rows: torch.Tensor
    base: torch.Tensor
    bins: int
    bound: float
    limit: float
    first: int = 0
    # bin-major copies (K, n) of per-bin tables for the compiled loops (:func:`bin_major`), made on
    # first use and shared by the groups of stacked tables
    major: dict = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def of(xk: torch.Tensor, yk: torch.Tensor, dk: torch.Tensor, bound: float) -> "BinTables":
        """The tables of knot tables ``xk``, ``yk``, ``dk`` (n, K + 1), in their dtype (no autograd)."""
        with torch.no_grad():
            n, k = xk.shape[0], xk.shape[1] - 1
            w = xk[:, 1:] - xk[:, :-1]
            h = yk[:, 1:] - yk[:, :-1]
            s = h / w
            q0, q1 = _slope_ratios(h, w, dk)
            base = torch.arange(n, dtype=xk.dtype, device=xk.device).mul_(k).add_((k - 1) / 2)
            return BinTables(
                x0=xk[:, :-1].reshape(-1), w=w.reshape(-1), iw=w.reciprocal().reshape(-1),
                y0=yk[:, :-1].reshape(-1), h=h.reshape(-1), s=s.reshape(-1),
                d0=dk[:, :-1].reshape(-1), d1=dk[:, 1:].reshape(-1), q0=q0.reshape(-1), q1=q1.reshape(-1),
                x_rows=xk[:, 1:-1].t().contiguous(), y_rows=yk[:, 1:-1].t().contiguous(),
                base=base, bins=k, bound=float(bound), limit=_inner_limit(bound, xk.dtype),
            )


    @staticmethod
    def stacked(xk: torch.Tensor, yk: torch.Tensor, dk: torch.Tensor, bound: float) -> "BinTables":
        """The tables of ``G`` splines of ``n`` features each, knot tables (G, n, K + 1), as one
        spline of ``G * n`` features; :meth:`group` gives the bin search of each."""
        width = xk.shape[-1]
        return BinTables.of(xk.reshape(-1, width), yk.reshape(-1, width), dk.reshape(-1, width), bound)

    def group(self, g: int, n: int) -> "BinTables":
        """The tables of spline ``g`` of :meth:`stacked` tables of ``n`` features each: the inner
        knots of its features alone, the per-bin tables whole, so that the flat bin index each
        entry gets addresses the stack. Each group counts its bins from its own first feature
        (bases of ``n`` features) and adds ``g * n * K`` as an integer: the count, in the rows'
        dtype, stays as exact as an unstacked spline's however many groups there are."""
        part = slice(g * n, (g + 1) * n)
        return replace(self, x_rows=self.x_rows[:, part], y_rows=self.y_rows[:, part], base=self.base[:n],
                       first=self.first + g * n * self.bins)


def _slope_ratios(h: torch.Tensor, w: torch.Tensor, dk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``d0 / s`` and ``d1 / s`` (n, K) for heights ``h``, widths ``w`` (n, K) and knot slopes ``dk``
    (n, K + 1), ``s = h / w``. Where the slope at an end of the interval is 1, the end bin's ratio
    is ``w / h`` as the forward pass computes it, so that their quotient there is exactly 1: the
    pass then gives entries on or beyond the ends a log-derivative of exactly 0 without a mask."""
    inverse = w / h
    q0, q1 = dk[:, :-1] * inverse, dk[:, 1:] * inverse
    q0[:, 0] = torch.where(dk[:, 0] == 1, inverse[:, 0], q0[:, 0])
    q1[:, -1] = torch.where(dk[:, -1] == 1, inverse[:, -1], q1[:, -1])
    return q0, q1


def _inner_limit(bound: float, dtype: torch.dtype) -> float:
    """The largest number of ``dtype`` below ``bound``: the fast passes clamp to it, so that an entry
    on the interval's end counts as outside (the identity), as the plain formulas have it."""
    return float(torch.nextafter(torch.tensor(float(bound), dtype=dtype), torch.tensor(0.0, dtype=dtype)))


def counted_bins(v: torch.Tensor, rows: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """The flat bin index ``f * K + bin`` (int64, (B, n)) of each entry of ``v`` (B, n), clamped to
    the interval, among the inner knots ``rows`` (K - 1, n).

    ``sum_k sign(v - knot_k)`` is ``2 bin - (K - 1)`` (the knots below minus those above), so
    ``base + sum / 2`` with ``base = f * K + (K - 1) / 2`` is the flat index; an entry on a knot
    counts half and rounds down to the bin on the knot's left, whose value there is the same.
    """
    if rows.shape[0] == 0:
        return base.expand(v.shape).to(torch.int64)
    acc = torch.sub(v, rows[0]).sign_()
    for row in rows[1:]:
        acc.add_(torch.sub(v, row).sign_())
    return acc.mul_(0.5).add_(base).to(torch.int64)


def _flat_bins(v: torch.Tensor, tables: BinTables, rows: torch.Tensor, knots: Optional[torch.Tensor]) -> torch.Tensor:
    if tables.bins <= MAX_COUNTED_BINS or knots is None:
        return counted_bins(v, rows, tables.base)
    offsets = torch.arange(0, v.shape[1] * tables.bins, tables.bins, device=v.device)
    return bin_index(knots, v).add_(offsets)


@dataclass(frozen=True)
class SamplingTables:
    """Per-bin coefficients of the inverse's quadratic for sampling (no log-det), each flat
    (n * K,): ``a2 = 2 h (s - d0)``, ``b2 = 2 (d0 + d1 - 2 s)``, ``c = h d0`` and ``s2 = 2 s``, so
    that an entry at ``dy = y - y0`` in its bin solves ``qa t^2 + qb t - s dy = 0`` with
    ``2 qa = a2 + b2 dy`` and ``qb = c - b2 dy / 2``: four reads and three products in place of the
    seven ops that build them from ``s``, ``d0``, ``d1`` and ``h``."""

    a2: torch.Tensor
    b2: torch.Tensor
    c: torch.Tensor
    s2: torch.Tensor
    major: dict = field(default_factory=dict, compare=False, repr=False)  # as BinTables.major

    @staticmethod
    def of(tables: BinTables) -> "SamplingTables":
        """The coefficients of ``tables``, computed in float64 and stored in the tables' dtype."""
        with torch.no_grad():
            h, s, d0, d1 = (t.double() for t in (tables.h, tables.s, tables.d0, tables.d1))
            dtype = tables.s.dtype
            return SamplingTables(a2=(2 * h * (s - d0)).to(dtype), b2=(2 * (d0 + d1 - 2 * s)).to(dtype),
                                  c=(h * d0).to(dtype), s2=(2 * s).to(dtype))


def bin_major(holder: "BinTables | SamplingTables", tables: BinTables, *names: str) -> list[torch.Tensor]:
    """``holder``'s per-bin tables ``names`` bin-major, (K, P) contiguous, for the ``n`` features of
    ``tables`` (a :meth:`BinTables.group`'s own), as the compiled loops read them: ``P`` is ``n``
    rounded up to :data:`~lunet.fast.native.LANES`, the padding a copy of the last feature's. The
    tables of every group of a stack are made at once, (G, K, P), and kept in ``holder.major``."""
    n, k = tables.base.shape[0], tables.bins
    padded = -(-n // native.LANES) * native.LANES
    out = []
    for name in names:
        every = holder.major.get((name, n))
        if every is None:
            own = getattr(holder, name).view(-1, n, k).transpose(1, 2)  # (G, K, n)
            every = holder.major[(name, n)] = torch.cat(
                [own, own[:, :, -1:].expand(-1, k, padded - n)], dim=2).contiguous()
        out.append(every[tables.first // (n * k)])
    return out


class BinGrid:
    """A uniform lookup of the bins of one side of a spline: ``G`` cells per feature over
    ``[-bound, bound]``, each holding the flat index of the bin at a quarter cell before its left
    edge, and the knot after that bin; one comparison with that knot finds the entry's bin.

    ``knots`` (n, K + 1) in the passes' dtype. ``G`` (a power of two) makes every bin at least
    two cells wide, so that the quarter cell's margin and the rounding of the cell's position
    leave at most one knot between the cell's stored bin and any entry in the cell.
    """

    def __init__(self, knots: torch.Tensor, bound: float) -> None:
        n, k = knots.shape[0], knots.shape[1] - 1
        k64 = knots.double()
        narrowest = float((k64[:, 1:] - k64[:, :-1]).min())
        cells = max(16, 1 << math.ceil(math.log2(4 * bound / narrowest + 3)))
        self.cells = cells
        self.bound = float(bound)
        # a cell's position: p = v * scale + 1 in [1, cells - 1], its cell floor(p) in [1, cells - 2]
        self.scale = (cells - 2) / (2 * bound)
        left = (torch.arange(cells, dtype=torch.float64, device=knots.device) - 1.25) / self.scale - bound
        left = left.clamp(-bound, bound).expand(n, cells).contiguous()
        inner = k64[:, 1:-1].contiguous()
        bins = torch.searchsorted(inner, left, right=True)  # (n, cells), bins of the points before each cell
        flat = bins + torch.arange(n, device=knots.device).unsqueeze(1) * k
        # stored as flat index + 0.5: adding half the sign of (v - next knot) and truncating gives
        # the bin or the next one
        self.start = (flat.to(knots.dtype) + 0.5).reshape(-1)
        # each bin's right knot (n, K), the last one's beyond every entry
        following = torch.cat([knots[:, 1:-1], knots.new_full((n, 1), math.inf)], dim=1)
        self.next_knot = following.reshape(-1).index_select(0, flat.reshape(-1))
        self.offsets = (torch.arange(n, device=knots.device) * cells).to(torch.int32)
        # the flat cell's position in one op, f * cells folded into the shift, where the dtype keeps
        # that sum within a sixteenth of a cell (a quarter is the margin)
        exact = n * cells <= (1 << 20) or knots.dtype == torch.float64
        self.shift = (torch.arange(n, dtype=torch.float64, device=knots.device).mul_(cells)
                      .add_(self.bound * self.scale + 1).to(knots.dtype) if exact else None)
        # for a few rows, a binary search costs fewer ops than the lookup
        self.inner = knots[:, 1:-1].contiguous()
        self.bin_offsets = torch.arange(n, device=knots.device) * k

    def bins(self, v: torch.Tensor) -> torch.Tensor:
        """The flat bin index (int64, (B, n)) of each entry of ``v`` (B, n), clamped to the interval,
        by the lookup whatever the number of rows."""
        v = v.contiguous()
        cell = torch.empty(v.shape, dtype=torch.int32, device=v.device)
        j = torch.empty(v.shape, dtype=torch.int64, device=v.device)
        return _grid_bins(v, self, torch.empty_like(v), torch.empty_like(v), cell, j, searched=0)


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


def gather_into(table: torch.Tensor, j: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    torch.index_select(table, 0, j.view(-1), out=out.view(-1))
    return out


# Up to this many rows the snapshot's passes find bins by binary search
SEARCHED_ROWS = 4


def _grid_bins(v: torch.Tensor, grid: "BinGrid", b1: torch.Tensor, b2: torch.Tensor, cell: torch.Tensor,
               j: torch.Tensor, searched: int = SEARCHED_ROWS) -> torch.Tensor:
    """:meth:`BinGrid.bins` into the buffers given (``b1``, ``b2`` overwritten), ``j`` returned; up to
    ``searched`` rows by binary search among the inner knots (the same bins)."""
    if v.shape[0] <= searched:
        return j.copy_(torch.searchsorted(grid.inner, v.t().contiguous(), right=True).t()).add_(grid.bin_offsets)
    if grid.shift is not None:
        cell.copy_(torch.add(grid.shift, v, alpha=grid.scale, out=b1))
    else:
        torch.mul(v, grid.scale, out=b1).add_(grid.bound * grid.scale + 1)
        cell.copy_(b1).add_(grid.offsets)
    torch.sub(v, gather_into(grid.next_knot, cell, b1), out=b1).sign_()
    return j.copy_(torch.add(gather_into(grid.start, cell, b2), b1, alpha=0.5, out=b2))


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
        return _grid_bins(v, grid, b1, b2, cell, j)
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
        j.copy_(_flat_bins(v, tables, rows, knots))
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
    ratios, :func:`_slope_ratios`, over ``w / h``) a slope of exactly 1: the identity's
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
    first = stacked.group(0, n)
    ready = (native.usable(h, stacked.x0) is not None) if inverse else _native_forward_ready(h, first, keep)
    if ready:
        index = group_of_rows(counts, h.device, splines)
        if inverse:
            x, logdet = _native_inverse(h, first, splines=index)
            assert logdet is not None  # asked for
            return x, logdet
        return _native_forward(h, first, keep, splines=index)
    if inverse:
        return each_group(h, counts, lambda g, part: spline_inverse_fast(part, stacked.group(splines[g], n)))
    kept = [k.split(counts) for k in keep]  # each group's views of the kept bins and positions
    return each_group(h, counts, lambda g, part: spline_forward_fast(
        part, stacked.group(splines[g], n), keep=tuple(k[g] for k in kept)))
