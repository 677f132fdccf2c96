"""The training forward of the monotone rational-quadratic spline with a written-out backward
(:class:`SplineForward`, which :meth:`lunet.spline.MonotoneSpline.forward_rows` runs under autograd).

Conventions as in :mod:`lunet.fast.spline`: rows ``(B, n)``; knot tables ``(n, K + 1)`` for ``K``
bins per feature; per-bin tables and the backward's per-bin sums flat ``(n * K,)``, feature-major,
indexed by ``j = f * K + bin``. Inputs outside ``[-bound, bound]`` pass unchanged: their gradient to
``x`` is the incoming one, and they give none to the tables.

The forward pass is :func:`lunet.fast.spline.spline_forward_fast`, which keeps each entry's bin and
position; the backward pass runs as a compiled loop (:mod:`lunet.fast.native`), or over blocks of
rows into the scratch buffers the no-autograd passes keep, adding the per-entry terms into the
per-bin gradients with ``scatter_add_``. A backward pass
that records a graph or is batched differentiates the plain formulas (:mod:`lunet.fast.spline_plain`).
"""

from __future__ import annotations

from typing import Optional

import torch

from lunet.checks import plain_backward_wanted
from lunet.fast import native
from lunet.fast.spline import grouped_passes, run_blocks, spline_forward_fast
from lunet.fast.spline_plain import spline_forward_plain
from lunet.fast.spline_tables import BinTables, gather_into, group_of_rows

__all__ = ["BACKWARD_BLOCK_BYTES", "BACKWARD_BUFFERS", "SplineForward", "PER_BIN_SUMS"]


# Rows per block of the training pass's backward, which holds some twenty per-entry quantities
BACKWARD_BLOCK_BYTES = 1 << 17
BACKWARD_BUFFERS = 20


class SplineForward(torch.autograd.Function):
    """:meth:`MonotoneSpline.forward_rows`: ``y`` (B, n) and ``log|det dy/dx|`` (B,) at ``x`` (B, n)
    for knot tables ``xk``, ``yk``, ``dk`` (n, K + 1), with a written-out backward to ``x`` and the
    tables. With ``counts``, tables (G, n, K + 1) of ``G`` splines, of which spline ``g`` maps the
    next ``counts[g]`` rows (rows sorted by group): one pass and one backward for all of them.

    The forward pass is :func:`spline_forward_fast`, which keeps each entry's bin and position in
    it; the backward pass runs as a compiled loop (:mod:`lunet.fast.native`), or else in blocks of
    rows into scratch buffers, as the no-autograd passes do (fresh per-entry tensors of a whole
    batch cost more than the arithmetic on them). It
    differentiates the forward pass's form, ``y = y0 + h R`` with ``R = t N / D`` and
    ``log y' = log s + log P - 2 log D`` (:func:`spline_forward_fast`), per entry to ``t``, ``q0``
    and ``q1`` (:func:`_backward_block`); each bin's sums of those, of ``g_t t``, ``g_y``, ``g_y R``
    and ``g_L`` (seven ``scatter_add_`` per block) then give the gradients to the bin's ``x0``,
    ``w``, ``y0``, ``h``, ``d0`` and ``d1`` by the chain rule through ``t = (x - x0) / w``,
    ``s = h / w`` and ``q = d / s``, whose factors are the same for every entry of a bin. A backward
    pass that records a graph (Hessians, double backward) or is batched recomputes the plain
    formulas and differentiates them.
    """

    @staticmethod
    def forward(ctx, x, xk, yk, dk, bound: float, counts: Optional[list[int]] = None):
        rows = x.contiguous()
        j = torch.empty(rows.shape, dtype=torch.int64, device=rows.device)
        t = torch.empty_like(rows)
        if counts is None:
            tables = BinTables.of(xk, yk, dk, bound)
            y, logdet = spline_forward_fast(rows, tables, knots=xk, keep=(j, t))
        else:
            # tables (G, n, K + 1), one spline per group of rows: one stack of tables, and each
            # group's bins found among its own knots as flat indices into the stack
            tables = BinTables.stacked(xk, yk, dk, bound)
            y, logdet = grouped_passes(rows, tables, counts, list(range(len(counts))), keep=(j, t))
        ctx.bound, ctx.tables, ctx.counts = bound, tables, counts
        ctx.save_for_backward(x, xk, yk, dk, j, t)
        return y, logdet

    @staticmethod
    def backward(ctx, g_value: torch.Tensor, g_logdet: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, xk, yk, dk, j, t = ctx.saved_tensors
        if plain_backward_wanted(g_value) or plain_backward_wanted(g_logdet):  # either may come batched
            return _plain_backward(ctx, (x, xk, yk, dk), g_value, g_logdet)
        tables: BinTables = ctx.tables
        shape = xk.shape
        n, k = shape[:-1].numel(), tables.bins
        sums = torch.zeros(len(PER_BIN_SUMS), n * k, dtype=x.dtype, device=x.device)
        g_value, g_logdet = g_value.contiguous(), g_logdet.contiguous()
        lib = native.usable(x, g_value, g_logdet, t, tables.q0)
        if lib is not None:
            g_x = torch.empty_like(x)
            run = lib.lunet_spline_backward_f32 if x.dtype == torch.float32 else lib.lunet_spline_backward_f64
            # each part of the rows adds into its own sums (its first part into sums itself)
            part_sums: dict[int, torch.Tensor] = {}

            def backward_rows(a: int, b: int) -> None:
                own = sums if a == 0 else part_sums.setdefault(a, torch.zeros_like(sums))
                run(b - a, x.shape[1], n * k, tables.limit,
                    *map(native.address, (tables.q0, tables.q1, tables.w, tables.h, x[a:b], g_value[a:b],
                                          g_logdet[a:b], j[a:b], t[a:b], own, g_x[a:b])))

            native.split_rows(x.shape[0], x.shape[1], backward_rows)
            for other in part_sums.values():
                sums.add_(other)
        else:
            def kernel(x, g_x, _, work, g_value, g_logdet, j, t):
                _backward_block(x, g_value, g_logdet, j, t, tables, sums, g_x, work[0])

            g_x, _ = run_blocks(x, kernel, False, (g_value, g_logdet, j, t), BACKWARD_BLOCK_BYTES, BACKWARD_BUFFERS)
        g_xk, g_yk, g_dk = (g.view(shape) for g in _knot_grads(sums.view(-1, n, k), tables, n, k))
        return g_x if ctx.needs_input_grad[0] else None, g_xk, g_yk, g_dk, None, None


# What the backward pass sums per bin, in this order (rows of its (7, n * K) sums)
PER_BIN_SUMS = ("g_t", "g_t t", "g_y", "g_y R", "g_q0", "g_q1", "g_L")


def _backward_block(x: torch.Tensor, g_value: torch.Tensor, g_logdet: torch.Tensor, j: torch.Tensor,
                    t: torch.Tensor, tables: BinTables, sums: torch.Tensor, g_x: torch.Tensor,
                    buffers: list) -> None:
    """One block's share of :meth:`SplineForward.backward`: rows ``x``, ``g_value``, their bins ``j``
    and positions ``t`` (r, n), ``g_logdet`` (r,); adds into ``sums`` (7, n * K) each bin's sums of
    :data:`PER_BIN_SUMS` and writes ``g_x`` (r, n); ``buffers``: twenty (r, n) scratch tensors.

    With ``E = g_y h / D``, ``B = g_L / P`` and ``F = E R + 2 g_L / D``:
    ``g_q0 = B u^2 + t u (E - F)``, ``g_q1 = B t^2 - F t u`` and
    ``g_t = E (N + t (1 - q0)) + 2 B (q1 t + u - t - q0 u) - F g (u - t)``, ``g = q0 + q1 - 2``.
    """
    b = buffers
    q0, q1, w, h = (gather_into(tables.q0, j, b[0]), gather_into(tables.q1, j, b[1]), gather_into(tables.w, j, b[2]),
                    gather_into(tables.h, j, b[3]))
    u = torch.neg(t, out=b[4]).add_(1)
    tu = torch.mul(t, u, out=b[5])
    g = torch.add(q0, q1, out=b[6]).sub_(2)
    den = torch.mul(g, tu, out=b[7]).add_(1)
    num = torch.addcmul(t, q0, u, out=b[8])
    p = torch.addcmul(u, q1, t, out=b[9]).mul_(t).addcmul_(u, num)
    r = torch.mul(t, num, out=b[10]).div_(den)
    # outside the interval the map is the identity: no gradient to the tables, 1 to x
    inside = torch.clamp(x, -tables.limit, tables.limit, out=b[11])
    inside = torch.sub(x, inside, out=b[11]).sign_().abs_().neg_().add_(1)
    gy = torch.mul(g_value, inside, out=b[12])
    gl = torch.mul(inside, g_logdet.unsqueeze(1), out=b[13])
    e = torch.mul(gy, h, out=b[3]).div_(den)  # h is not needed again
    bp = torch.div(gl, p, out=b[14])
    f = torch.mul(e, r, out=b[15]).addcdiv_(gl, den, value=2)
    g_q0 = torch.sub(e, f, out=b[16]).mul_(tu).addcmul_(bp, torch.mul(u, u, out=b[17]))
    g_q1 = torch.mul(t, t, out=b[17]).mul_(bp).addcmul_(f, tu, value=-1)
    g_t = torch.add(num, t, out=b[18]).addcmul_(q0, t, value=-1).mul_(e)
    g_t.addcmul_(torch.addcmul(u, q1, t, out=b[19]).sub_(t).addcmul_(q0, u, value=-1), bp, value=2)
    g_t.addcmul_(torch.sub(u, t, out=b[19]).mul_(g), f, value=-1)
    flat = j.view(-1)
    parts = (g_t, torch.mul(g_t, t, out=b[5]), gy, r.mul_(gy), g_q0, g_q1, gl)
    for row, part in enumerate(parts):
        sums[row].scatter_add_(0, flat, part.view(-1))
    torch.addcmul(g_t.div_(w), inside.neg_().add_(1), g_value, out=g_x)


def _knot_grads(sums: torch.Tensor, tables: BinTables, n: int, k: int) -> tuple[torch.Tensor, ...]:
    """The gradients to the knot tables ``xk``, ``yk``, ``dk`` (n, K + 1) from the backward pass's
    per-bin sums (7, n, K) of :data:`PER_BIN_SUMS`."""
    s_t, s_tt, s_y, s_yr, s_q0, s_q1, s_l = sums.unbind(0)
    w, s = tables.w.view(n, k), tables.s.view(n, k)
    q0, q1 = tables.q0.view(n, k), tables.q1.view(n, k)
    g_s = (s_l - s_q0 * q0 - s_q1 * q1) / s
    g_h = s_yr + g_s / w
    g_w = -(s_tt + g_s * s) / w
    g_x0 = -s_t / w
    return _knot_grad(g_x0 - g_w, g_w), _knot_grad(s_y - g_h, g_h), _knot_grad(s_q0 / s, s_q1 / s)


def _knot_grad(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The gradient to a knot table (n, K + 1) from those to each bin's left and right knots (n, K)."""
    out = torch.nn.functional.pad(left, (0, 1))
    out[:, 1:] += right
    return out


def _plain_backward(ctx, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], g_value: torch.Tensor,
                    g_logdet: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
    """The gradients of :func:`spline_forward_plain` at the saved ``inputs``, as differentiable ops."""
    create_graph = torch.is_grad_enabled()
    wanted = [i for i, need in enumerate(ctx.needs_input_grad[:4]) if need]
    with torch.enable_grad():
        leaves = [t if t.requires_grad else t.detach().requires_grad_(True) for t in inputs]
        x, xk, yk, dk = leaves
        if ctx.counts is not None:  # each row its group's tables
            group = group_of_rows(ctx.counts, x.device)
            xk, yk, dk = xk[group], yk[group], dk[group]
        y, logdet = spline_forward_plain(x, xk, yk, dk, ctx.bound)
        grads = torch.autograd.grad((y, logdet), [leaves[i] for i in wanted], (g_value, g_logdet),
                                    create_graph=create_graph, allow_unused=True)
    out: list[Optional[torch.Tensor]] = [None] * 6
    for i, g in zip(wanted, grads):
        out[i] = g
    return tuple(out)
