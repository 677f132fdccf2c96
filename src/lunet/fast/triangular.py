"""Blocked triangular products: the training path of an LU layer, forward and backward."""

from __future__ import annotations

from typing import Optional

import torch

from lunet.checks import plain_backward_wanted

__all__ = ["BLOCK_LEAF", "block_depth", "TriangularAffine", "triangular_affine_backward"]

# The training path halves each triangle recursively while the halves are whole
# and at least this wide, and skips every block that is zero: at width 784
# (three levels, leaves of 98) that is 9/16 of the dense flops of each product.
# The blocks of one level are equal and evenly spaced, so each level is one
# batched product over strided views of the operands, and one mask product
# serves all the diagonal leaves: a few large calls instead of many small ones.
BLOCK_LEAF = 64


def block_depth(n: int, leaf: int = BLOCK_LEAF) -> int:
    """How many times the (n, n) triangles are halved while the halves are whole and at
    least ``leaf`` wide (0: a single masked block)."""
    depth = 0
    while n % (2 << depth) == 0 and n // (2 << depth) >= leaf:
        depth += 1
    return depth


def _batch_view(
    t: torch.Tensor, count: int, rows: int, cols: int, start: tuple[int, int], step: tuple[int, int]
) -> torch.Tensor:
    """``count`` blocks of ``t`` (2-D), each (rows, cols), the first at ``start``
    (row, column) and each next one ``step`` further: one (count, rows, cols) view."""
    rs, cs = t.stride()
    offset = t.storage_offset() + start[0] * rs + start[1] * cs
    return t.as_strided((count, rows, cols), (step[0] * rs + step[1] * cs, rs, cs), offset)


def _levels(n: int, depth: int, lower: bool):
    """The off-diagonal blocks of a lower (or upper) (n, n) triangle halved ``depth``
    times, level by level: ``(count, size, row, col)``, the first block at
    ``(row, col)`` and each next one ``2 size`` further along the diagonal."""
    for level in range(depth):
        size = n >> (level + 1)
        yield (1 << level, size, size, 0) if lower else (1 << level, size, 0, size)


def _diagonal_leaves(m: torch.Tensor, depth: int) -> torch.Tensor:
    """The 2^depth diagonal blocks of ``m`` (n, n), the leaves of the halving: one
    (2^depth, n / 2^depth, n / 2^depth) view."""
    leaf = m.shape[0] >> depth
    return _batch_view(m, 1 << depth, leaf, leaf, (0, 0), (leaf, leaf))


def _triangular_matmul(out, a, m, leaves, lower: bool, beta: float, depth: int) -> None:
    """``out = beta * out + a @ T`` in place for the lower (or upper) triangular ``T``
    that is ``m`` (n, n) off its diagonal blocks and ``leaves`` (the masked diagonal
    blocks, as from :func:`_diagonal_leaves`) on them; the blocks of ``T`` that are
    zero are skipped. ``a``, ``out``: (B, n)."""
    n, b = m.shape[0], a.shape[0]
    leaf = n >> depth
    # first, so that beta scales each column block once
    _batch_view(out, 1 << depth, b, leaf, (0, 0), (0, leaf)).baddbmm_(
        _batch_view(a, 1 << depth, b, leaf, (0, 0), (0, leaf)), leaves, beta=beta
    )
    for count, size, row, col in _levels(n, depth, lower):
        _batch_view(out, count, b, size, (0, col), (0, 2 * size)).baddbmm_(
            _batch_view(a, count, b, size, (0, row), (0, 2 * size)),
            _batch_view(m, count, size, size, (row, col), (2 * size, 2 * size)),
        )


def _triangular_outer(out, p, q, mask, lower: bool, accumulate: bool, depth: int) -> None:
    """The lower (or upper) triangle of ``p^T @ q``, masked, written into ``out`` (n, n);
    the other triangle's off-diagonal blocks are left untouched, and with
    ``accumulate`` the masked diagonal leaves are added to what ``out`` holds."""
    n, b = out.shape[0], p.shape[0]
    leaf, leaves = n >> depth, 1 << depth
    product = torch.bmm(
        _batch_view(p, leaves, b, leaf, (0, 0), (0, leaf)).transpose(1, 2),
        _batch_view(q, leaves, b, leaf, (0, 0), (0, leaf)),
    )
    diagonal = _diagonal_leaves(out, depth)
    if accumulate:
        diagonal.addcmul_(product, mask[:leaf, :leaf])
    else:
        torch.mul(product, mask[:leaf, :leaf], out=diagonal)
    for count, size, row, col in _levels(n, depth, lower):
        _batch_view(out, count, size, size, (row, col), (2 * size, 2 * size)).baddbmm_(
            _batch_view(p, count, b, size, (0, row), (0, 2 * size)).transpose(1, 2),
            _batch_view(q, count, b, size, (0, col), (0, 2 * size)),
            beta=0,
        )


class TriangularAffine(torch.autograd.Function):
    """``y = x A^T + b`` with ``A = L U`` taken from the packed ``lu``, (B, n) -> (B, n).

    Two products with the triangles cost 4Bn^2 flops against 2n^3 + 2Bn^2 for
    forming ``L U`` first: cheaper for every batch B < n. With
    ``h = x U^T = x Us^T + x * d`` (``Us``, ``Ls`` the strict triangles):
    ``y = h + h Ls^T + b``.

    Every product, forward and backward, is a blocked triangular one (halved
    while the blocks stay at least ``leaf`` wide) that reads ``lu`` in place: no masked copy of a triangle
    is made beyond its diagonal blocks, cut once in the forward pass and saved
    for the backward (both triangles' together: 2 / 2^depth of a matrix, a
    quarter at width 784), and the gradient of ``lu`` is assembled in place
    from its two triangles.

    A backward pass that records a graph (``create_graph=True``: Hessians, double
    backward) or that runs under ``vmap`` (``is_grads_batched``) takes
    :func:`triangular_affine_backward` instead: the same gradients from the masked
    triangles and the saved inputs by plain ops, differentiable again.
    """

    @staticmethod
    def forward(ctx, x, lu, d, bias, lower_mask, upper_mask, leaf: int = BLOCK_LEAF):
        ctx.depth = depth = block_depth(lu.shape[0], leaf)
        # The masked diagonal blocks of both triangles, cut once from lu itself (a
        # row-major read) and shared with the backward pass, which needs them untransposed.
        leaves, leaf = _diagonal_leaves(lu, depth), lu.shape[0] >> depth
        strict_lower, strict_upper = leaves * lower_mask[:leaf, :leaf], leaves * upper_mask[:leaf, :leaf]
        lu_t = lu.t()
        h = torch.empty_like(x)
        _triangular_matmul(h, x, lu_t, strict_upper.transpose(1, 2), lower=True, beta=0, depth=depth)  # x Us^T
        h.addcmul_(x, d)
        y = h + bias
        _triangular_matmul(y, h, lu_t, strict_lower.transpose(1, 2), lower=False, beta=1, depth=depth)  # + h Ls^T
        ctx.save_for_backward(x, d, h, lu, lower_mask, upper_mask, strict_lower, strict_upper)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, d, h, lu, lower_mask, upper_mask, strict_lower, strict_upper = ctx.saved_tensors
        need_x, need_lu, need_d, need_b = ctx.needs_input_grad[:4]
        if plain_backward_wanted(gy):
            return (*triangular_affine_backward(gy, x, lu, d, lower_mask, upper_mask, ctx.needs_input_grad[:4]),
                    None, None, None)
        depth = ctx.depth
        gh = gy.clone()  # dL/dh = gy (I + Ls)
        _triangular_matmul(gh, gy, lu, strict_lower, lower=True, beta=1, depth=depth)
        g_lu = g_x = None
        if need_lu:
            # strictly lower part from gy^T h, strictly upper part from gh^T x
            g_lu = torch.empty_like(lu)
            _triangular_outer(g_lu, gy, h, lower_mask, lower=True, accumulate=False, depth=depth)
            _triangular_outer(g_lu, gh, x, upper_mask, lower=False, accumulate=True, depth=depth)
        if need_x:
            g_x = torch.mul(gh, d)
            _triangular_matmul(g_x, gh, lu, strict_upper, lower=False, beta=1, depth=depth)  # + gh Us
        g_d = (gh * x).sum(0) if need_d else None
        g_b = gy.sum(0) if need_b else None
        return g_x, g_lu, g_d, g_b, None, None, None


def triangular_affine_backward(
    gy: torch.Tensor, x: torch.Tensor, lu: torch.Tensor, d: torch.Tensor,
    lower_mask: torch.Tensor, upper_mask: torch.Tensor, needs: tuple[bool, ...] = (True,) * 4,
) -> tuple[Optional[torch.Tensor], ...]:
    """The gradients of :class:`TriangularAffine` to ``(x, lu, d, bias)`` for ``gy`` (B, n), by plain
    differentiable ops (``None`` where ``needs`` says no).

    ``h = x U^T`` is recomputed from ``x`` rather than read from the forward pass, so
    that a graph recorded through these gradients reaches every input.
    """
    strict_lower, strict_upper = lu * lower_mask, lu * upper_mask
    gh = gy + gy @ strict_lower  # dL/dh = gy (I + Ls)
    g_x = g_lu = g_d = g_b = None
    if needs[0]:
        g_x = gh @ strict_upper + gh * d  # gh U
    if needs[1]:
        h = x @ strict_upper.t() + x * d
        g_lu = (gy.t() @ h) * lower_mask + (gh.t() @ x) * upper_mask
    if needs[2]:
        g_d = (gh * x).sum(0)
    if needs[3]:
        g_b = gy.sum(0)
    return g_x, g_lu, g_d, g_b
