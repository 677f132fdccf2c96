"""The plain formulas of the monotone rational-quadratic spline (:class:`lunet.spline.MonotoneSpline`):
values, log-derivatives and the exact inverse in plain differentiable ops, and the bin search. They are the
reference the fast passes (:mod:`lunet.fast.spline`) are checked against, and run where those cannot:
higher derivatives, ``torch.func`` transforms, ``torch.compile``, and knot tables given per row (a
conditional flow's splines, whose knots the context gives).

Conventions: rows ``(B, n)``; knot tables ``(n, K + 1)`` for ``K`` bins per feature (knots in ``x``
and ``y`` from ``-bound`` to ``bound``, slopes at the knots), or one table per row ``(B or 1, n, K + 1)``.
Inputs outside ``[-bound, bound]`` pass unchanged (log-derivative 0).
"""

from __future__ import annotations

import torch

__all__ = ["bin_index", "spline_forward_plain", "spline_inverse_plain"]


def bin_index(knots: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The bin of each entry of ``values`` (..., n) among ``knots`` (n, K + 1), or among a table per
    row (..., n, K + 1) whose leading shape broadcasts to the values', as int64 (..., n) in
    ``[0, K)``; entries outside ``[-bound, bound]`` get an end bin."""
    if knots.dim() > 2:
        inner = knots[..., 1:-1].expand(*values.shape, knots.shape[-1] - 2).contiguous()
        return torch.searchsorted(inner, values.unsqueeze(-1).contiguous(), right=True).squeeze(-1)
    # a binary search per entry: comparing every entry with every knot would hold
    # rows x features x bins values at once (gigabytes for a wide spline of many bins)
    inner = knots[:, 1:-1].contiguous()  # (n, K - 1)
    by_feature = values.reshape(-1, values.shape[-1]).t().contiguous()
    return torch.searchsorted(inner, by_feature, right=True).t().reshape(values.shape)


def _take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[..., f, index[..., f]]`` for a per-feature table (n, k), or one per row (..., n, k), and
    ``index`` (..., n)."""
    expanded = table.expand(*index.shape, table.shape[-1])
    return expanded.gather(-1, index.unsqueeze(-1)).squeeze(-1)


def _pieces(index, xk, yk, dk):
    """The bin's left knots, widths, heights and end slopes for each entry."""
    nxt = index + 1
    x0, x1 = _take(xk, index), _take(xk, nxt)
    y0, y1 = _take(yk, index), _take(yk, nxt)
    return x0, x1 - x0, y0, y1 - y0, _take(dk, index), _take(dk, nxt)


def _sum_log_slope(inside, s, t, d0, d1, denominator) -> torch.Tensor:
    """``sum`` over the last dimension of ``log`` of the spline's derivative at ``t`` in its bin
    (slope ``s = h / w``, end slopes ``d0``, ``d1``), 0 outside ``[-bound, bound]``: (..., n) -> (...)."""
    t1 = t * (1 - t)
    numerator = s * s * (d1 * t * t + 2 * s * t1 + d0 * (1 - t) * (1 - t))
    log_slope = torch.log(numerator) - 2 * torch.log(denominator)
    return torch.where(inside, log_slope, torch.zeros_like(log_slope)).sum(dim=-1)


def spline_forward_plain(
    x: torch.Tensor, xk: torch.Tensor, yk: torch.Tensor, dk: torch.Tensor, bound: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The spline of knot tables ``xk``, ``yk``, ``dk`` (n, K + 1), or a table per row (B or 1, n, K + 1), at
    ``x`` (B, n) in plain differentiable ops: ``y`` (B, n) and ``log|det dy/dx|`` (B,)."""
    inside = (x > -bound) & (x < bound)
    xc = x.clamp(-bound, bound)
    x0, w, y0, h, d0, d1 = _pieces(bin_index(xk, xc), xk, yk, dk)
    s = h / w
    t = (xc - x0) / w
    t1 = t * (1 - t)
    denominator = s + (d1 + d0 - 2 * s) * t1
    y_in = y0 + h * (s * t * t + d0 * t1) / denominator
    return torch.where(inside, y_in, x), _sum_log_slope(inside, s, t, d0, d1, denominator)


def spline_inverse_plain(
    y: torch.Tensor, xk: torch.Tensor, yk: torch.Tensor, dk: torch.Tensor, bound: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`spline_forward_plain` at ``y`` (B, n), exact (one quadratic per entry):
    ``x`` (B, n) and ``log|det dx/dy|`` (B,)."""
    inside = (y > -bound) & (y < bound)
    yc = y.clamp(-bound, bound)
    x0, w, y0, h, d0, d1 = _pieces(bin_index(yk, yc), xk, yk, dk)
    s = h / w
    dy = yc - y0
    bend = d1 + d0 - 2 * s
    qa = h * (s - d0) + dy * bend
    qb = h * d0 - dy * bend
    qc = -s * dy
    # the root in [0, 1] in the form without cancellation (qc <= 0 < qb in every bin)
    disc = (qb * qb - 4 * qa * qc).clamp_min(0)
    t = (2 * qc) / (-qb - torch.sqrt(disc))
    denominator = s + bend * t * (1 - t)
    return torch.where(inside, x0 + t * w, y), -_sum_log_slope(inside, s, t, d0, d1, denominator)
