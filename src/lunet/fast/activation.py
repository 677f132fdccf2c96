"""Fast passes of the leaky softplus: the training passes with written-out backwards (a fixed
slope, and a learned one), and a frozen flow's density passes (scaled, and negated with
one sigmoid)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from lunet.checks import plain_backward_wanted
from lunet.functional import leaky_softplus, softplus

__all__ = ["product_chunk", "sum_log_abs", "sigmoid_floor", "FixedAlphaForward", "LearnedAlphaForward",
           "leaky_softplus_backward", "scaled_forward", "negated_forward"]


def product_chunk(n: int, lo: float, hi: float, dtype: torch.dtype, max_chunk: int = 8) -> int:
    """The largest divisor ``k <= max_chunk`` of ``n`` for which a product of ``k``
    factors in ``(lo, hi)`` stays a normal, finite number of ``dtype`` with a wide margin."""
    finfo = torch.finfo(dtype)
    limit = max_chunk
    if lo < 1:
        limit = min(limit, int(0.8 * math.log(finfo.tiny) / math.log(lo)))
    if hi > 1:
        limit = min(limit, int(0.8 * math.log(finfo.max) / math.log(hi)))
    return max(k for k in range(1, max(limit, 1) + 1) if n % k == 0)


def sum_log_abs(factors: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``sum_i log|factors_i|`` per row, (B, n) -> (B,), for ``|factors|`` in ``(lo, hi)``;
    ``factors`` is overwritten.

    One log per ``k`` entries: the logs of products of ``k`` entries ``n / k``
    columns apart, so that each product multiplies whole contiguous rows
    (vectorised) instead of reducing short runs.
    """
    b, n = factors.shape
    k = product_chunk(n, lo, hi, factors.dtype)
    if k > 1:
        factors = factors.view(b, k, n // k).prod(dim=1)
    return factors.abs_().log_().sum(dim=1)


def sigmoid_floor(dtype: torch.dtype) -> float:
    """The lowest ``u`` for which ``sigmoid(u)`` is a normal number of ``dtype``
    with a margin, so that ``log(sigmoid(u))`` keeps the dtype's precision."""
    return math.log(torch.finfo(dtype).tiny) + 4.0


class FixedAlphaForward(torch.autograd.Function):
    """:meth:`LeakySoftplus.forward` for a fixed slope ``a``: ``f(x)`` (B, n) and
    ``sum_i log f'(x_i)`` (B,), with a written-out backward.

    With ``s = sigmoid(x)`` and ``f' = a + (1 - a) s``, the gradient is
    ``g_f f' + g_logdet (1 - a) s (1 - s) / f'``: one sigmoid serves the log-det
    and the whole backward pass, which then needs no transcendental function
    (autograd's would run softplus's and the log's backward separately). ``s``
    and ``x`` are saved. A backward pass that records a graph (Hessians, double
    backward) or runs under ``vmap`` takes :func:`leaky_softplus_backward` instead,
    which is differentiable again.
    """

    @staticmethod
    def forward(ctx, x, a: float):
        s = torch.sigmoid(x)
        ctx.a = a
        ctx.save_for_backward(s, x)
        logdet = torch.mul(s, 1 - a).add_(a).log_().sum(dim=1)
        return leaky_softplus(x, a), logdet

    @staticmethod
    def backward(ctx, g_value, g_logdet):
        s, x = ctx.saved_tensors
        a = ctx.a
        if plain_backward_wanted(g_value):
            return leaky_softplus_backward(g_value, g_logdet, x, a)[0], None
        slope = torch.mul(s, 1 - a).add_(a)
        g_x = torch.rsub(s, 1.0).mul_(s).div_(slope).mul_(g_logdet.unsqueeze(1) * (1 - a))
        return g_x.addcmul_(g_value, slope), None


class LearnedAlphaForward(torch.autograd.Function):
    """:meth:`LeakySoftplus.forward` for a learned slope ``a`` (a 0-dim tensor, or one slope per
    feature of shape (n,)): ``f(x)`` (B, n) and ``sum_i log f'(x_i)`` (B,), with a written-out
    backward to ``x`` and ``a``.

    With ``s = sigmoid(x)`` and ``f' = a + (1 - a) s``: ``df/da = x - softplus(x)`` and
    ``d log f' / da = (1 - s) / f'``; the backward pass needs no transcendental function,
    where autograd's runs softplus's, the sigmoid's and the log's backward separately.
    A backward pass that records a graph or runs under ``vmap`` takes
    :func:`leaky_softplus_backward` instead, which is differentiable again.
    """

    @staticmethod
    def forward(ctx, x, a):
        s = torch.sigmoid(x)
        soft = softplus(x)
        slope = torch.mul(s, 1 - a).add_(a)
        value = torch.mul(soft, 1 - a).add_(a * x)
        ctx.save_for_backward(s, slope, x - soft, a, x)
        return value, torch.log(slope).sum(dim=1)

    @staticmethod
    def backward(ctx, g_value, g_logdet):
        s, slope, x_minus_soft, a, x = ctx.saved_tensors
        if plain_backward_wanted(g_value):
            return leaky_softplus_backward(g_value, g_logdet, x, a, ctx.needs_input_grad[1])
        g_l = g_logdet.unsqueeze(1)
        one_minus_s = torch.rsub(s, 1.0)
        g_x = (one_minus_s * s * (1 - a) / slope).mul_(g_l).addcmul_(g_value, slope)
        g_a = None
        if ctx.needs_input_grad[1]:
            per_entry = (one_minus_s / slope).mul_(g_l).addcmul_(g_value, x_minus_soft)
            g_a = per_entry.sum(dim=0) if a.dim() == 1 else per_entry.sum()
        return g_x, g_a


def leaky_softplus_backward(
    g_value: torch.Tensor, g_logdet: torch.Tensor, x: torch.Tensor, a: float | torch.Tensor, need_a: bool = False
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The gradients of ``(f(x), sum_i log f'(x_i))`` to ``x`` (B, n) and, with ``need_a``, to a
    slope tensor ``a`` (0-dim, or (n,)), for ``g_value`` (B, n) and ``g_logdet`` (B,), by plain
    differentiable ops recomputed from ``x``, so that a graph recorded through them reaches it."""
    s = torch.sigmoid(x)
    slope = a + (1 - a) * s
    g_l = g_logdet.unsqueeze(1)
    g_x = g_value * slope + g_l * ((1 - a) * s * (1 - s) / slope)
    g_a = None
    if need_a:
        assert isinstance(a, torch.Tensor)  # a slope with a gradient is a tensor
        per_entry = g_value * (x - softplus(x)) + g_l * ((1 - s) / slope)
        g_a = per_entry.sum(dim=0) if a.dim() == 1 else per_entry.sum()
    return g_x, g_a


def scaled_forward(x: torch.Tensor, a: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``g = f / (1 - a)`` (B, n) and ``sum_i log g'(x_i)`` (B,), without autograd.

    ``g = softplus(x) + c x`` and ``g' = sigmoid(x) + c`` with ``c = a / (1 - a)``:
    leaving out the factor ``1 - a`` (which :class:`LUNet` folds into the next
    layer's matrix) saves two passes over the batch.
    """
    c = a / (1 - a)
    value = softplus(x).add_(x, alpha=c)
    return value, sum_log_abs(torch.sigmoid(x).add_(c), c, 1 + c)

def negated_forward(
    u: torch.Tensor, a: float, out: torch.Tensor, scratch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`scaled_forward` of ``x = -u`` with the signs folded in, without autograd.

    Writes ``-g(x) = log sigmoid(u) + c u`` into ``out`` and returns
    ``sum_i log g'(x_i)`` (B,) and a 0-dim bool tensor: whether every entry
    of ``u`` lay where this is exact. ``scratch`` (like ``u``) is overwritten.

    ``softplus(x) = -log sigmoid(u)`` and ``g'(x) = 1 + c - sigmoid(u)``: one
    sigmoid feeds both, where the unnegated form also needs softplus's own
    exp and log1p. ``log sigmoid(u)`` keeps ``g`` exact to a few ulps of
    ``max(|g|, 1)`` until ``sigmoid(u)`` leaves the normal numbers, below
    :func:`sigmoid_floor` (``x`` above about 83 in float32); the caller
    redoes such batches with :func:`scaled_forward`.
    """
    c = a / (1 - a)
    if u.numel() == 0:  # amin has nothing to reduce
        in_range = torch.ones((), dtype=torch.bool, device=u.device)
    else:
        in_range = u.amin() >= sigmoid_floor(u.dtype)
    s = torch.sigmoid(u, out=scratch)
    torch.log(s, out=out).add_(u, alpha=c)
    return sum_log_abs(s.sub_(1 + c), c, 1 + c), in_range
