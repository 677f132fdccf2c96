"""The leaky softplus as functions of tensors of any shape: value, derivative, log-derivative
and the exact inverse.

``f(x) = alpha x + (1 - alpha) softplus(x)`` with slope ``ALPHA_MIN <= alpha < 1``,
strictly increasing and convex, ``f'(x) = alpha + (1 - alpha) sigmoid(x)`` in
``(alpha, 1)``. Every function is elementwise; the public ones take ``alpha`` by that
name, the kernels below them call it ``a``, the paper's symbol. The inverse reads a start from a table of cubic
pieces and takes a number of Newton steps fixed in advance (see
:func:`inverse_table`), exact to float precision over the accepted slopes.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, overload

import torch
from torch import nn

from lunet.checks import plain_ops_wanted
from lunet.limits import ALPHA_MIN

__all__ = ["TABLE_KINK", "softplus", "table_step", "inverse_table", "leaky_softplus", "leaky_softplus_derivative",
           "leaky_softplus_log_derivative", "leaky_softplus_inverse", "ImplicitInverse", "solve_plain",
           "newton_step", "cached_inverse_table", "solve", "solve_scaled", "initial_guess"]

# The leaky-softplus inverse table covers x in [-TABLE_X, TABLE_X], i.e.
# y in [-a TABLE_X, TABLE_X], with one cubic per cell; beyond, the asymptotes
# x = y/a and x = y are within (1 - a) e^-TABLE_X / a of the root.
TABLE_X, TABLE_SIZE = 22.0, 4096
# The inverse bends from x = y/a to x = log y across a stretch of y about a
# wide around y = 0, which cubics on cells much wider than a cannot follow
# (on the plain spacing, 2^-8, they miss by 0.7 in x at a = 1e-4 and by 40 at
# a = 1e-5): so the node spacing is also at most TABLE_KINK a, which leaves the
# table of every slope from 2^-10 (about 1e-3) up as it was.
TABLE_KINK = 4.0
# The slopes whose inverse is exact, in every float dtype: ALPHA_MIN <= a < 1
# (lunet.limits). Below ALPHA_MIN the table, whose cells shrink with a there, would outgrow
# 90,000 cells (2^-12 apart at 1e-4; 5.8 million at 1e-6); every a < 1 works
# at the top (1 - a is exact in float64).

# A dtype four times as wide as each float dtype, to read a table row of four
# coefficients as one element; float64 (no such dtype) gathers whole rows instead.
_ROW_DTYPES = {
    torch.float32: torch.complex128,
    torch.float16: torch.float64,
    torch.bfloat16: torch.float64,
}


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^x)`` elementwise, exact to the last bit of the dtype (no overflow for large ``x``)."""
    # log1p(exp(x)) is exact below the threshold; above it x itself is, to the
    # last bit of the dtype (exp(-t) < eps * t).
    threshold = 20.0 if x.dtype in (torch.float32, torch.float16, torch.bfloat16) else 40.0
    return nn.functional.softplus(x, threshold=threshold)


def _exact_roots(ys: torch.Tensor, a: float) -> torch.Tensor:
    """``f^{-1}(ys)`` in float64 by Newton's method from ``min(y, y/a)``, right of the root
    (``f >= max(x, a x)``), where Newton on a convex increasing ``f`` decreases
    monotonically, until every step is within the rounding of ``x``. Far from the root
    a step covers about 1 in ``x`` (``f`` is exponential there): near ``y = 0`` that is
    ``log(1/a)`` steps and more, so the count is not fixed in advance."""
    xs = torch.minimum(ys, ys / a)
    tol = 16 * torch.finfo(torch.float64).eps
    for _ in range(1000):
        step = newton_step(xs, ys, a)
        xs = xs - step
        if bool((step.abs() <= tol * xs.abs().clamp(min=1.0)).all()):
            return xs
    raise RuntimeError(f"leaky-softplus roots for slope {a!r} did not converge in 1000 Newton steps")


def table_step(a: float) -> float:
    """The node spacing ``h`` of the inverse table for slope ``a``: a power of two near
    ``(1 + a) TABLE_X / TABLE_SIZE`` and at most ``TABLE_KINK a``, so that ``y / h`` is
    exact in any float dtype.

    Every inverse passes here first, so this also refuses a slope outside
    ``[ALPHA_MIN, 1)``, whose inverse would not be exact: a learnable slope that
    has drifted out. The floor gives way by a relative 2^-16 for a learnable
    slope set to ``ALPHA_MIN`` itself, which float32's sigmoid rounds a few ulps
    below it (the table is the same there)."""
    if not ALPHA_MIN * (1 - 2.0**-16) <= a < 1.0:
        raise ValueError(
            f"alpha must lie in [{ALPHA_MIN:g}, 1), the slopes for which LeakySoftplus's "
            f"inverse is exact, got {a!r}"
        )
    return 2.0 ** math.floor(math.log2(min((1 + a) * TABLE_X / TABLE_SIZE, TABLE_KINK * a)))


def inverse_table(a: float, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, float, int, int]:
    """Cubic pieces of ``f^{-1}`` for :func:`initial_guess`: ``(rows, h, first, steps)``.

    The nodes are ``y_j = j h`` with ``h = table_step(a)``, covering
    ``[-a TABLE_X, TABLE_X]``; with the grid anchored at 0 and ``h`` a power
    of two, ``y / h`` and the offset into a
    cell are exact in any float dtype, so the cell's position costs no
    precision. Row ``i`` (shape (cells, 4)) holds ``(c0, c1, c2, c3)`` of
    ``x = c0 + t (c1 + t (c2 + t c3))`` for ``t in [0, 1)`` across the cell
    starting at node ``first + i``: the Hermite cubic through the roots and
    slopes ``dx/dy = 1 / f'(x)``, plus a linear cell at each end on the
    asymptotes ``x = y/a`` and ``x = y``, which extrapolate beyond.

    ``steps`` (Newton steps to ``dtype`` precision) comes from the worst start
    error: the cubics' (measured mid-cell, where a Hermite cubic errs most) or
    the asymptotes', whichever is larger. The asymptotes err most where they
    meet the cubics, at the end nodes: ``x = y/a`` by ``(1 - a) softplus(x) / a``,
    ``x = y`` by ``(1 - a) softplus(-x)``.

    Newton's error is ``e' = f''(z) e^2 / (2 f'(x))`` for the iterate ``x`` and
    some ``z`` between it and the root. ``f''/f' = s (1 - s) / (c + s)`` (``s =
    sigmoid``, ``c = a / (1 - a)``) peaks at ``s = sqrt(a) / (1 + sqrt(a))``, at
    ``2K`` with ``K = (1 - sqrt(a)) / (2 (1 + sqrt(a)))`` (below 1/2), so ``log f'``
    moves by at most ``2K |e|`` from ``x`` to ``z``. Every step lands right of the
    root (``f`` is convex), where ``f'(x) >= f'(z)``: after the first,
    ``e' <= K e^2``. The start may lie left: ``e' <= K e^{2K|e|} e^2``, and
    never above ``(1 - a) / (8 a) e^2`` (``f'' <= (1 - a) / 4``, ``f' >= a``).
    """
    h = table_step(a)
    lo, hi = math.floor(-a * TABLE_X / h), math.ceil(TABLE_X / h)
    ys = torch.arange(lo, hi + 1, dtype=torch.float64) * h
    xs = _exact_roots(ys, a)
    ms = h / leaky_softplus_derivative(xs, a)  # dx/dt across one cell
    p0, p1, m0, m1 = xs[:-1], xs[1:], ms[:-1], ms[1:]
    cubic = torch.stack([p0, m0, 3 * (p1 - p0) - 2 * m0 - m1, 2 * (p0 - p1) + m0 + m1], dim=1)
    left = torch.tensor([[(lo - 1) * h / a, h / a, 0.0, 0.0]], dtype=torch.float64)
    right = torch.tensor([[hi * h, h, 0.0, 0.0]], dtype=torch.float64)
    rows = torch.cat([left, cubic, right])
    mid = _exact_roots(ys[:-1] + h / 2, a)
    fit_error = float((_horner(cubic, torch.full_like(mid, 0.5)) - mid).abs().max())
    x_lo, x_hi = float(xs[0]), float(xs[-1])  # x_lo < -TABLE_X < TABLE_X <= x_hi + 1
    asymptote_error = (1 - a) * max(math.log1p(math.exp(x_lo)) / a, math.log1p(math.exp(-x_hi)))
    error = 2.0 * max(fit_error, asymptote_error)  # a margin for rounding in dtype
    k = (1 - math.sqrt(a)) / (2 * (1 + math.sqrt(a)))
    tol = torch.finfo(dtype).eps / 4
    steps = 0
    while error > tol:
        constant = k if steps else min(k * math.exp(2 * k * error), (1 - a) / (8 * a))
        if constant * error >= 0.5 or steps == 16:  # no certain convergence: never in [ALPHA_MIN, 1)
            raise RuntimeError(f"no Newton step count certified for the inverse table of slope {a!r}")
        steps, error = steps + 1, constant * error**2
    return rows.to(dtype=dtype, device=device).contiguous(), h, lo - 1, steps


@overload
def _scratch(work: dict, name: str, like: torch.Tensor, dtype: Optional[torch.dtype] = ...) -> torch.Tensor: ...
@overload
def _scratch(
    work: Optional[dict], name: str, like: torch.Tensor, dtype: Optional[torch.dtype] = ...
) -> Optional[torch.Tensor]: ...
def _scratch(
    work: Optional[dict], name: str, like: torch.Tensor, dtype: Optional[torch.dtype] = None
) -> Optional[torch.Tensor]:
    """The buffer ``work[name]`` of ``like``'s shape and device (and ``dtype``, else ``like``'s),
    made on first use; None without ``work``, for an operation's ``out`` to allocate."""
    if work is None:
        return None
    buffer = work.get(name)
    if buffer is None:
        buffer = work[name] = torch.empty(like.shape, dtype=dtype or like.dtype, device=like.device)
    return buffer


def _horner(rows: torch.Tensor, t: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``c0 + t (c1 + t (c2 + t c3))`` for rows ``(..., 4)`` of coefficients and ``t`` of shape
    ``(...)``, into ``out`` (like ``t``) if given; without autograd when ``out`` is given."""
    c0, c1, c2, c3 = rows.unbind(-1)
    if out is None:
        return torch.addcmul(c0, t, torch.addcmul(c1, t, torch.addcmul(c2, t, c3)))
    torch.addcmul(c2, t, c3, out=out)
    torch.addcmul(c1, t, out, out=out)
    return torch.addcmul(c0, t, out, out=out)


def leaky_softplus(x: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """``f(x) = alpha x + (1 - alpha) softplus(x)``."""
    if isinstance(alpha, float):
        # in place on softplus's output, which its backward does not need
        return softplus(x).add_(x, alpha=alpha / (1 - alpha)).mul_(1 - alpha)
    return alpha * x + (1 - alpha) * softplus(x)


def leaky_softplus_derivative(x: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """``f'(x) = alpha + (1 - alpha) sigmoid(x)``; in place on the sigmoid when no graph is recorded
    (sigmoid's backward needs its output)."""
    s = torch.sigmoid(x)
    s = s.mul(1 - alpha) if torch.is_grad_enabled() else s.mul_(1 - alpha)
    return s.add_(alpha)


def leaky_softplus_log_derivative(x: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """``log f'(x) = log(alpha + (1 - alpha) sigmoid(x))`` elementwise; ``f'`` lies in ``(alpha, 1)``, so the
    log has no cancellation."""
    return torch.log(leaky_softplus_derivative(x, alpha))


def leaky_softplus_inverse(y: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """``f^{-1}(y)`` elementwise, any shape, exact to float precision, for a slope ``alpha`` in
    ``[ALPHA_MIN, 1)`` (a float, or a one-element tensor, e.g. a learnable slope).

    Derivatives of every order (to ``y`` and a tensor ``alpha``) follow the implicit-function
    theorem: ``dx/dy = 1 / f'(x)``, ``dx/dalpha = -(df/dalpha) / f'(x)``, written as differentiable
    functions of the root ``x`` (see :class:`ImplicitInverse`); they serve backward and
    forward mode and ``torch.func``'s transforms. The root itself is found without autograd.
    """
    if torch.compiler.is_compiling():
        return _first_order_inverse(y, alpha, _solve_op)
    if torch._C._is_tracing():  # torch.jit.trace records ops, not autograd Functions
        return _first_order_inverse(y, alpha, solve_plain)
    a_value = _alpha_value(alpha)
    learned = alpha if isinstance(alpha, torch.Tensor) else None
    wants_graph = torch.is_grad_enabled() and (y.requires_grad or (learned is not None and learned.requires_grad))
    if wants_graph or plain_ops_wanted():
        return ImplicitInverse.apply(y, learned, a_value)
    with torch.no_grad():  # reading y records nothing
        return solve(y, a_value)


def _alpha_value(a: float | torch.Tensor) -> float:
    """The slope as a Python float: the exact inverse's table and step count depend on its value."""
    if not isinstance(a, torch.Tensor):
        return float(a)
    try:
        return float(a.detach())
    except RuntimeError as err:  # a slope batched by vmap has no one value
        raise ValueError(
            "the exact leaky-softplus inverse reads its slope's value: it cannot run under vmap over "
            "a batch of learned slopes (stacked module states); vmap over the inputs instead"
        ) from err


def _first_order_inverse(y: torch.Tensor, a: float | torch.Tensor, solver) -> torch.Tensor:
    """:func:`leaky_softplus_inverse` inside ``torch.compile`` (``solver``: one opaque operator) or
    ``torch.jit.trace`` (plain ops): the root by ``solver``, then one more Newton step,
    differentiable, from the detached root: its value does not move, and its gradient is the
    implicit-function gradient. First derivatives only, which is what compiled graphs take."""
    a_value = float(a.detach()) if isinstance(a, torch.Tensor) else float(a)
    with torch.no_grad():
        x = solver(y.detach(), a_value)
    needs_graph = y.requires_grad or (isinstance(a, torch.Tensor) and a.requires_grad)
    if torch.is_grad_enabled() and needs_graph:
        x = x - (leaky_softplus(x, a) - y) / leaky_softplus_derivative(x, a)
    return x


class ImplicitInverse(torch.autograd.Function):
    """``x = f^{-1}(y)`` for a slope of value ``a_value`` (``a``: the slope tensor it came from, or
    None for a fixed slope), with derivatives by the implicit-function theorem.

    The backward and forward-mode rules are plain ops of the saved root ``x``: differentiating them
    again runs through ``x`` back to ``y`` and ``a``, so Hessians and higher derivatives are exact
    too. ``vmap`` runs the rules as they are (``generate_vmap_rule``); the root then comes from
    :func:`solve_plain`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(y: torch.Tensor, a: Optional[torch.Tensor], a_value: float) -> torch.Tensor:
        return solve_plain(y, a_value) if plain_ops_wanted() else solve(y, a_value)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.a_value = inputs[2]
        ctx.save_for_backward(output, inputs[1])
        ctx.save_for_forward(output, inputs[1])

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, a = ctx.saved_tensors
        slope = ctx.a_value if a is None else a
        derivative = slope + (1 - slope) * torch.sigmoid(x)
        g_y = g / derivative if ctx.needs_input_grad[0] else None
        g_a = None
        if a is not None and ctx.needs_input_grad[1]:
            g_a = (-(g * (x - softplus(x)) / derivative)).sum().reshape(a.shape).to(a.dtype)
        return g_y, g_a, None

    @staticmethod
    def jvp(ctx, y_tangent: Optional[torch.Tensor], a_tangent: Optional[torch.Tensor], _) -> torch.Tensor:
        x, a = ctx.saved_tensors
        slope = ctx.a_value if a is None else a
        derivative = slope + (1 - slope) * torch.sigmoid(x)
        tangent = torch.zeros_like(x) if y_tangent is None else y_tangent / derivative
        if a_tangent is not None:
            tangent = tangent - a_tangent * (x - softplus(x)) / derivative
        return tangent


def solve_plain(y: torch.Tensor, a: float) -> torch.Tensor:
    """:func:`solve` by out-of-place ops alone, any shape: no ``out=`` writes and no reinterpreted
    dtypes, which ``torch.func``'s transforms and ``torch.jit.trace`` cannot take. The same table
    start and Newton steps, so the same roots."""
    rows, h, first, steps = cached_inverse_table(a, y.dtype, y.device)
    t = y * (1 / h)  # exact: h is a power of two
    start = t.clamp(first, first + rows.shape[0] - 1).floor()
    # a NaN start converts to some integer: kept in range, it reads a row and the root stays NaN
    index = (start - first).long().clamp(0, rows.shape[0] - 1)
    x = _horner(rows[index], t - start)
    for _ in range(steps):
        x = x - (leaky_softplus(x, a) - y) / leaky_softplus_derivative(x, a)
    return x


def newton_step(x: torch.Tensor, y: torch.Tensor, a: float) -> torch.Tensor:
    """``(f(x) - y) / f'(x)``; in place on temporaries, so for use without autograd."""
    return leaky_softplus(x, a).sub_(y).div_(leaky_softplus_derivative(x, a))


@functools.lru_cache(maxsize=32)
def cached_inverse_table(a: float, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, float, int, int]:
    """:func:`inverse_table`, built once per slope, dtype and device (the key is the slope's value,
    so a changed slope gets its own table)."""
    return inverse_table(a, dtype, device)


def solve(y: torch.Tensor, a: float) -> torch.Tensor:
    """Root of ``f(x) = y`` elementwise, to float precision, without autograd.

    Newton's error obeys ``e' <= C e^2`` with ``C < 1/2`` right of the root (see
    :func:`inverse_table`); from the table's start, whose worst error is measured
    when the table is built, that fixes in advance how many steps reach the dtype's
    precision (for a = 0.1: none in float32, one in float64; at most 3 in float32
    and 4 in float64 over the accepted slopes), so no step is spent on checking
    convergence. A slope outside ``[ALPHA_MIN, 1)`` raises a ValueError.
    """
    if y.dim() == 0:  # the table lookup reads rows as wider elements, which needs a dimension
        return solve(y.reshape(1), a).reshape(())
    return solve_scaled(y * (1 / table_step(a)), a, y=y)  # exact: h is a power of two


@torch.library.custom_op("lunet::leaky_softplus_solve", mutates_args=())
def _solve_op(y: torch.Tensor, a: float) -> torch.Tensor:
    """:func:`solve` as one opaque operator for ``torch.compile``: the table is built (once, on
    the host) and read by the eager code, so the compiled graph has no break."""
    return solve(y, a)


@_solve_op.register_fake
def _(y: torch.Tensor, a: float) -> torch.Tensor:
    return torch.empty_like(y)


def solve_scaled(
    t: torch.Tensor, a: float, work: Optional[dict] = None, y: Optional[torch.Tensor] = None,
    table: Optional[tuple] = None,
) -> torch.Tensor:
    """:func:`solve` of ``y = t h`` (``h = table_step(a)``), given ``t`` (any shape), which
    is overwritten: :class:`LUNet` folds the ``1 / h`` into the matrix before.
    ``work``: scratch buffers, as for :func:`initial_guess`; ``y``: ``t h``, if the
    caller holds it (the Newton steps need it); ``table``: :func:`cached_inverse_table`'s
    result for ``a`` and ``t``'s dtype and device, if the caller holds it (looked up otherwise)."""
    rows, h, first, steps = table if table is not None else cached_inverse_table(a, t.dtype, t.device)
    if steps and y is None:
        y = t * h
    x = initial_guess(t, rows, first, work)
    if steps:
        assert y is not None  # made above where the caller did not hold it
        for _ in range(steps):
            x = x.sub_(newton_step(x, y, a))
    return x


def initial_guess(t: torch.Tensor, rows: torch.Tensor, first: int, work: Optional[dict] = None) -> torch.Tensor:
    """``f^{-1}(t h)`` from the cubic pieces ``rows`` of :func:`inverse_table`, given ``t = y / h``
    (B, n), which is overwritten; cell ``i`` starts at ``t = first + i``, and the two
    end cells are linear and extend beyond.

    ``work`` (a dict, filled on first use), if given, holds the scratch buffers for
    calls on batches of one shape, so that a pass through several activations
    allocates them once (faster on large batches). The result then lies in one
    of them, overwritten by the next call.
    """
    start = torch.clamp(t, first, first + rows.shape[0] - 1, out=_scratch(work, "start", t))
    start.floor_()  # the cell's first node
    frac = t.sub_(start)  # exact: t minus a nearby integer
    start.sub_(first)
    index = start.long() if work is None else _scratch(work, "index", t, torch.int64).copy_(start)
    # A NaN (from values that overflowed the dtype upstream) converts to an index far out of
    # range. Kept in range, it reads some row and the result stays NaN. On a GPU an
    # out-of-range gather would abort the device, so the index is always clamped there; on
    # the CPU the gather raises instead, and only then is it clamped (no pass otherwise).
    if index.device.type != "cpu":
        index.clamp_(0, rows.shape[0] - 1)
    try:
        coefficients = _gather(rows, index, t, work)
    except IndexError:
        coefficients = _gather(rows, index.clamp_(0, rows.shape[0] - 1), t, work)
    return _horner(coefficients, frac, out=start)


def _gather(rows: torch.Tensor, index: torch.Tensor, t: torch.Tensor, work: Optional[dict]) -> torch.Tensor:
    """The table rows ``rows[index]`` as coefficients of shape ``(*t.shape, 4)``."""
    wide = _ROW_DTYPES.get(rows.dtype)
    if wide is None:
        return rows.index_select(0, index.reshape(-1)).view(*t.shape, 4)
    # one gather of four-wide elements: much faster than four gathers
    gathered = torch.take(rows.view(wide), index, out=_scratch(work, "rows", t, wide))
    return gathered.view(t.dtype).view(*t.shape, 4)
