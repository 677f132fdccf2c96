"""The spline's per-bin tables (:class:`BinTables`, :class:`SamplingTables`, :class:`BinGrid`) and the
bin lookups the passes of :mod:`lunet.fast.spline` read them with; rows sorted into groups, each
group its own spline (:func:`each_group`, :func:`group_of_rows`).

Conventions as in :mod:`lunet.fast.spline`: knot tables ``(n, K + 1)``; per-bin tables flat
``(n * K,)``, feature-major, indexed by ``j = f * K + bin``; bin-major copies padded for the
compiled loops (:func:`bin_major`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

from lunet.fast import native
from lunet.fast.spline_plain import bin_index

__all__ = ["MAX_COUNTED_BINS", "each_group", "group_of_rows", "BinTables", "slope_ratios", "inner_limit",
           "counted_bins", "flat_bins", "SamplingTables", "bin_major", "BinGrid", "gather_into", "SEARCHED_ROWS",
           "grid_bins"]

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
            q0, q1 = slope_ratios(h, w, dk)
            base = torch.arange(n, dtype=xk.dtype, device=xk.device).mul_(k).add_((k - 1) / 2)
            return BinTables(
                x0=xk[:, :-1].reshape(-1), w=w.reshape(-1), iw=w.reciprocal().reshape(-1),
                y0=yk[:, :-1].reshape(-1), h=h.reshape(-1), s=s.reshape(-1),
                d0=dk[:, :-1].reshape(-1), d1=dk[:, 1:].reshape(-1), q0=q0.reshape(-1), q1=q1.reshape(-1),
                x_rows=xk[:, 1:-1].t().contiguous(), y_rows=yk[:, 1:-1].t().contiguous(),
                base=base, bins=k, bound=float(bound), limit=inner_limit(bound, xk.dtype),
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


def slope_ratios(h: torch.Tensor, w: torch.Tensor, dk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``d0 / s`` and ``d1 / s`` (n, K) for heights ``h``, widths ``w`` (n, K) and knot slopes ``dk``
    (n, K + 1), ``s = h / w``. Where the slope at an end of the interval is 1, the end bin's ratio
    is ``w / h`` as the forward pass computes it, so that their quotient there is exactly 1: the
    pass then gives entries on or beyond the ends a log-derivative of exactly 0 without a mask."""
    inverse = w / h
    q0, q1 = dk[:, :-1] * inverse, dk[:, 1:] * inverse
    q0[:, 0] = torch.where(dk[:, 0] == 1, inverse[:, 0], q0[:, 0])
    q1[:, -1] = torch.where(dk[:, -1] == 1, inverse[:, -1], q1[:, -1])
    return q0, q1


def inner_limit(bound: float, dtype: torch.dtype) -> float:
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


def flat_bins(v: torch.Tensor, tables: BinTables, rows: torch.Tensor, knots: Optional[torch.Tensor]) -> torch.Tensor:
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
        return grid_bins(v, self, torch.empty_like(v), torch.empty_like(v), cell, j, searched=0)


def gather_into(table: torch.Tensor, j: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``table[j]`` (a flat table, flat indices ``j``) written into ``out``, returned."""
    torch.index_select(table, 0, j.view(-1), out=out.view(-1))
    return out


# Up to this many rows a frozen flow's passes find bins by binary search
SEARCHED_ROWS = 4


def grid_bins(v: torch.Tensor, grid: "BinGrid", b1: torch.Tensor, b2: torch.Tensor, cell: torch.Tensor,
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
